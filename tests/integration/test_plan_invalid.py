"""`plan --format json|markdown` on invalid definitions: the problems come out on
stdout in the format asked for (nothing is planned, the exit code stays 1), so the
plan workflow's comment and a JSON consumer are never handed an empty document."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.plan_report import MARKDOWN_MARKER
from tests.support.helpers_state import (
    assert_no_traceback,
    cli_env,
    definition,
    make_state,
    run_cli,
    write_definition,
)


def _project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("fine"))
    write_definition(folder, "acme", definition("broken", method="FETCH"))
    # A newline in a value must stay inside its line in the comment.
    write_definition(folder, "acme", definition("twice", method="P\n*ST"))
    state = make_state(f"sqlite:///{tmp_path / 'state.db'}")
    return tmp_path, cli_env(RECONCILER_STATE=state)


def test_plan_json_on_invalid_definitions_lists_the_problems(tmp_path: Path) -> None:
    cwd, env = _project(tmp_path)
    planned = run_cli(["plan", "--format", "json"], cwd, env)
    assert planned.returncode == 1
    assert_no_traceback(planned.stderr)
    document = json.loads(planned.stdout)
    assert document["valid"] is False and document["planned"] is False
    problems = document["problems"]
    assert document["errors"] == len(problems) == 2
    method = next(p for p in problems if p["file"].endswith("broken.yaml"))
    assert method == {
        "file": "webhooks.d/acme/broken.yaml",
        "line": 3,
        "column": 9,
        "field": "method",
        "severity": "error",
        "message": "method: 'FETCH' is not one of: GET, POST, PUT, PATCH, DELETE",
    }
    twice = next(p for p in problems if p["file"].endswith("twice.yaml"))
    assert twice["field"] == "method" and twice["line"] == 3
    # The same problems still go to stderr, one line each, as with --format text.
    assert "webhooks.d/acme/broken.yaml:3:9: method: 'FETCH'" in planned.stderr


def test_plan_markdown_on_invalid_definitions_is_a_comment_with_file_and_line(
    tmp_path: Path,
) -> None:
    cwd, env = _project(tmp_path)
    planned = run_cli(["plan", "--format", "markdown"], cwd, env)
    assert planned.returncode == 1
    lines = planned.stdout.splitlines()
    assert lines[0] == MARKDOWN_MARKER
    assert lines[1] == "### reconciler plan"
    assert ":x: **The definitions are invalid (2 errors): nothing was planned.**" in lines
    items = [line for line in lines if line.startswith("- ")]
    assert len(items) == 2
    assert (
        "- `webhooks.d/acme/broken.yaml:3:9`: method: 'FETCH' is not one of: "
        "GET, POST, PUT, PATCH, DELETE" in items
    )
    # A value's line break is written escaped, and markdown in it is not markdown.
    (twice,) = [item for item in items if "twice.yaml" in item]
    assert "P\\\\n\\*ST" in twice, twice


def test_plan_text_on_invalid_definitions_prints_nothing_on_stdout(tmp_path: Path) -> None:
    cwd, env = _project(tmp_path)
    planned = run_cli(["plan"], cwd, env)
    assert planned.returncode == 1
    assert planned.stdout == ""
    assert "webhooks.d/acme/broken.yaml:3:9: method: 'FETCH'" in planned.stderr
