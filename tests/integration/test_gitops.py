"""The GitOps files: the GitHub workflows, CODEOWNERS, the pre-commit hook, and
`reconciler init`, which writes them into a new definitions repository.

The workflows' shell steps are run here for real, with bash, against a
repository made by `init`: the GitHub runner is the only thing not present
(`gh` is a stand-in script).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import DISTRIBUTION, __version__, scaffold
from reconciler.schema import webhook_schema_text
from tests.support.helpers_state import REPO, cli_env, make_state, run_cli

WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent  # where `reconciler` is installed
# This repository's own team, as its CODEOWNERS and apply workflow name it.
ADMINS = "@acme-corp/webhook-admins"


def workflow_text(name: str, source: str = "repository") -> str:
    """A workflow as this repository has it, or as `reconciler init` writes it."""
    if source == "init":
        return scaffold.workflows("@initech/platform")[name]
    return (WORKFLOWS / name).read_text(encoding="utf-8")


def workflow(name: str, source: str = "repository") -> dict[str, Any]:
    document = yaml.safe_load(workflow_text(name, source))
    assert isinstance(document, dict)
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads `on` as true
    return document


def steps(document: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return list(document["jobs"][job]["steps"])


def step(document: dict[str, Any], job: str, name: str) -> dict[str, Any]:
    (found,) = [s for s in steps(document, job) if s.get("name") == name]
    return found


def runs(document: dict[str, Any], job: str) -> str:
    return "\n".join(s.get("run", "") for s in steps(document, job))


# -- ci.yml -----------------------------------------------------------------------------


def test_ci_runs_lint_format_and_every_test_with_postgres_15() -> None:
    ci = workflow("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    job = ci["jobs"]["test"]
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"
    commands = "\n".join(s.get("run", "") for s in job["steps"])
    for command in (
        "pip install -e '.[dev]'",
        "ruff check .",
        "ruff format --check .",
        "python -m pytest",
    ):
        assert command in commands
    postgres = job["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["env"] == {
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "test",
        "POSTGRES_HOST_AUTH_METHOD": "trust",
    }
    assert postgres["ports"] == ["5432:5432"]
    assert "--health-cmd" in postgres["options"] and "pg_isready" in postgres["options"]
    # What tests/conftest.py connects to by default.
    assert job["env"]["RECONCILER_TEST_POSTGRES"] == "postgresql://postgres@127.0.0.1:5432/test"


def test_ci_runs_the_suite_on_the_newest_uvicorn_with_serves_stock_paths() -> None:
    ci = workflow("ci.yml")
    assert set(ci["jobs"]) == {"test", "newest-uvicorn"}
    job = ci["jobs"]["newest-uvicorn"]
    assert job["env"]["RECONCILER_SERVE_STOCK"] == "1"
    assert job["services"] == ci["jobs"]["test"]["services"]
    assert (
        job["env"]["RECONCILER_TEST_POSTGRES"]
        == ci["jobs"]["test"]["env"]["RECONCILER_TEST_POSTGRES"]
    )
    commands = runs(ci, "newest-uvicorn")
    install = commands.index("pip install -e '.[dev]'")
    assert commands.index("pip install --upgrade uvicorn") > install
    assert "python -m pytest" in commands
    # Only the tuned protocol's own tests stay out, and only here.
    ignored = [part for part in commands.split() if part.startswith("tests/")]
    assert ignored == [
        "tests/integration/test_intake_protocol.py",
        "tests/unit/test_serve_paths.py::test_the_installed_uvicorn_is_one_the_tuned_protocol_is_tested_on",
    ]
    for path in ignored:
        assert (REPO / path.split("::")[0]).is_file()


# -- the webhooks workflows --------------------------------------------------------------


def test_this_repositorys_webhooks_workflows_are_inits_but_for_the_install_step() -> None:
    for name, text in scaffold.workflows(ADMINS, scaffold.INSTALL_SOURCE).items():
        assert (WORKFLOWS / name).read_text(encoding="utf-8") == text, (
            f".github/workflows/{name} differs from reconciler/scaffold.py: change both"
        )


# The workflows init writes are checked as this repository's own are.
SOURCES = pytest.mark.parametrize("source", ["repository", "init"])


@SOURCES
def test_plan_runs_on_pull_requests_that_touch_definitions(source: str) -> None:
    plan = workflow("webhooks-plan.yml", source)
    assert plan["on"] == {"pull_request": {"paths": ["webhooks.d/**"]}}
    assert plan["permissions"]["pull-requests"] == "write"
    assert plan["jobs"]["plan"]["env"]["RECONCILER_STATE"] == "${{ secrets.RECONCILER_STATE }}"
    commands = runs(plan, "plan")
    assert "reconciler validate --format github" in commands
    assert "reconciler plan --format markdown" in commands
    assert '>> "$GITHUB_STEP_SUMMARY"' in commands
    comment = step(plan, "plan", "Comment on the pull request")
    assert comment["uses"].startswith("actions/github-script@")
    script = comment["with"]["script"]
    assert scaffold.MARKER in script
    assert "updateComment" in script and "createComment" in script


@SOURCES
def test_apply_runs_on_main_one_at_a_time_and_deletes_only_with_the_label(source: str) -> None:
    apply = workflow("webhooks-apply.yml", source)
    assert apply["on"] == {"push": {"branches": ["main"], "paths": ["webhooks.d/**"]}}
    assert apply["concurrency"] == {"group": "webhooks-apply", "cancel-in-progress": False}
    assert apply["jobs"]["apply"]["env"]["RECONCILER_STATE"] == "${{ secrets.RECONCILER_STATE }}"
    commands = runs(apply, "apply")
    assert 'gh api "repos/${GITHUB_REPOSITORY}/commits/${GITHUB_SHA}/pulls"' in commands
    assert "allow-delete" in commands
    assert "--auto-approve)" in commands
    text = workflow_text("webhooks-apply.yml", source)
    assert "# environment: webhooks" in text  # the documented alternative
    admins = "@initech/platform" if source == "init" else ADMINS
    assert f"# reviewers {admins}," in text  # the required reviewers it suggests


@SOURCES
def test_apply_checks_out_the_whole_history_to_compare_commits(source: str) -> None:
    """apply refuses a commit older than the live state's only where git can prove it."""
    checkout = steps(workflow("webhooks-apply.yml", source), "apply")[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["fetch-depth"] == 0


# The shell steps, run for real.


HEAD = "fedcba9876543210fedcba9876543210fedcba98"  # the pull request's head commit
ARTIFACT = f"webhooks-plan-{HEAD}"


class FakeGitHub:
    """A `gh` that answers as GitHub would, from files: the merged pull request of
    the pushed commit (number, head commit, label: what the --jq filter prints), the
    saved plans by artifact name, and `gh run download` copying one out."""

    def __init__(self, bin_folder: Path, tmp: Path) -> None:
        self.root = tmp / "github"
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(parents=True)
        gh = bin_folder / "gh"
        gh.write_text(
            f"""#!/bin/sh
root={self.root}
if [ "$1" = api ]; then
  case "$2" in
    */commits/*/pulls) cat "$root/pulls" 2>/dev/null ;;
    */actions/artifacts\\?name=*) [ -d "$root/artifacts/${{2##*name=}}" ] && echo 4242 ;;
  esac
  exit 0
fi
if [ "$1 $2 $3 $4 $6" = "run download 4242 --name --dir" ]; then
  mkdir -p "$7" && cp "$root/artifacts/$5/"* "$7/"
  exit 0
fi
echo "unexpected: gh $*" >&2
exit 2
""",
            encoding="utf-8",
        )
        gh.chmod(gh.stat().st_mode | stat.S_IEXEC)

    def merged(self, label: str = "false", number: int = 7) -> None:
        (self.root / "pulls").write_text(f"{number} {HEAD} {label}\n", encoding="utf-8")

    def upload(self, name: str, file: Path) -> None:
        (self.artifacts / name).mkdir()
        shutil.copy(file, self.artifacts / name / file.name)


class Runner:
    """Runs a workflow's `run:` steps with bash, as the GitHub runner would."""

    def __init__(self, repo: Path, tmp: Path, state: str | None) -> None:
        self.repo = repo
        self.summary = tmp / "summary.md"
        self.output = tmp / "output.txt"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        env = cli_env(
            GITHUB_STEP_SUMMARY=str(self.summary),
            GITHUB_OUTPUT=str(self.output),
            GITHUB_REPOSITORY="acme-corp/webhooks",
            GITHUB_SHA="0123456789abcdef0123456789abcdef01234567",
            GITHUB_ACTOR="alice",
            NO_COLOR="1",
            PATH=f"{self.bin}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        )
        if state is not None:
            env["RECONCILER_STATE"] = state
        self.env = env

    def run(self, document: dict[str, Any], job: str, name: str, **env: str) -> Any:
        script = step(document, job, name)["run"]
        return subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=self.repo,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    made = run_cli(["init", str(repo), "--org", "acme", "--admins", ADMINS], tmp_path)
    assert made.returncode == 0, made.stderr
    return repo


def test_the_plan_steps_annotate_problems_and_write_one_comment(
    definitions: Path, tmp_path: Path
) -> None:
    plan = workflow("webhooks-plan.yml")
    runner = Runner(definitions, tmp_path, make_state(f"sqlite:///{tmp_path / 'state.db'}"))

    validated = runner.run(plan, "plan", "Validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout == ""
    planned = runner.run(plan, "plan", "Plan")
    assert planned.returncode == 0, planned.stderr
    comment = (definitions / "plan-comment.md").read_text(encoding="utf-8")
    assert comment.startswith(scaffold.MARKER + "\n### reconciler plan")
    assert "**Plan: 1 to create, 0 to update, 0 to delete, 0 unchanged.**" in comment
    assert runner.summary.read_text(encoding="utf-8") == comment

    example = definitions / "webhooks.d" / "acme" / "example.yaml"
    example.write_text(example.read_text(encoding="utf-8").replace("method: POST", "method: FETCH"))
    invalid = runner.run(plan, "plan", "Validate")
    assert invalid.returncode == 1
    assert invalid.stdout.startswith("::error file=webhooks.d/acme/example.yaml,line=")
    comment = (definitions / "plan-comment.md").read_text(encoding="utf-8")
    assert comment.startswith(scaffold.MARKER)
    assert "The definitions are invalid" in comment
    assert "webhooks.d/acme/example.yaml:" in comment and "'FETCH'" in comment


def test_the_plan_step_comments_the_problems_when_definitions_are_invalid(
    definitions: Path, tmp_path: Path
) -> None:
    """The Plan step alone (e.g. a definition valid for validate but not with its
    state) never leaves an empty comment: plan writes the problems as the comment."""
    runner = Runner(definitions, tmp_path, make_state(f"sqlite:///{tmp_path / 'state.db'}"))
    example = definitions / "webhooks.d" / "acme" / "example.yaml"
    example.write_text(example.read_text(encoding="utf-8").replace("method: POST", "method: FETCH"))
    planned = runner.run(workflow("webhooks-plan.yml"), "plan", "Plan")
    assert planned.returncode == 1
    comment = (definitions / "plan-comment.md").read_text(encoding="utf-8")
    assert comment.startswith(scaffold.MARKER + "\n### reconciler plan")
    assert "The definitions are invalid (1 error)" in comment
    assert "- `webhooks.d/acme/example.yaml:" in comment and "'FETCH'" in comment
    assert runner.summary.read_text(encoding="utf-8") == comment


def test_the_plan_step_fails_clearly_without_the_state_secret(
    definitions: Path, tmp_path: Path
) -> None:
    runner = Runner(definitions, tmp_path, state=None)
    planned = runner.run(workflow("webhooks-plan.yml"), "plan", "Plan")
    assert planned.returncode == 1
    assert planned.stdout.startswith("::error::No secret RECONCILER_STATE")


@SOURCES
def test_the_plan_workflow_saves_the_plan_for_the_pull_requests_head_commit(source: str) -> None:
    plan = workflow("webhooks-plan.yml", source)
    assert "reconciler plan --format markdown --out webhooks-plan.json" in runs(plan, "plan")
    saved = step(plan, "plan", "Save the plan for the apply after the merge")
    assert saved["uses"].startswith("actions/upload-artifact@")
    assert saved["with"]["name"] == "webhooks-plan-${{ github.event.pull_request.head.sha }}"
    assert saved["with"]["path"] == "webhooks-plan.json"
    assert saved["with"]["if-no-files-found"] == "error"
    names = [s.get("name") for s in steps(plan, "plan")]
    assert names.index("Plan") < names.index("Save the plan for the apply after the merge")


@SOURCES
def test_the_apply_workflow_applies_the_saved_plan_and_nothing_else(source: str) -> None:
    apply = workflow("webhooks-apply.yml", source)
    assert apply["permissions"]["actions"] == "read"
    names = [s.get("name") for s in steps(apply, "apply")]
    assert names.index("Find the plan reviewed on the pull request") < names.index("Apply")
    found = runs(apply, "apply")
    assert 'gh run download "$run" --name "$artifact" --dir reviewed-plan' in found
    assert 'artifact="webhooks-plan-${head}"' in found
    applied = step(apply, "apply", "Apply")
    assert applied["env"]["PLAN"] == "${{ steps.reviewed.outputs.plan }}"
    assert 'flags=(--plan "$PLAN" --auto-approve)' in applied["run"]
    # Every apply goes through the saved plan: no apply of the files as they are.
    assert re.findall(r"reconciler apply [^\n]*", found) == [
        'reconciler apply "${flags[@]}" > apply.log 2>&1 || status=$?'
    ]


def _jq(filter_: str, document: Any) -> str:
    jq = shutil.which("jq")
    assert jq, "jq is missing (gh --jq uses the same language): apt-get install jq"
    result = subprocess.run(
        [jq, "-r", filter_],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_the_apply_workflows_jq_filters_read_githubs_answers() -> None:
    """The fake gh answers as the filters would: here the filters themselves run,
    with jq, on answers shaped as GitHub's REST API gives them."""
    script = step(
        workflow("webhooks-apply.yml"), "apply", "Find the plan reviewed on the pull request"
    )
    pulls_filter, artifacts_filter = re.findall(r"--jq '([^']*)'", script["run"])
    pulls = [
        {"number": 3, "merged_at": None, "head": {"sha": "aaa"}, "labels": []},
        {
            "number": 7,
            "merged_at": "2026-12-01T10:00:00Z",
            "head": {"sha": HEAD},
            "labels": [{"name": "bug"}, {"name": "allow-delete"}],
        },
    ]
    assert _jq(pulls_filter, pulls) == f"7 {HEAD} true\n"
    pulls[1]["labels"] = []
    assert _jq(pulls_filter, pulls) == f"7 {HEAD} false\n"
    assert _jq(pulls_filter, pulls[:1]) == ""  # no merged pull request
    artifacts = {
        "total_count": 2,
        "artifacts": [
            {"name": ARTIFACT, "expired": True, "workflow_run": {"id": 11}},
            {"name": ARTIFACT, "expired": False, "workflow_run": {"id": 12}},
        ],
    }
    assert _jq(artifacts_filter, artifacts) == "12\n"
    assert _jq(artifacts_filter, {"total_count": 0, "artifacts": []}) == ""


def _plan_on_the_pull_request(runner: Runner, github: FakeGitHub, repo: Path) -> None:
    """The plan workflow's Plan step, then its upload of the saved plan."""
    planned = runner.run(workflow("webhooks-plan.yml"), "plan", "Plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    github.upload(ARTIFACT, repo / "webhooks-plan.json")
    (repo / "webhooks-plan.json").unlink()


def _apply_after_the_merge(runner: Runner) -> tuple[Any, Any]:
    apply = workflow("webhooks-apply.yml")
    found = runner.run(apply, "apply", "Find the plan reviewed on the pull request")
    if found.returncode != 0:
        return found, None
    outputs = dict(
        line.split("=", 1) for line in runner.output.read_text(encoding="utf-8").splitlines()
    )
    runner.output.unlink()
    env = {
        "ALLOW_DELETE": outputs["allow_delete"],
        "PULL_REQUEST": outputs["pull_request"],
        "PLAN": outputs["plan"],
    }
    return found, runner.run(apply, "apply", "Apply", **env)


def _second(definitions: Path) -> Path:
    second = definitions / "webhooks.d" / "acme" / "second.yaml"
    second.write_text(
        (definitions / "webhooks.d" / "acme" / "example.yaml")
        .read_text(encoding="utf-8")
        .replace("name: slack-new-rule-violation", "name: second"),
        encoding="utf-8",
    )
    return second


def _live_names(state: str, tmp_path: Path, cwd: Path) -> list[str]:
    out = tmp_path / f"live-{len(list(tmp_path.glob('live-*')))}"
    listed = run_cli(["export", str(out), "--state", state], cwd)
    assert listed.returncode == 0, listed.stderr
    return sorted(p.stem for p in out.rglob("*.yaml") if p.name != "shared-env.yaml")


def test_the_reviewed_plan_is_applied_after_the_merge(definitions: Path, tmp_path: Path) -> None:
    state = make_state(f"sqlite:///{tmp_path / 'state.db'}")
    runner = Runner(definitions, tmp_path, state)
    github = FakeGitHub(runner.bin, tmp_path)
    _plan_on_the_pull_request(runner, github, definitions)
    github.merged()

    found, applied = _apply_after_the_merge(runner)

    assert found.returncode == 0, found.stdout + found.stderr
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Applied: 1 created" in applied.stdout
    summary = runner.summary.read_text(encoding="utf-8")
    assert ":white_check_mark: **Applied** the plan reviewed on #7 (0123456) for @alice." in summary
    assert _live_names(state, tmp_path, definitions) == ["slack-new-rule-violation"]


def test_a_plan_the_live_state_moved_away_from_is_refused_after_the_merge(
    definitions: Path, tmp_path: Path
) -> None:
    state = make_state(f"sqlite:///{tmp_path / 'state.db'}")
    runner = Runner(definitions, tmp_path, state)
    github = FakeGitHub(runner.bin, tmp_path)
    _plan_on_the_pull_request(runner, github, definitions)
    github.merged()
    # Meanwhile another pull request's plan is applied: the live state moves.
    other = tmp_path / "other"
    shutil.copytree(definitions / "webhooks.d", other / "webhooks.d")
    (other / "webhooks.d" / "acme" / "example.yaml").rename(
        other / "webhooks.d" / "acme" / "other.yaml"
    )
    text = (other / "webhooks.d" / "acme" / "other.yaml").read_text(encoding="utf-8")
    (other / "webhooks.d" / "acme" / "other.yaml").write_text(
        text.replace("name: slack-new-rule-violation", "name: other"), encoding="utf-8"
    )
    moved = run_cli(["apply", "--auto-approve", "--state", state], other)
    assert moved.returncode == 0, moved.stderr

    found, applied = _apply_after_the_merge(runner)

    assert found.returncode == 0, found.stdout + found.stderr
    assert applied.returncode == 1
    assert "error: the live state changed since the plan was made" in applied.stdout
    assert (
        "::error::The live state changed after pull request #7's plan was made, so that plan "
        "is not what would happen now. Nothing was applied: re-plan with a new pull request"
    ) in applied.stdout
    summary = runner.summary.read_text(encoding="utf-8")
    assert ":x: **Refused**: The live state changed after pull request #7's plan" in summary
    assert _live_names(state, tmp_path, definitions) == ["other"]


def test_no_merged_pull_request_or_no_saved_plan_fails_and_applies_nothing(
    definitions: Path, tmp_path: Path
) -> None:
    state = make_state(f"sqlite:///{tmp_path / 'state.db'}")
    runner = Runner(definitions, tmp_path, state)
    github = FakeGitHub(runner.bin, tmp_path)

    pushed, _ = _apply_after_the_merge(runner)  # a push to main, no pull request
    assert pushed.returncode == 1
    assert pushed.stdout.startswith(
        "::error::No merged pull request holds 0123456: only a plan reviewed on a pull "
        "request is applied. Nothing was applied."
    )

    github.merged()  # its plan workflow saved nothing (it failed, or the plan expired)
    unsaved, _ = _apply_after_the_merge(runner)
    assert unsaved.returncode == 1
    assert unsaved.stdout.startswith(
        f"::error::No saved plan for pull request #7 at fedcba9 (artifact {ARTIFACT}): "
    )
    assert _live_names(state, tmp_path, definitions) == []


@pytest.mark.parametrize("label", ["true", "false"])
def test_the_apply_steps_delete_only_when_the_pull_request_allowed_it(
    definitions: Path, tmp_path: Path, label: str
) -> None:
    state = make_state(f"sqlite:///{tmp_path / 'state.db'}")
    second = _second(definitions)
    first = run_cli(["apply", "--auto-approve", "--state", state], definitions)
    assert first.returncode == 0, first.stdout + first.stderr
    second.unlink()  # a pull request that deletes a webhook
    runner = Runner(definitions, tmp_path, state)
    github = FakeGitHub(runner.bin, tmp_path)
    _plan_on_the_pull_request(runner, github, definitions)
    github.merged(label)

    _found, applied = _apply_after_the_merge(runner)

    summary = runner.summary.read_text(encoding="utf-8")
    live = _live_names(state, tmp_path, definitions)
    if label == "true":
        assert applied.returncode == 0, applied.stdout
        assert "1 deleted" in applied.stdout
        assert live == ["slack-new-rule-violation"]
        assert ":white_check_mark: **Applied** the plan reviewed on #7" in summary
        assert "Deletes allowed: true" in summary
    else:
        assert applied.returncode == 1
        assert "--allow-delete" in applied.stdout  # why it refused
        assert live == ["second", "slack-new-rule-violation"]
        assert ":x: **Apply failed** (exit 1) for 0123456" in summary


# -- release.yml ---------------------------------------------------------------------------


def test_a_v_tag_builds_the_release_and_publishes_it() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    build = runs(release, "build")
    assert "python -m build" in build
    assert release["jobs"]["publish"]["needs"] == "build"
    (publish,) = [s for s in steps(release, "publish") if "uses" in s and "pypi" in s["uses"]]
    assert publish["uses"].startswith("pypa/gh-action-pypi-publish@")
    assert release["jobs"]["publish"]["permissions"] == {"id-token": "write"}


@pytest.mark.parametrize(("tag", "ok"), [(f"v{__version__}", True), ("v99.0.0", False)])
def test_a_tag_that_is_not_the_package_version_fails_the_release(
    tmp_path: Path, tag: str, ok: bool
) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    script = step(workflow("release.yml"), "build", "The tag names the package's version")["run"]
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=cli_env(GITHUB_REF_NAME=tag),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"Releasing webhook-reconciler {__version__}.\n"
    else:
        assert result.returncode == 1
        assert result.stdout.startswith(
            f"::error::The tag v99.0.0 is not v{__version__}, the version in pyproject.toml"
        )


# -- CODEOWNERS ----------------------------------------------------------------------------


def _owners() -> dict[str, list[str]]:
    rules = {}
    for line in (REPO / ".github" / "CODEOWNERS").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, *owners = line.split()
            rules[pattern] = owners
    return rules


def test_codeowners_makes_the_webhook_admins_review_every_definition() -> None:
    rules = _owners()
    admins = "@acme-corp/webhook-admins"
    assert rules["/webhooks.d/"] == [admins]
    folders = sorted(p.name for p in (REPO / "webhooks.d").iterdir() if p.is_dir())
    assert folders == ["acme", "globex"]
    for org in folders:
        # An organization's team and, since the last match wins, the admins again.
        assert rules[f"/webhooks.d/{org}/"] == [f"@acme-corp/{org}-admins", admins], org
    for path in ("/.github/workflows/", "/.github/CODEOWNERS", "/.pre-commit-config.yaml"):
        assert rules[path] == [admins], path


# -- pre-commit ----------------------------------------------------------------------------


def _hook() -> dict[str, Any]:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    return dict(hook)


def test_the_pre_commit_hook_validates_the_whole_definitions_folder() -> None:
    hook = _hook()
    assert {k: hook[k] for k in ("id", "entry", "language", "pass_filenames")} == {
        "id": "reconciler-validate",
        "entry": "reconciler validate webhooks.d",
        "language": "python",
        "pass_filenames": False,
    }
    files = re.compile(hook["files"])
    for path in ("webhooks.d/acme/a.yaml", "webhooks.d/acme/b.yml", "webhooks.d/x.yaml"):
        assert files.search(path), path
    for path in ("schemas/webhook.schema.json", "tests/webhooks.d/a.yaml", "webhooks.d/a.json"):
        assert not files.search(path), path


def test_this_repository_uses_the_same_hook_as_a_local_one() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (repo,) = config["repos"]
    assert repo["repo"] == "local"
    (hook,) = repo["hooks"]
    assert hook == _hook()


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        env={**cli_env(), "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"},
    )
    return result.stdout


def run_hook(hook: dict[str, Any], repo: Path) -> subprocess.CompletedProcess[str] | None:
    """Run `hook` in `repo` as `git commit` makes pre-commit run it: on the staged
    files its `files` pattern matches (None: it is skipped, as none does), with
    their names after `entry` when it passes file names."""
    staged = git(repo, "diff", "--staged", "--name-only", "--diff-filter=ACMRTUXB").split()
    matching = [path for path in staged if re.search(hook["files"], path)]
    if not matching:
        return None
    command = [*hook["entry"].split(), *hook.get("args", [])]
    if hook.get("pass_filenames", True):
        command += matching
    return subprocess.run(
        command,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=cli_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"),
    )


def test_the_hook_catches_a_name_used_in_a_file_the_commit_does_not_touch(
    tmp_path: Path,
) -> None:
    made = run_cli(["init", "defs", "--org", "acme", "--admins", ADMINS], tmp_path)
    assert made.returncode == 0, made.stderr
    repo = tmp_path / "defs"
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    example = repo / "webhooks.d" / "acme" / "example.yaml"
    # A copy that keeps its `name:`, and only the copy is staged.
    (repo / "webhooks.d" / "acme" / "second.yaml").write_text(
        example.read_text(encoding="utf-8").replace("rate_limit: 1/s", "rate_limit: 2/s"),
        encoding="utf-8",
    )
    git(repo, "add", "webhooks.d/acme/second.yaml")
    assert git(repo, "diff", "--staged", "--name-only").split() == ["webhooks.d/acme/second.yaml"]

    result = run_hook(_hook(), repo)

    assert result is not None
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "webhooks.d/acme/second.yaml:7:7: name: 'slack-new-rule-violation' is already used "
        "in organization 'acme' at webhooks.d/acme/example.yaml:7:7",
        "invalid: 1 error, 0 warnings in 3 files.",
    ]


def test_the_hook_passes_this_repositorys_definitions_and_skips_other_commits(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "webhooks.d", repo / "webhooks.d")
    git(repo, "init", "-q")
    (repo / "README.md").write_text("notes\n", encoding="utf-8")
    git(repo, "add", "README.md")
    assert run_hook(_hook(), repo) is None  # no definition in the commit: not run
    git(repo, "add", "webhooks.d")
    result = run_hook(_hook(), repo)
    assert result is not None
    assert result.returncode == 0, result.stdout + result.stderr
    # The shared list of variables is checked too, but is not a definition.
    files = list((repo / "webhooks.d").rglob("*.yaml"))
    assert repo / "webhooks.d" / "shared-env.yaml" in files
    assert result.stdout.startswith(f"valid: {len(files) - 1} definitions in 2 organizations")


# -- reconciler init -------------------------------------------------------------------------


EXPECTED_FILES = {
    "webhooks.d/acme/example.yaml",
    "webhooks.d/shared-env.yaml",
    "schemas/webhook.schema.json",
    ".github/workflows/webhooks-plan.yml",
    ".github/workflows/webhooks-apply.yml",
    ".github/CODEOWNERS",
    ".pre-commit-config.yaml",
    ".gitignore",
}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_init_makes_a_repository_that_validates_and_plans_at_once(tmp_path: Path) -> None:
    made = run_cli(["init", "defs", "--org", "acme", "--admins", ADMINS], tmp_path)
    assert made.returncode == 0, made.stderr
    repo = tmp_path / "defs"
    assert _files(repo) == EXPECTED_FILES
    assert [line.removeprefix("wrote defs/") for line in made.stdout.splitlines()[:-1]] == sorted(
        EXPECTED_FILES, key=list(scaffold.scaffold("acme", ADMINS).files).index
    )

    validated = run_cli(["validate"], repo)
    assert validated.returncode == 0, validated.stdout
    assert validated.stdout == "valid: 1 definition in 1 organization, 0 warnings.\n"
    assert "`reconciler migrate`" in made.stdout.splitlines()[-1]  # the Next: line
    assert run_cli(["plan"], repo).returncode == 1  # no state yet: nothing made
    assert not (repo / ".reconciler").exists()
    migrated = run_cli(["migrate"], repo)
    assert migrated.returncode == 0, migrated.stderr
    planned = run_cli(["plan", "--detailed-exitcode"], repo)
    assert planned.returncode == 2, planned.stdout + planned.stderr  # 2: there are changes
    assert "+ slack-new-rule-violation" in planned.stdout
    assert '"${env:ACME_SLACK_URL}"' in planned.stdout
    assert (repo / ".reconciler" / "state.db").exists()
    assert ".reconciler/" in (repo / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_init_writes_what_the_definitions_need(tmp_path: Path) -> None:
    made = run_cli(["init", "--org", "acme", "--admins", ADMINS], tmp_path)  # FOLDER: here
    assert made.returncode == 0, made.stderr
    example = (tmp_path / "webhooks.d" / "acme" / "example.yaml").read_text(encoding="utf-8")
    modeline = example.splitlines()[0]
    found = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", modeline)
    assert found, modeline
    schema = (tmp_path / "webhooks.d" / "acme" / found.group(1)).resolve()
    assert schema == (tmp_path / "schemas" / "webhook.schema.json").resolve()
    assert schema.read_text(encoding="utf-8") == webhook_schema_text()
    assert "url: ${env:ACME_SLACK_URL}" in example
    for name, text in scaffold.workflows(ADMINS).items():
        assert (tmp_path / ".github" / "workflows" / name).read_text(encoding="utf-8") == text
        assert scaffold.INSTALL_RELEASE in text


def _written(tmp_path: Path, admins: str = ADMINS) -> dict[str, str]:
    made = run_cli(["init", "--org", "acme", "--admins", admins], tmp_path)
    assert made.returncode == 0, made.stderr
    return {
        str(p.relative_to(tmp_path)): p.read_text(encoding="utf-8")
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix != ".json"
    }


def test_what_init_writes_installs_this_project_pinned_to_the_release_that_wrote_it(
    tmp_path: Path,
) -> None:
    """`reconciler` on PyPI is another project: every file installs
    webhook-reconciler, at the version pip has installed (importlib.metadata)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == "webhook-reconciler" == DISTRIBUTION
    release = metadata.version("webhook-reconciler")
    assert release == __version__ == pyproject["project"]["version"]
    files = _written(tmp_path)
    installs = {
        path: re.findall(r"(\S*reconciler\S*)==(\S+?)[\"'\s]", text) for path, text in files.items()
    }
    assert installs[".github/workflows/webhooks-plan.yml"] == [
        ("webhook-reconciler[postgres]", release)
    ]
    assert installs[".github/workflows/webhooks-apply.yml"] == [
        ("webhook-reconciler[postgres]", release)
    ]
    assert installs[".pre-commit-config.yaml"] == [('["webhook-reconciler', release)]
    for path, text in files.items():
        # No install of the unrelated PyPI project, and no guessed repository or tag.
        assert not re.search(r"(?<![\w-])reconciler\[postgres\]", text), path
        assert "github.com/acme-corp/reconciler" not in text, path
        assert not re.search(r"\brev:", text), path


def test_inits_pre_commit_hook_is_local_and_validates_the_whole_folder(tmp_path: Path) -> None:
    """A local hook: pre-commit installs the release into the hook's environment
    (additional_dependencies), so it needs no repository URL or tag."""
    config = yaml.safe_load(_written(tmp_path)[".pre-commit-config.yaml"])
    (repo,) = config["repos"]
    assert repo["repo"] == "local"
    assert "rev" not in repo
    (hook,) = repo["hooks"]
    assert hook["additional_dependencies"] == [
        f"webhook-reconciler=={metadata.version('webhook-reconciler')}"
    ]
    # What runs is this project's hook: the whole folder, never the staged files alone.
    published = _hook()
    for key in ("id", "name", "entry", "language", "files", "pass_filenames"):
        assert hook[key] == published[key], key
    assert hook["pass_filenames"] is False


def test_init_names_no_team_but_the_admins(tmp_path: Path) -> None:
    files = _written(tmp_path, "@initech/platform")
    teams = {
        path: set(re.findall(r"(?<![\w/@])@[A-Za-z0-9-]+/[A-Za-z0-9._-]+", text))
        for path, text in files.items()
    }
    for path, found in teams.items():
        assert found <= {"@initech/platform"}, (path, found)
    assert teams[".github/CODEOWNERS"] == {"@initech/platform"}
    assert teams[".github/workflows/webhooks-apply.yml"] == {"@initech/platform"}
    owners = files[".github/CODEOWNERS"]
    assert re.search(r"^/webhooks\.d/\s+@initech/platform$", owners, re.MULTILINE)
    # An organization's team is left to fill in, as a comment.
    assert re.search(r"^# /webhooks\.d/acme/\s+@<team> @initech/platform$", owners, re.MULTILINE)


def test_init_needs_the_admins_team(tmp_path: Path) -> None:
    result = run_cli(["init", "--org", "acme"], tmp_path)
    assert result.returncode == 2
    assert "Missing option '--admins'" in result.stderr
    assert _files(tmp_path) == set()


def test_init_takes_the_organization_and_the_admins_team(tmp_path: Path) -> None:
    made = run_cli(["init", "--org", "initech", "--admins", "@initech/platform"], tmp_path)
    assert made.returncode == 0, made.stderr
    owners = (tmp_path / ".github" / "CODEOWNERS").read_text(encoding="utf-8")
    assert re.search(r"^/webhooks\.d/\s+@initech/platform$", owners, re.MULTILINE)
    assert "url: ${env:INITECH_SLACK_URL}" in (
        tmp_path / "webhooks.d" / "initech" / "example.yaml"
    ).read_text(encoding="utf-8")


def test_init_refuses_to_overwrite_and_lists_what_exists(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n", encoding="utf-8")
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "CODEOWNERS").write_text("* @me\n", encoding="utf-8")

    refused = run_cli(["init", "--org", "acme", "--admins", ADMINS], tmp_path)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "error: 2 files exist already; nothing was written (--force overwrites):",
        "  .github/CODEOWNERS",
        "  .gitignore",
    ]
    assert _files(tmp_path) == {".gitignore", ".github/CODEOWNERS"}  # nothing written
    assert (tmp_path / ".gitignore").read_text(encoding="utf-8") == "node_modules/\n"

    forced = run_cli(["init", "--org", "acme", "--admins", ADMINS, "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert _files(tmp_path) == EXPECTED_FILES
    assert ".reconciler/" in (tmp_path / ".gitignore").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--org", "Acme Corp", "--admins", ADMINS], "Invalid value for --org"),
        (["--admins", "webhook-admins"], "Invalid value for --admins"),
    ],
)
def test_init_usage_errors_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = run_cli(["init", *args], tmp_path)
    assert result.returncode == 2
    assert words in result.stderr
    assert _files(tmp_path) == set()


@pytest.mark.parametrize(
    "command",
    [["init"], ["tokens"], ["tokens", "create"], ["tokens", "list"], ["tokens", "revoke"]],
)
def test_new_commands_have_help_with_an_example(tmp_path: Path, command: list[str]) -> None:
    result = run_cli([*command, "--help"], tmp_path)
    assert result.returncode == 0
    assert "Example:" in result.stdout
    assert f"reconciler {command[0]}" in result.stdout.split("Example:", 1)[1]


def test_init_json_schema_copy_matches_the_committed_schema() -> None:
    # The copy init writes is the generated schema, which schemas/ commits (drift-tested).
    committed = json.loads((REPO / "schemas" / "webhook.schema.json").read_text(encoding="utf-8"))
    made = scaffold.scaffold(scaffold.DEFAULT_ORGANIZATION, ADMINS).files[
        "schemas/webhook.schema.json"
    ]
    assert json.loads(made) == committed
