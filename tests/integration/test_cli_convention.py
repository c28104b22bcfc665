"""One convention across the commands: --format json wherever a command prints a
result, times in ISO 8601 UTC in every JSON document, "not found" is exit 1, the
--state help names PostgreSQL, one option name per idea (render and fire), and one
marker per plan action in the text and the Markdown."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.jsontimes import CONTENT, with_iso_times
from tests.support.helpers_state import EXAMPLES, sqlite_url

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "webhooks.d")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECONCILER_STATE", sqlite_url(tmp_path / "state.db"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("ACME_SLACK_URL", "https://hooks.example.com/x")
    return tmp_path


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def json_of(*args: str, code: int = 0) -> Any:
    result = invoke(*args)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def times(document: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value under a key that names a moment: `at`, `time`, or `..._at`;
    not inside a definition (its body may say `at: "{{time}}"`)."""
    if isinstance(document, dict):
        for key, value in document.items():
            here = f"{path}.{key}"
            if key in CONTENT - {"plan"}:
                continue
            if key in ("at", "time") or key.endswith("_at"):
                yield here, value
            yield from times(value, here)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from times(item, f"{path}[{index}]")


def every_json_output(project: Path) -> dict[str, Any]:
    """Each command's JSON document, on a state with webhooks, an audit log, a
    token, an event and its deliveries."""
    out: dict[str, Any] = {}
    out["migrate"] = json_of("migrate", "--format", "json")
    out["plan"] = json_of("plan", "--format", "json")
    out["apply"] = json_of("apply", "--auto-approve", "--actor", "alice", "--format", "json")
    token = json_of("tokens", "create", "--role", "auditor", "--org", "acme", "--format", "json")
    out["tokens create"] = token
    out["tokens list"] = json_of("tokens", "list", "--format", "json")
    out["tokens revoke"] = json_of("tokens", "revoke", token["id"], "--format", "json")
    fired = json_of(
        "fire", "new_rule_violation", "--org", "acme", "--name", "r1", "--id", "e1",
        "--time", "2026-11-29T21:22:42+01:00", "--format", "json",
    )  # fmt: skip
    out["fire"] = fired
    out["fire --dry-run"] = json_of(
        "fire", "new_rule_violation", "--org", "acme", "--name", "r1", "--dry-run",
        "--format", "json",
    )  # fmt: skip
    delivery = fired["deliveries_log"][0]["id"]
    out["deliveries list"] = json_of("deliveries", "list", "--format", "json")
    out["deliveries show"] = json_of("deliveries", "show", delivery, "--format", "json")
    out["deliveries replay"] = json_of(
        "deliveries", "replay", delivery, "--format", "json", code=1
    )  # pending: not replayable, said in the document
    out["deliveries retry"] = json_of("deliveries", "retry", delivery, "--format", "json")
    out["history"] = json_of("history", "--format", "json")
    out["export"] = json_of("export", "exported.d", "--format", "json")
    out["webhooks status"] = json_of("webhooks", "status", "--format", "json")
    out["webhooks resume"] = json_of(
        "webhooks", "resume", "acme/slack-new-rule-violation", "--format", "json"
    )
    out["retention run"] = json_of("retention", "run", "--format", "json")
    out["retention status"] = json_of("retention", "status", "--format", "json")
    out["render"] = json_of("render", "slack-new-rule-violation", "--format", "json")
    out["validate"] = json_of("validate", "--format", "json")
    return out


def test_every_json_output_gives_its_times_in_iso_8601_utc(project: Path) -> None:
    outputs = every_json_output(project)
    found = {command: list(times(document)) for command, document in outputs.items()}
    for command, moments in found.items():
        for where, value in moments:
            assert value is None or (isinstance(value, str) and ISO_UTC.fullmatch(value)), (
                command,
                where,
                value,
            )
    # The documents that hold moments hold some, so the check above checked them.
    for command in (
        "apply", "plan", "tokens list", "tokens revoke", "fire", "history", "retention run",
        "retention status",
    ):  # fmt: skip
        assert [v for _w, v in found[command] if v is not None], command
    assert outputs["tokens revoke"]["revoked_at"] is not None
    assert outputs["deliveries list"][0]["created_at"].endswith("Z")


