"""`reconciler validate` with several paths (files and folders, checked together)
and `--format github` (one workflow-command annotation per problem)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.problems import Location, Problem
from reconciler.validate_report import annotation
from tests.integration.test_cli_validate import INVALID, VALID, run


def hook(name: str, **extra: str) -> str:
    lines = [
        f"name: {name}",
        "event: new_rule_violation",
        "method: POST",
        f"url: https://hooks.example.com/{name}",
    ]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A definitions repository: webhooks.d/acme (two hooks) and webhooks.d/globex (one)."""
    for org, name in (("acme", "one"), ("acme", "two"), ("globex", "one")):
        folder = tmp_path / "webhooks.d" / org
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.yaml").write_text(hook(name), encoding="utf-8")
    return tmp_path


# -- several paths ---------------------------------------------------------------------


def test_several_files_are_validated_together(repo: Path) -> None:
    result = run(
        "validate",
        "webhooks.d/acme/one.yaml",
        "webhooks.d/acme/two.yaml",
        "webhooks.d/globex/one.yaml",
        cwd=repo,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Each file's organization is still its folder under webhooks.d.
    assert result.stdout == "valid: 3 definitions in 2 organizations, 0 warnings.\n"


def test_folders_and_files_may_be_mixed_and_a_file_named_twice_counts_once(
    repo: Path,
) -> None:
    result = run(
        "validate", "webhooks.d/acme", "webhooks.d/acme/one.yaml", "./webhooks.d/acme", cwd=repo
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "valid: 2 definitions in 1 organization, 0 warnings.\n"


def test_a_name_used_twice_across_the_files_given_is_an_error(repo: Path) -> None:
    (repo / "webhooks.d" / "acme" / "copy.yaml").write_text(hook("one"), encoding="utf-8")
    result = run("validate", "webhooks.d/acme/one.yaml", "webhooks.d/acme/copy.yaml", cwd=repo)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        # the later of the two, in the order given, is the one reported
        "webhooks.d/acme/copy.yaml:1:7: name: 'one' is already used in organization 'acme' "
        "at webhooks.d/acme/one.yaml:1:7",
        "invalid: 1 error, 0 warnings in 2 files.",
    ]


def test_every_bad_file_among_several_is_reported(repo: Path) -> None:
    bad = repo / "webhooks.d" / "acme" / "bad.yaml"
    bad.write_text(hook("bad", method="FETCH"), encoding="utf-8")
    worse = repo / "webhooks.d" / "globex" / "worse.yaml"
    worse.write_text(hook("worse", colour="red"), encoding="utf-8")
    result = run("validate", "webhooks.d/acme/bad.yaml", "webhooks.d/globex/worse.yaml", cwd=repo)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "webhooks.d/acme/bad.yaml",
        "webhooks.d/globex/worse.yaml",
    ]
    assert lines[-1] == "invalid: 2 errors, 0 warnings in 2 files."


def test_a_missing_path_among_several_is_named(repo: Path) -> None:
    result = run("validate", "webhooks.d/acme/one.yaml", "webhooks.d/acme/gone.yaml", cwd=repo)
    assert result.returncode == 1
    assert result.stderr == "error: webhooks.d/acme/gone.yaml: no such file or folder\n"
    assert result.stdout == ""


def test_no_path_means_webhooks_d(repo: Path) -> None:
    result = run("validate", cwd=repo)
    assert result.returncode == 0
    assert result.stdout == "valid: 3 definitions in 2 organizations, 0 warnings.\n"


# -- --format github -------------------------------------------------------------------


def test_github_format_prints_one_annotation_per_problem_and_nothing_else() -> None:
    case = INVALID / "several-bad-files"
    result = run("validate", ".", "--format", "github", cwd=case)
    assert result.returncode == 1
    expected = []
    for line in (case / "expected.txt").read_text(encoding="utf-8").splitlines():
        path, row, col, message = line.split(":", 3)
        expected.append(f"::error file={path},line={row},col={col}::{message.strip()}")
    assert result.stdout.splitlines() == expected
    assert result.stderr == ""


def test_github_format_marks_warnings_as_warnings(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hook.yaml").write_text(
        textwrap.dedent(
            """\
            name: hook
            event: new_rule_violation
            method: POST
            url: https://10.0.0.1/in
            """
        ),
        encoding="utf-8",
    )
    result = run("validate", ".", "--format", "github", cwd=tmp_path)
    assert result.returncode == 0  # warnings alone do not fail
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("::warning file=acme/hook.yaml,line=") for line in lines)


def test_github_format_prints_nothing_when_all_is_valid() -> None:
    result = run("validate", str(VALID), "--format", "github")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_an_annotation_escapes_what_would_break_the_workflow_command() -> None:
    problem = Problem(Location("odd,dir/a:b.yaml", 3, 9), "100% wrong\nsecond line\r")
    assert annotation(problem) == (
        "::error file=odd%2Cdir/a%3Ab.yaml,line=3,col=9::100%25 wrong%0Asecond line%0D"
    )
    warning = Problem(Location("webhooks.d/acme/x.yaml", 1, 1), "careful: a, b", "warning")
    assert (
        annotation(warning) == "::warning file=webhooks.d/acme/x.yaml,line=1,col=1::careful: a, b"
    )
