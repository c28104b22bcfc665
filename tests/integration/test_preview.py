"""Preview: `reconciler render` and `reconciler fire --dry-run`, and the library under them.

The commands run as real processes. Whatever they print must never hold a secret:
references are shown as written even when the variable is set, literal
credentials are masked, and the signature is a placeholder naming its secret.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import events, preview
from reconciler.errors import EventInvalid
from reconciler.model import WebhookSpec
from reconciler.render import EventData, render
from reconciler.store.base import LiveWebhook
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    EXAMPLES,
    cli_env,
    definition,
    json_out,
    load_specs,
    put_specs,
    run_cli,
    spec,
    sqlite_url,
    write_definition,
)

MOMENT = datetime(2026, 11, 29, 21, 22, 42, tzinfo=UTC)
MOMENT_TEXT = "2026-11-29T21:22:42Z"
JSON_KEYS = {"webhook", "method", "url", "headers", "body"}

# Secret values set in the environment of every process below: none may be printed.
SECRETS = {
    "ACME_SLACK_URL": "https://hooks.slack.com/services/T0SECRET/B0SECRET/slackpathsecret",
    "ACME_STATUS_TOKEN": "statustokensecret",
    "GLOBEX_SIGNING_SECRET": "whsec_c2lnbmluZ3NlY3JldHNpZ25pbmdzZWNyZXQ=",
    "ACME_SIGNING_SECRET": "whsec_c2lnbmluZ3NlY3JldHNpZ25pbmdzZWNyZXQ=",
}
EXAMPLE_SPECS = {s.name: s for s in load_specs(EXAMPLES)}
LITERAL_TOKEN = "literal-bearer-t0ken"
LITERAL_KEY = "literal-api-k3y"
SLACK_PATH_SECRET = "T00000000/B00000000/slackliteralsecret"


def env() -> dict[str, str]:
    return cli_env(**SECRETS)


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(list(args), cwd=cwd, env=env())
    shown = result.stdout + result.stderr
    for value in (*SECRETS.values(), "slackpathsecret", "c2lnbmluZ3NlY3JldH"):
        assert value not in shown, shown
    return result


def render_cli(cwd: Path, name: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(cwd, "render", name, str(path), *args)


def parse_text(stdout: str) -> tuple[str, str, dict[str, str], str | None]:
    """method, url, headers and body text of one HTTP-message-shaped request."""
    head, sep, body = stdout.rstrip("\n").partition("\n\n")
    lines = head.split("\n")
    method, _, url = lines[0].partition(" ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return method, url, headers, body if sep else None


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def sample(**fields: Any) -> EventData:
    base: dict[str, Any] = {
        "event": "new_rule_violation",
        "organization": "acme",
        "name": "sample-rule",
        "description": "A sample event rendered by reconciler render.",
        "time": MOMENT,
        "id": "evt_preview",
    }
    return EventData(**{**base, **fields})


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    """A definitions folder that loads without a warning: every placeholder, a
    rotation of signing secrets, a name in two organizations, a disabled webhook."""
    folder = tmp_path / "webhooks.d"
    write_definition(
        folder,
        "acme",
        definition(
            "all-placeholders",
            url="https://api.acme.example/in/{{name}}",
            query={"rule": "{{name}}", "token": "${env:ACME_STATUS_TOKEN}"},
            body={
                "name": "{{name}}",
                "description": "{{description}}",
                "time": "{{time}}",
                "event": "{{event}}",
                "organization": "{{organization}}",
                "event_id": "{{event_id}}",
                "webhook": "{{webhook}}",
            },
        ),
    )
    write_definition(
        folder,
        "acme",
        definition(
            "rotating",
            signing_secret="${env:ACME_SIGNING_SECRET} ${env:ACME_OLD_SIGNING_SECRET}",
        ),
    )
    write_definition(folder, "acme", definition("shared"))
    write_definition(folder, "globex", definition("shared"))
    write_definition(folder, "globex", definition("off", enabled=False))
    return folder


@pytest.fixture
def literal_defs(tmp_path: Path) -> Path:
    """Definitions with credentials written in them, each allowed by allow_literal."""
    folder = tmp_path / "literal.d"
    write_definition(
        folder,
        "acme",
        definition(
            "literal-auth",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {LITERAL_TOKEN}",
                "X-Api-Key": LITERAL_KEY,
                "X-Trace": "visible-value",
            },
            allow_literal=["headers.Authorization", "headers.X-Api-Key"],
        ),
    )
    write_definition(
        folder,
        "acme",
        definition(
            "literal-slack",
            url=f"https://hooks.slack.com/services/{SLACK_PATH_SECRET}",
            allow_literal=["url"],
        ),
    )
    return folder


# -- render: the examples ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLE_SPECS))
def test_render_shows_each_example_as_text(tmp_path: Path, name: str) -> None:
    example = EXAMPLE_SPECS[name]
    result = render_cli(tmp_path, name, EXAMPLES, "--time", MOMENT_TEXT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    method, url, headers, body = parse_text(result.stdout)

    expected = render(
        preview.as_applied(example),
        sample(event=example.event.value, organization=example.key[0]),
        None,
    )
    assert method == example.method.value == expected.method
    assert url == expected.url
    assert headers["webhook-id"] == "msg_preview"
    assert re.fullmatch(r"\d{10}", headers["webhook-timestamp"])
    for header, value in expected.headers.items():
        assert headers[header] == value
    if example.signing_secret:
        assert headers["webhook-signature"] == (
            "v1,<would be signed with ${env:GLOBEX_SIGNING_SECRET}>"
        )
    else:
        assert "webhook-signature" not in headers
    if expected.body is None:
        assert body is None
    else:
        assert body is not None
        assert json.loads(body) == json.loads(expected.body)
        assert body == json.dumps(json.loads(expected.body), indent=2, ensure_ascii=False)


@pytest.mark.parametrize("name", sorted(EXAMPLE_SPECS))
def test_render_shows_each_example_as_json(tmp_path: Path, name: str) -> None:
    example = EXAMPLE_SPECS[name]
    result = render_cli(tmp_path, name, EXAMPLES, "--time", MOMENT_TEXT, "--format", "json")
    assert result.returncode == 0, result.stderr
    shown = json_out(result)
    assert set(shown) == JSON_KEYS
    expected = render(
        preview.as_applied(example),
        sample(event=example.event.value, organization=example.key[0]),
        None,
    )
    assert shown["webhook"] == name
    assert (shown["method"], shown["url"]) == (expected.method, expected.url)
    assert list(shown["headers"])[: len(expected.headers)] == list(expected.headers)
    assert shown["headers"]["webhook-id"] == "msg_preview"
    assert ("webhook-signature" in shown["headers"]) == bool(example.signing_secret)
    # The exact bytes the dispatcher would send, as a string.
    if expected.body is None:
        assert shown["body"] is None
    else:
        assert shown["body"].encode("utf-8") == expected.body


def test_the_example_urls_are_shown_as_references_even_when_set(tmp_path: Path) -> None:
    slack = render_cli(tmp_path, "slack-new-rule-violation", EXAMPLES)
    assert slack.returncode == 0, slack.stderr
    assert slack.stdout.splitlines()[0] == "POST ${env:ACME_SLACK_URL}"
    status = parse_text(render_cli(tmp_path, "status-board-get", EXAMPLES).stdout)
    assert status[2]["Authorization"] == "Bearer ${env:ACME_STATUS_TOKEN}"
    assert status[3] is None


def test_render_takes_the_organization_folder_or_a_single_file(tmp_path: Path) -> None:
    folder = render_cli(tmp_path, "finops-signed", EXAMPLES / "globex")
    single = render_cli(tmp_path, "finops-signed", EXAMPLES / "globex" / "finops-signed.yaml")
    assert folder.returncode == single.returncode == 0
    assert '"organization": "globex"' in folder.stdout
    assert folder.stdout.splitlines()[0] == single.stdout.splitlines()[0]


# -- render: masking ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_literal_credentials_are_masked(tmp_path: Path, literal_defs: Path, fmt: str) -> None:
    result = render_cli(tmp_path, "literal-auth", literal_defs, "--format", fmt)
    assert result.returncode == 0, result.stderr
    everything = result.stdout + result.stderr
    assert LITERAL_TOKEN not in everything
    assert LITERAL_KEY not in everything
    if fmt == "json":
        headers = json_out(result)["headers"]
        url = json_out(result)["url"]
    else:
        _, url, headers, _ = parse_text(result.stdout)
    assert headers["Authorization"] == "****"
    assert headers["X-Api-Key"] == "****"
    assert headers["X-Trace"] == "visible-value"
    assert url == "https://hooks.example.com/literal-auth"


def test_a_reference_in_the_query_is_shown_as_written(tmp_path: Path, defs: Path) -> None:
    result = render_cli(tmp_path, "all-placeholders", defs)
    assert result.returncode == 0, result.stderr
    assert parse_text(result.stdout)[1] == (
        "https://api.acme.example/in/sample-rule?rule=sample-rule&token=${env:ACME_STATUS_TOKEN}"
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_literal_slack_url_is_masked(tmp_path: Path, literal_defs: Path, fmt: str) -> None:
    result = render_cli(tmp_path, "literal-slack", literal_defs, "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert "slackliteralsecret" not in result.stdout + result.stderr
    assert "T00000000" not in result.stdout + result.stderr
    url = json_out(result)["url"] if fmt == "json" else parse_text(result.stdout)[1]
    assert url == "https://hooks.slack.com/****"


def test_every_signing_secret_of_a_rotation_has_its_placeholder(tmp_path: Path, defs: Path) -> None:
    result = render_cli(tmp_path, "rotating", defs)
    assert result.returncode == 0, result.stderr
    assert parse_text(result.stdout)[2]["webhook-signature"] == (
        "v1,<would be signed with ${env:ACME_SIGNING_SECRET}> "
        "v1,<would be signed with ${env:ACME_OLD_SIGNING_SECRET}>"
    )
    assert "v1," not in render_cli(tmp_path, "all-placeholders", defs).stdout


# -- render: the sample event -------------------------------------------------------------


def test_placeholders_take_the_sample_values(tmp_path: Path, defs: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = render_cli(tmp_path, "all-placeholders", defs, "--format", "json")
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    body = json.loads(json_out(result)["body"])
    assert {k: v for k, v in body.items() if k != "time"} == {
        "name": "sample-rule",
        "description": "A sample event rendered by reconciler render.",
        "event": "new_rule_violation",
        "organization": "acme",
        "event_id": "evt_preview",
        "webhook": "all-placeholders",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["time"])
    assert before <= datetime.fromisoformat(body["time"].replace("Z", "+00:00")) <= after
    stamp = int(json_out(result)["headers"]["webhook-timestamp"])
    assert before.timestamp() <= stamp <= after.timestamp()


def test_placeholders_take_the_overrides(tmp_path: Path, defs: Path) -> None:
    result = render_cli(
        tmp_path,
        "all-placeholders",
        defs,
        "--name",
        'no "public" s3/..',
        "--description",
        "line one\nline \\two",
        "--time",
        "2026-11-29T22:22:42+01:00",
        "--id",
        "evt_42",
        "--event-type",
        "reserved_instance_surplus",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "warning: all-placeholders fires on new_rule_violation events, "
        "not reserved_instance_surplus\n"
    )
    _, url, _, body = parse_text(result.stdout)
    assert body is not None
    assert json.loads(body) == {
        "name": 'no "public" s3/..',
        "description": "line one\nline \\two",
        "time": MOMENT_TEXT,
        "event": "reserved_instance_surplus",
        "organization": "acme",
        "event_id": "evt_42",
        "webhook": "all-placeholders",
    }
    assert url.startswith(
        "https://api.acme.example/in/no%20%22public%22%20s3%2F%2E%2E?rule=no%20%22public%22%20s3%2F.."
    )


def test_a_disabled_webhook_is_rendered_with_a_warning(tmp_path: Path, defs: Path) -> None:
    result = render_cli(tmp_path, "off", defs)
    assert result.returncode == 0
    assert result.stderr == "warning: off is disabled: it never fires\n"
    assert result.stdout.startswith("POST https://hooks.example.com/off\n")


def test_render_neither_sends_nor_opens_the_state(tmp_path: Path, defs: Path) -> None:
    state = tmp_path / "elsewhere" / "state.db"
    result = run_cli(
        ["render", "shared", str(defs), "--org", "acme"],
        cwd=tmp_path,
        env=cli_env(RECONCILER_STATE=sqlite_url(state)),
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / ".reconciler").exists()
    assert not state.parent.exists()


# -- render: failures ---------------------------------------------------------------------


def test_an_unknown_name_is_one_error_line(tmp_path: Path, defs: Path) -> None:
    line = one_line_error(render_cli(tmp_path, "nope", defs))
    assert line == "error: no webhook nope"
    assert one_line_error(render_cli(tmp_path, "all-placeholder", defs)) == (
        "error: no webhook all-placeholder; did you mean all-placeholders?"
    )


def test_an_ambiguous_name_names_its_organizations(tmp_path: Path, defs: Path) -> None:
    line = one_line_error(render_cli(tmp_path, "shared", defs))
    assert line == (
        "error: webhook shared is in several organizations (acme, globex): choose one with --org"
    )
    chosen = render_cli(tmp_path, "shared", defs, "--org", "globex", "--format", "json")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(json_out(chosen)["body"])["text"].startswith("The rule sample-rule ")


def test_a_name_outside_the_given_organization_is_one_error_line(
    tmp_path: Path, defs: Path
) -> None:
    line = one_line_error(render_cli(tmp_path, "rotating", defs, "--org", "globex"))
    assert line == "error: no webhook rotating in organization globex (it is in acme)"


def test_invalid_definitions_fail_with_their_problems(tmp_path: Path, defs: Path) -> None:
    write_definition(defs, "acme", {**definition("broken"), "colour": "red"})
    result = render_cli(tmp_path, "all-placeholders", defs)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) >= 1
    assert all(re.match(r"\S+:\d+:\d+: ", line) for line in lines), lines
    assert any("colour" in line for line in lines)


def test_a_missing_folder_and_a_bad_time_are_one_error_line(tmp_path: Path, defs: Path) -> None:
    missing = one_line_error(render_cli(tmp_path, "shared", tmp_path / "nowhere"))
    assert missing.endswith("nowhere: no such file or folder")
    bad_time = one_line_error(render_cli(tmp_path, "off", defs, "--time", "2026-11-29T21:22:42"))
    assert bad_time.startswith("error: time: ")
    bad_id = one_line_error(render_cli(tmp_path, "off", defs, "--id", "a b"))
    assert bad_id.startswith("error: id: ")


def test_render_help_has_an_example(tmp_path: Path) -> None:
    result = run(tmp_path, "render", "--help")
    assert result.returncode == 0
    assert "Example:" in result.stdout
    assert "reconciler render slack-new-rule-violation" in result.stdout


# -- fire --dry-run -----------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    try:
        put_specs(
            store,
            [
                spec("a"),
                spec(
                    "b",
                    headers={"Authorization": f"Bearer {LITERAL_TOKEN}"},
                    url=f"https://hooks.slack.com/services/{SLACK_PATH_SECRET}",
                    signing_secret="${env:ACME_SIGNING_SECRET}",
                ),
                spec("c-disabled", enabled=False),
                spec("d-paused"),
                spec("e-other-event", event="reserved_instance_surplus"),
                spec("f-env", url="${env:ACME_SLACK_URL}"),
                spec("a", "globex"),
            ],
        )
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE webhooks SET paused_reason = 'HTTP 410' WHERE name = 'd-paused'")
    return path


def queue_rows(path: Path) -> tuple[list[Any], list[Any]]:
    with closing(sqlite3.connect(path)) as db:
        return (
            db.execute("SELECT * FROM events ORDER BY id").fetchall(),
            db.execute("SELECT * FROM deliveries ORDER BY id").fetchall(),
        )


def dry_run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        state.parent,
        "fire",
        "new_rule_violation",
        "--org",
        "acme",
        "--name",
        "no-public-s3",
        "--state",
        sqlite_url(state),
        "--dry-run",
        *args,
    )


def test_dry_run_prints_one_request_per_matching_webhook(state: Path) -> None:
    before = queue_rows(state)
    result = dry_run(state, "--time", MOMENT_TEXT)
    assert result.returncode == 0, result.stderr
    # a paused webhook's delivery would be held, not sent: said, not previewed
    assert result.stderr == (
        "note: acme/d-paused is paused (HTTP 410): its delivery would be held, and sent "
        "when it is resumed\n"
    )
    assert queue_rows(state) == before == ([], [])

    titles = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert titles == ["# acme/a", "# acme/b", "# acme/f-env"]
    assert result.stdout.endswith(
        "dry run: event acme/evt_preview would queue 3 deliveries; nothing was queued.\n"
    )
    blocks = result.stdout.split("# acme/")[1:]
    requests = {block.split("\n", 1)[0]: parse_text(block.split("\n", 1)[1]) for block in blocks}

    method, url, headers, body = requests["a"]
    assert (method, url) == ("POST", "https://hooks.example.com/a")
    assert headers["webhook-id"] == "msg_preview"
    assert "webhook-signature" not in headers
    assert body is not None
    assert json.loads(body.split("\n\ndry run:")[0]) == {
        "text": f"The rule no-public-s3 was violated at: {MOMENT_TEXT}."
    }

    _, url_b, headers_b, _ = requests["b"]
    assert url_b == "https://hooks.slack.com/****"
    assert headers_b["Authorization"] == "****"
    assert headers_b["webhook-signature"] == (
        "v1,<would be signed with ${env:ACME_SIGNING_SECRET}>"
    )
    assert LITERAL_TOKEN not in result.stdout
    assert "slackliteralsecret" not in result.stdout
    assert requests["f-env"][1] == "${env:ACME_SLACK_URL}"


def test_dry_run_as_json_is_a_list_of_requests(state: Path) -> None:
    result = dry_run(state, "--format", "json", "--id", "evt_7", "--time", MOMENT_TEXT)
    assert result.returncode == 0, result.stderr
    shown = json_out(result)
    assert [r["webhook"] for r in shown] == ["a", "b", "f-env"]
    assert all(set(r) == JSON_KEYS for r in shown)
    expected = render(
        preview.as_applied(spec("a")), sample(name="no-public-s3", description="", id="evt_7"), None
    )
    assert expected.body is not None
    assert shown[0]["body"].encode("utf-8") == expected.body
    assert shown[1]["headers"]["Authorization"] == "****"
    assert queue_rows(state) == ([], [])


def test_dry_run_of_another_organization_or_event_type(state: Path) -> None:
    globex = run(
        state.parent,
        "fire",
        "new_rule_violation",
        "--org",
        "globex",
        "--name",
        "r",
        "--state",
        sqlite_url(state),
        "--dry-run",
        "--format",
        "json",
    )
    assert [r["webhook"] for r in json_out(globex)] == ["a"]
    nobody = run(
        state.parent,
        "fire",
        "reserved_instance_deficit",
        "--org",
        "acme",
        "--name",
        "r",
        "--state",
        sqlite_url(state),
        "--dry-run",
    )
    assert nobody.returncode == 1
    assert nobody.stdout == (
        "dry run: event acme/evt_preview would queue 0 deliveries; nothing was queued.\n"
    )
    assert nobody.stderr == (
        "error: no enabled webhook of acme fires on reserved_instance_deficit: "
        "nothing would be sent\n"
    )
    allowed = run(
        state.parent,
        *("fire", "reserved_instance_deficit", "--org", "acme", "--name", "r"),
        *("--state", sqlite_url(state), "--dry-run", "--allow-no-match"),
    )
    assert allowed.returncode == 0
    assert allowed.stderr.startswith("note: no enabled webhook of acme")
    assert queue_rows(state) == ([], [])


def test_dry_run_of_an_event_already_queued_says_so(state: Path) -> None:
    fired = run(
        state.parent,
        *("fire", "new_rule_violation", "--org", "acme", "--name", "r"),
        *("--id", "evt_9", "--state", sqlite_url(state)),
    )
    assert fired.stdout.startswith("event acme/evt_9: 3 deliveries queued, 1 held\n")
    assert "held  acme/d-paused: held: the webhook is paused since " in fired.stdout
    before = queue_rows(state)
    again = dry_run(state, "--id", "evt_9")
    assert again.returncode == 0
    assert again.stderr.startswith(
        "note: event acme/evt_9 is already queued: fire would queue nothing new\n"
    )
    assert queue_rows(state) == before
    # the same id in another organization is another event, not queued yet
    globex = run(
        state.parent,
        *("fire", "new_rule_violation", "--org", "globex", "--name", "r", "--id", "evt_9"),
        *("--state", sqlite_url(state), "--dry-run"),
    )
    assert globex.returncode == 0, globex.stderr
    assert globex.stderr == ""
    assert globex.stdout.endswith(
        "dry run: event globex/evt_9 would queue 1 delivery; nothing was queued.\n"
    )
    assert queue_rows(state) == before


def test_dry_run_refuses_wait_and_a_missing_state(tmp_path: Path, state: Path) -> None:
    with_wait = dry_run(state, "--wait")
    assert with_wait.returncode == 2
    assert "--dry-run sends nothing" in with_wait.stderr
    missing = tmp_path / "missing.db"
    result = run(
        tmp_path,
        *("fire", "new_rule_violation", "--org", "acme", "--name", "r"),
        *("--state", sqlite_url(missing), "--dry-run"),
    )
    assert one_line_error(result).startswith("error: no state at ")
    assert not missing.exists()


def test_fire_help_has_a_dry_run_example(tmp_path: Path) -> None:
    result = run(tmp_path, "fire", "--help")
    assert result.returncode == 0
    assert "--dry-run" in result.stdout
    assert "--name no-public-s3 --dry-run" in result.stdout


# -- the library ----------------------------------------------------------------------------


def live(s: WebhookSpec, paused: str | None = None) -> LiveWebhook:
    text = s.canonical_json()
    return LiveWebhook(s.key[0], s.name, text, text, paused, "2026-01-01T00:00:00Z")


def test_preview_masks_and_adds_the_dispatchers_headers() -> None:
    shown = preview.preview(
        spec(
            "hook",
            url="https://user:pw-secret@api.example.com/in?api_key=k3y-secret&x=1",
            headers={"Authorization": "Basic abc-secret", "Content-Type": "application/json"},
            signing_secret="${env:SIGNING}",
        ),
        sample(),
        "msg_1",
        1_700_000_000,
    )
    assert shown.url == "https://****@api.example.com/in?api_key=****&x=1"
    assert shown.headers == {
        "Authorization": "****",
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,<would be signed with ${env:SIGNING}>",
    }
    assert "secret" not in json.dumps(shown.as_json())
    assert shown.as_json()["body"] == '{"text":"The rule sample-rule was violated at: %s."}' % (
        MOMENT_TEXT
    )


def test_preview_follows_the_canonical_order_the_dispatcher_sends_in() -> None:
    s = spec("hook", body={"zeta": 1, "alpha": "{{name}}"}, headers={"X-B": "1", "X-A": "2"})
    shown = preview.preview(s, sample(), "msg_1", 0)
    assert shown.body == b'{"alpha":"sample-rule","zeta":1}'
    assert list(shown.headers)[:3] == ["X-A", "X-B", "Content-Type"]


def test_request_text_is_an_http_message() -> None:
    shown = preview.preview(spec("hook", organization="globex"), sample(), "msg_1", 5)
    assert preview.request_text(shown, title=True) == (
        "# globex/hook\n"
        "POST https://hooks.example.com/hook\n"
        "Content-Type: application/json\n"
        "webhook-id: msg_1\n"
        "webhook-timestamp: 5\n"
        "\n"
        "{\n"
        f'  "text": "The rule sample-rule was violated at: {MOMENT_TEXT}."\n'
        "}"
    )
    get = preview.preview(
        spec("hook", method="GET", body=None, headers={}, query={"q": "{{name}}"}), sample(), "m", 5
    )
    assert preview.request_text(get) == (
        "GET https://hooks.example.com/hook?q=sample-rule\nwebhook-id: m\nwebhook-timestamp: 5"
    )


def test_matching_live_follows_the_intake_rules() -> None:
    webhooks = [
        live(spec("z")),
        live(spec("a")),
        live(spec("off", enabled=False)),
        live(spec("paused"), paused="HTTP 410"),
        live(spec("other", event="reserved_instance_deficit")),
    ]
    assert [s.name for s in preview.matching_live(webhooks, "new_rule_violation")] == ["a", "z"]
    assert [s.name for s in preview.matching_live(webhooks, "reserved_instance_deficit")] == [
        "other"
    ]


def test_find_webhook() -> None:
    specs = [spec("one"), spec("two"), spec("two", "globex")]
    assert preview.find_webhook(specs, "one", None).key == ("acme", "one")
    assert preview.find_webhook(specs, "two", "globex").key == ("globex", "two")
    with pytest.raises(preview.PreviewError, match=r"several organizations \(acme, globex\)"):
        preview.find_webhook(specs, "two", None)
    with pytest.raises(preview.PreviewError, match=r"^no webhook three$"):
        preview.find_webhook(specs, "three", None)
    with pytest.raises(preview.PreviewError, match="in organization globex"):
        preview.find_webhook(specs, "one", "globex")


def test_checked_event_refuses_what_intake_refuses() -> None:
    record = events.checked_event(
        {"type": "new_rule_violation", "organization": "acme", "name": "r", "time": None},
        now=MOMENT,
    )
    assert record.time == MOMENT_TEXT
    assert record.id.startswith("evt_")
    with pytest.raises(EventInvalid, match=r"^time: "):
        events.checked_event(
            {"type": "new_rule_violation", "organization": "acme", "name": "r", "time": "x"}
        )