def test_the_new_json_results_say_what_happened(project: Path) -> None:
    outputs = every_json_output(project)
    assert outputs["apply"]["applied"] is True
    assert outputs["apply"]["actor"] == "alice"
    assert outputs["apply"]["plan"]["summary"]["create"] == 5
    assert "state.db" in outputs["migrate"]["state"]
    assert outputs["migrate"]["migrations"]
    assert outputs["tokens revoke"]["already_revoked"] is False
    assert outputs["tokens revoke"]["status"] == "revoked"
    (refused,) = outputs["deliveries replay"]["refused"]
    assert outputs["deliveries replay"]["replayed"] == []
    assert refused["reason"].endswith("is pending: not replayable yet")
    assert outputs["webhooks resume"] == {
        "webhook": "acme/slack-new-rule-violation",
        "resumed": False,
        "released": 0,
        "actor": outputs["webhooks resume"]["actor"],
    }
    assert outputs["deliveries retry"] == {
        "retried": [outputs["deliveries show"]["id"]],
        "refused": [],
    }
    assert outputs["export"]["removed"] == []
    assert len(outputs["export"]["webhooks"]) == 5


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = sorted(_commands(cli))
# The commands whose output is not a result: the schema (JSON already), the
# server's log, init's files (listed), the demo's narrated tour.
NO_RESULT = {("schema",), ("serve",), ("init",), ("demo",)}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_that_prints_a_result_takes_format_json(command: tuple[str, ...]) -> None:
    help_text = invoke(*command, "--help").stdout
    if command in NO_RESULT:
        return
    assert re.search(r"--format \[text\|json", help_text), command


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_the_state_option_names_sqlite_and_postgresql_urls(command: tuple[str, ...]) -> None:
    help_text = " ".join(invoke(*command, "--help").stdout.split())
    if "--state" not in help_text:
        return
    assert "sqlite:///PATH" in help_text, command
    assert "postgresql://USER@HOST:PORT/DATABASE" in help_text, command


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["history", "nope"], "error: no webhook nope in the audit log at "),
        (
            ["history", "slack-ri-deficit", "--org", "globex"],
            "error: no webhook slack-ri-deficit of organization globex",
        ),
        (["deliveries", "show", "msg_nope"], "error: no delivery msg_nope"),
        (["tokens", "revoke", "tok_nope"], "error: no token tok_nope"),
        (["render", "nope"], "error: no webhook nope"),
        (["webhooks", "resume", "acme/nope"], "error: no webhook acme/nope"),
    ],
)  # fmt: skip
def test_not_found_is_exit_1_everywhere(project: Path, args: list[str], said: str) -> None:
    applied = invoke("apply", "--auto-approve", "--actor", "alice")
    assert applied.exit_code == 0, applied.output
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(said), result.stderr


def test_history_without_a_name_of_an_empty_log_is_not_an_error(project: Path) -> None:
    assert invoke("migrate").exit_code == 0
    result = invoke("history")
    assert result.exit_code == 0
    assert result.stdout == "No history.\n"


def test_render_and_fire_spell_the_events_options_alike(project: Path) -> None:
    def options(*command: str) -> set[str]:
        found = next(c for c in [cli.get_command(click.Context(cli), command[0])] if c)
        for name in command[1:]:
            assert isinstance(found, click.Group)
            found = found.commands[name]
        return {o for p in found.params if not getattr(p, "hidden", False) for o in p.opts}

    event = {"--name", "--description", "--time", "--id"}
    assert event <= options("render")
    assert event <= options("fire")
    rendered = invoke("render", "slack-new-rule-violation", "--id", "r17", "--name", "no-s3")
    assert rendered.exit_code == 0, rendered.output
    assert "no-s3" in rendered.stdout


def test_renders_old_event_id_option_still_works_and_says_it_is_deprecated(project: Path) -> None:
    # The same moment for both, so that {{time}} cannot differ between them.
    at = ("--time", "2026-11-29T21:22:42Z", "--format", "json")
    new = invoke("render", "slack-new-rule-violation", "--id", "e-42", *at)
    old = invoke("render", "slack-new-rule-violation", "--event-id", "e-42", *at)
    assert old.exit_code == 0, old.output
    assert "--event-id" in old.stderr and "deprecated" in old.stderr
    assert "--id" in old.stderr
    strip = re.compile(r'"webhook-timestamp": "\d+"')
    assert strip.sub("", old.stdout) == strip.sub("", new.stdout)
    assert "--event-id" not in invoke("render", "--help").stdout
    both = invoke("render", "slack-new-rule-violation", "--id", "a", "--event-id", "b")
    assert both.exit_code == 2


def test_each_plan_action_has_one_marker_in_text_and_markdown(project: Path) -> None:
    assert invoke("apply", "--auto-approve", "--actor", "alice").exit_code == 0
    acme = project / "webhooks.d" / "acme"
    (acme / "slack-ri-surplus.yaml").unlink()  # delete
    deficit = acme / "slack-ri-deficit.yaml"
    deficit.write_text(
        deficit.read_text(encoding="utf-8").replace("rate_limit: 1/s", "rate_limit: 2/s"),
        encoding="utf-8",
    )  # update
    new = acme / "new.yaml"
    new.write_text(
        "name: new\nevent: new_rule_violation\nmethod: GET\nurl: https://x.example/\n",
        encoding="utf-8",
    )  # create
    text = invoke("plan").stdout.splitlines()
    markdown = invoke("plan", "--format", "markdown").stdout.splitlines()
    marks = {"+": "new", "~": "slack-ri-deficit", "-": "slack-ri-surplus"}
    for mark, name in marks.items():
        assert any(line.startswith(f"  {mark} {name}") for line in text), (mark, text)
        assert any(line.startswith(f"{mark} {name}") for line in markdown), (mark, markdown)
    heads = [line.split()[1] for line in markdown if line[:2] in ("+ ", "~ ", "- ", "! ")]
    assert "new" in heads
    assert not any(line.startswith("! ") for line in markdown)  # no drift here


def test_a_definitions_own_keys_are_never_taken_for_times() -> None:
    document = {
        "created_at": 0,
        "after": {"body": {"sent_at": 5}},
        "log": [{"due_at": 60.5, "query": {"x_at": 1}}],
        "flag_at": True,
    }
    assert with_iso_times(document) == {
        "created_at": "1970-01-01T00:00:00Z",
        "after": {"body": {"sent_at": 5}},
        "log": [{"due_at": "1970-01-01T00:01:00Z", "query": {"x_at": 1}}],
        "flag_at": True,
    }
