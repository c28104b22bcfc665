"""`reconciler validate` and `reconciler schema`, run as a user runs them: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
VALID = TESTS / "examples" / "valid"
INVALID = TESTS / "examples" / "invalid"


def run(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env if env is not None else _environment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream
    return result


def _environment(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_TEST_", "ACME_TEST_"))
    }
    return {**env, **extra}


def _expected(case: str) -> list[str]:
    return (INVALID / case / "expected.txt").read_text(encoding="utf-8").splitlines()


def test_validate_passes_on_the_valid_examples() -> None:
    result = run("validate", str(VALID))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "valid: 6 definitions in 2 organizations, 0 warnings.\n"
    assert result.stderr == ""


def test_validate_defaults_to_webhooks_d_in_the_working_directory() -> None:
    result = run("validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("valid: ")
    assert result.stdout.endswith(", 0 warnings.\n")


@pytest.mark.parametrize("case", ["several-bad-files", "several-errors-one-file", "duplicate-name"])
def test_validate_prints_one_line_per_problem_and_exits_1(case: str) -> None:
    result = run("validate", ".", cwd=INVALID / case)
    assert result.returncode == 1
    *lines, summary = result.stdout.splitlines()
    assert lines == _expected(case)
    files = sum(1 for _ in (INVALID / case).rglob("*.y*ml"))
    errors = f"{len(lines)} error{'' if len(lines) == 1 else 's'}"
    assert summary == f"invalid: {errors}, 0 warnings in {files} file{'' if files == 1 else 's'}."
    assert result.stderr == ""


def test_validate_counts_warnings_apart_from_errors(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hook.yaml").write_text(
        "name: hook\nevent: new_rule_violation\nmethod: GET\n"
        "url: https://10.0.0.1/in\nbody: {text: hi}\n",
        encoding="utf-8",
    )
    result = run("validate", ".", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "invalid: 1 error, 1 warning in 1 file."


def test_validate_json_output_shape() -> None:
    result = run("validate", ".", "--format", "json", cwd=INVALID / "several-bad-files")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) == {"valid", "files", "definitions", "problems"}
    assert report["valid"] is False
    assert report["files"] == 5
    assert report["definitions"] == 1  # acme/ok.yaml
    assert report["problems"][0] == {
        "path": "acme/empty.yaml",
        "line": 1,
        "column": 1,
        "field": None,
        "severity": "error",
        "message": "file is empty: expected a webhook definition",
    }
    shown = [f"{p['path']}:{p['line']}:{p['column']}: {p['message']}" for p in report["problems"]]
    assert shown == _expected("several-bad-files")


def test_validate_json_output_when_valid() -> None:
    result = run("validate", str(VALID), "--format", "json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "valid": True,
        "files": 6,
        "definitions": 6,
        "problems": [],
    }


HOOK = """\
name: hook
event: new_rule_violation
method: POST
url: ${env:ACME_TEST_HOOK_URL}
headers:
  Authorization: Bearer ${env:ACME_TEST_TOKEN}
"""


@pytest.fixture
def env_folder(tmp_path: Path) -> Path:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hook.yaml").write_text(HOOK, encoding="utf-8")
    return tmp_path


def test_check_env_fails_when_a_variable_is_unset(env_folder: Path) -> None:
    env = _environment(ACME_TEST_TOKEN="tok-secret-value")
    result = run("validate", ".", "--check-env", cwd=env_folder, env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "acme/hook.yaml:4:6: url: environment variable ACME_TEST_HOOK_URL is not set",
        "invalid: 1 error, 0 warnings in 1 file.",
    ]
    assert "tok-secret-value" not in result.stdout + result.stderr


def test_check_env_passes_when_every_variable_is_set(env_folder: Path) -> None:
    env = _environment(ACME_TEST_HOOK_URL="https://hooks.acme.example/in", ACME_TEST_TOKEN="t")
    result = run("validate", ".", "--check-env", cwd=env_folder, env=env)
    assert result.returncode == 0, result.stdout
    assert result.stdout == "valid: 1 definition in 1 organization, 0 warnings.\n"


def test_check_env_fails_on_a_signing_secret_the_dispatcher_cannot_sign_with() -> None:
    case = INVALID / "signing-secret-env-not-whsec"
    good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    env = _environment(ACME_SIGNING_SECRET=good, ACME_NEXT_SIGNING_SECRET="hunter2!")
    result = run("validate", ".", "--check-env", cwd=case, env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        *_expected("signing-secret-env-not-whsec"),
        "invalid: 1 error, 0 warnings in 1 file.",
    ]
    assert "hunter2" not in result.stdout + result.stderr
    assert good not in result.stdout + result.stderr
    # The same secret as plain base64 is what the dispatcher signs with too.
    env = _environment(
        ACME_SIGNING_SECRET=good, ACME_NEXT_SIGNING_SECRET=good.removeprefix("whsec_")
    )
    assert run("validate", ".", "--check-env", cwd=case, env=env).returncode == 0
    assert run("validate", ".", cwd=case).returncode == 0  # not checked without --check-env


def test_without_check_env_unset_variables_are_fine(env_folder: Path) -> None:
    assert run("validate", ".", cwd=env_folder).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--format", "xml"],
        ["validate", "--no-such-option"],
        ["validate", "-x"],
        ["no-such-command"],
    ],
    ids=["bad-choice", "unknown-option", "unknown-short-option", "unknown-command"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Usage: reconciler" in result.stderr
    assert result.stdout == ""


def test_a_missing_path_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run("validate", "does-not-exist", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "error: does-not-exist: no such file or folder\n"
    assert result.stdout == ""


def test_every_bad_case_fails_without_a_traceback(tmp_path: Path) -> None:
    """All invalid cases at once, plus unreadable bytes: one process, one line each."""
    folder = tmp_path / "webhooks.d" / "acme"
    folder.mkdir(parents=True)
    for number, path in enumerate(sorted(INVALID.rglob("*.y*ml"))):
        (folder / f"{number:03}-{path.name}").write_bytes(path.read_bytes())
    (folder / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    result = run("validate", "webhooks.d", cwd=tmp_path)  # `run` rejects any traceback
    assert result.returncode == 1
    assert "webhooks.d/acme/" in result.stdout
    assert "file is not valid UTF-8" in result.stdout


def test_help_has_an_example() -> None:
    result = run("validate", "--help")
    assert result.returncode == 0
    assert "Example:" in result.stdout and "reconciler validate" in result.stdout


def test_schema_command_prints_the_committed_schema() -> None:
    result = run("schema")
    assert result.returncode == 0
    assert result.stdout == (REPO / "schemas" / "webhook.schema.json").read_text(encoding="utf-8")


def test_validate_warns_about_every_spelling_of_a_private_address(tmp_path: Path) -> None:
    # Each host below is read as a private or loopback address by the HTTP client
    # or the resolver, however it is spelled; a public one gets no warning.
    hosts = {
        "dots": ("127\u30020\u30020\u30021", "127.0.0.1"),
        "fullwidth": ("127\uff0e0\uff0e0\uff0e1", "127.0.0.1"),
        "halfwidth": ("10\uff610\uff610\uff615", "10.0.0.5"),
        "digits": ("\uff11\uff12\uff17.0.0.1", "127.0.0.1"),
        "decimal": ("2130706433", "127.0.0.1"),
        "hex": ("0x7f.1", "127.0.0.1"),
        "octal": ("0177.0.0.1", "127.0.0.1"),
        "dot": ("169.254.169.254.", "169.254.169.254"),
        "sixtofour": ("[2002:a00:5::1]", None),
        "public": ("hooks.example.com", ""),
    }
    (tmp_path / "acme").mkdir()
    for name, (host, _) in hosts.items():
        (tmp_path / "acme" / f"{name}.yaml").write_text(
            f"name: {name}\nevent: new_rule_violation\nmethod: POST\n"
            f"url: http://{host}/hook\nbody: {{text: hi}}\n",
            encoding="utf-8",
        )
    result = run("validate", ".", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[-1] == "valid: 10 definitions in 1 organization, 9 warnings."
    for name, (host, address) in hosts.items():
        found = [line for line in lines if line.startswith(f"acme/{name}.yaml:4:6: warning: ")]
        if address == "":
            assert found == []
            continue
        (line,) = found
        assert "is not a public address" in line and "--allow-cidr" in line
        if address is not None:
            assert f"url: {host} ({address}) is not a public address" in line
    assert "6to4-wrapped private" in "\n".join(lines)
