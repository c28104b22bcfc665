"""Literal credentials: `validate` refuses each one at its field, and whatever still
reaches the state (allowed by allow_literal, or stored before the rule) is masked in
plans, history and the stored audit rows, on both stores.

Each planted literal carries a unique marker; no output may hold a marker.
"""

from __future__ import annotations

import json
import random
import sqlite3
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import credentials, history_report, plan_report, preview
from reconciler.apply import ApplyOptions, apply
from reconciler.loader import load_definitions
from reconciler.plan import Plan, make_plan
from reconciler.render import EventData
from reconciler.secrets import mask_spec
from reconciler.store import open_store
from reconciler.store.base import AuditRecord, Store
from tests.support.helpers_state import REPO, cli_env, put_specs, run_cli, spec


@dataclass(frozen=True)
class Planted:
    id: str
    path: str  # the field, as validate names it and allow_literal lists it
    lines: str  # YAML after name/event/method; the marker's line is the one reported
    marker: str


URL = "url: https://api.acme.example/in\n"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkand0In0.c2lnbmF0dXJlcGxhbnRlZA"

PLANTED = [
    Planted("url-user-token", "url", "url: https://plntUSER1@api.acme.example/in\n", "plntUSER1"),
    Planted(
        "url-user-password", "url", "url: https://bot:plntPASS2@api.acme.example/in\n", "plntPASS2"
    ),
    Planted(
        "url-user-upper-scheme", "url", "url: HTTPS://plntUSER3:x@api.acme.example/\n", "plntUSER3"
    ),
    Planted(
        "url-query-pass",
        "url",
        "url: https://api.acme.example/in?pass=plntQPASS4&x=1\n",
        "plntQPASS4",
    ),
    Planted(
        "url-path-random",
        "url",
        "url: https://api.acme.example/hooks/Zk3Jq9Xw2Lm8Pv5Rt1Ny7Hb4Qe\n",
        "Zk3Jq9Xw2Lm8Pv5Rt1Ny7Hb4Qe",
    ),
    Planted(
        "slack-upper-trailing-dot",
        "url",
        "url: https://HOOKS.SLACK.COM./services/T0/B0/plntSLACK5\n",
        "plntSLACK5",
    ),
    Planted(
        "slack-fullwidth-host",
        "url",
        "url: https://\uff48\uff4f\uff4f\uff4b\uff53.slack.com/services/T0/B0/plntSLACK6\n",
        "plntSLACK6",
    ),
    Planted(
        "discord",
        "url",
        "url: https://discord.com/api/webhooks/123/plntDISCORD7\n",
        "plntDISCORD7",
    ),
    Planted(
        "discordapp-mixed-case",
        "url",
        "url: https://DiscordApp.com./api/v10/webhooks/1/plntDISCORD8\n",
        "plntDISCORD8",
    ),
    Planted(
        "teams-incoming",
        "url",
        "url: https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/plntTEAMS9/c\n",
        "plntTEAMS9",
    ),
    Planted(
        "teams-workflow-sig",
        "url",
        "url: https://prod-1.westus.logic.azure.com:443/workflows/a/triggers/manual/paths/"
        "invoke?api-version=2016-06-01&sv=1.0&sig=plntSIG10\n",
        "plntSIG10",
    ),
    Planted(
        "google-chat-key",
        "url",
        "url: https://chat.googleapis.com/v1/spaces/AAA/messages?key=plntKEY11&token=t\n",
        "plntKEY11",
    ),
    Planted("x-auth", "headers.X-Auth", URL + "headers:\n  X-Auth: plntAUTH12\n", "plntAUTH12"),
    Planted(
        "x-session", "headers.X-Session", URL + "headers:\n  X-Session: plntSESS13\n", "plntSESS13"
    ),
    Planted(
        "x-vault-tok",
        "headers.X-Vault-Tok",
        URL + "headers:\n  X-Vault-Tok: plntVAULT14\n",
        "plntVAULT14",
    ),
    Planted(
        "x-hub-sig",
        "headers.X-Hub-Sig",
        URL + "headers:\n  X-Hub-Sig: sha1=plntSIG15\n",
        "plntSIG15",
    ),
    Planted(
        "lower-api-key",
        "headers.x-api-key",
        URL + "headers:\n  x-api-key: plntKEY16\n",
        "plntKEY16",
    ),
    Planted(
        "camel-access-token",
        "headers.X-AccessToken",
        URL + "headers:\n  X-AccessToken: plntACC17\n",
        "plntACC17",
    ),
    Planted(
        "private-token",
        "headers.PRIVATE-TOKEN",
        URL + "headers:\n  PRIVATE-TOKEN: plntPRIV18\n",
        "plntPRIV18",
    ),
    Planted(
        "cookie", "headers.Cookie", URL + "headers:\n  Cookie: sid=plntCOOKIE19\n", "plntCOOKIE19"
    ),
    Planted(
        "basic-auth",
        "headers.Authorization",
        URL + "headers:\n  Authorization: Basic cGxudEJBU0lDMjA6eA==\n",
        "cGxudEJBU0lDMjA6eA==",
    ),
    Planted(
        "aws-key-in-plain-header",
        "headers.X-Custom",
        URL + "headers:\n  X-Custom: AKIAPLNT0000000021XY\n",
        "AKIAPLNT0000000021XY",
    ),
    Planted("jwt-in-plain-header", "headers.X-Custom", URL + f"headers:\n  X-Custom: {JWT}\n", JWT),
    Planted(
        "query-pass",
        "query.pass",
        "method_: GET\n" + URL + "query:\n  pass: plntQPASS22\n",
        "plntQPASS22",
    ),
    Planted(
        "query-access",
        "query.access",
        "method_: GET\n" + URL + "query:\n  access: plntQACC23\n",
        "plntQACC23",
    ),
    Planted(
        "query-azure-code",
        "query.code",
        "method_: GET\n" + URL + "query:\n  code: plntCODE24\n",
        "plntCODE24",
    ),
    Planted(
        "query-sk-key-in-plain-name",
        "query.q",
        "method_: GET\n" + URL + "query:\n  q: sk-plnt25abcdefghijklmnopqrst\n",
        "sk-plnt25abcdefghijklmnopqrst",
    ),
    Planted(
        "query-url-with-user-info",
        "query.callback",
        "method_: GET\n" + URL + "query:\n  callback: https://u:plntCB26@cb.example/\n",
        "plntCB26",
    ),
    Planted("body-token", "body.token", URL + "body:\n  token: plntBODY27\n", "plntBODY27"),
    Planted(
        "body-nested-routing-key",
        "body.payload.routing_key",
        URL + "body:\n  payload:\n    routing_key: plntROUTE28\n",
        "plntROUTE28",
    ),
    Planted(
        "body-slack-token-in-text",
        "body.text",
        URL + "body:\n  text: 'use xoxb-1234567890-plntXOXB29'\n",
        "plntXOXB29",
    ),
    Planted(
        "body-github-token",
        "body.items[0]",
        URL + "body:\n  items:\n    - ghp_plnt30abcdefghijklmnopqrstuvwxyz0123\n",
        "ghp_plnt30abcdefghijklmnopqrstuvwxyz0123",
    ),
    Planted(
        "body-random",
        "body.ref",
        URL + "body:\n  ref: Qm9xN2tHcDRvWjh5TGExM3pW\n",
        "Qm9xN2tHcDRvWjh5TGExM3pW",
    ),
    Planted(
        "body-whsec",
        "body.secret_hint",
        URL + "body:\n  secret_hint: whsec_cGxudFdIU0VDMzI=\n",
        "cGxudFdIU0VDMzI=",
    ),
    Planted(
        "description-slack-url",
        "description",
        URL + "description: posts to https://hooks.slack.com/services/T0/B0/plntDESC33\n",
        "plntDESC33",
    ),
]
MARKERS = [p.marker for p in PLANTED]
HEAD = "name: hook\nevent: new_rule_violation\n"


def _text(planted: Planted, extra: str = "") -> str:
    lines = planted.lines
    if lines.startswith("method_: "):
        method, _, lines = lines.partition("\n")
        return HEAD + f"method: {method.split()[1]}\n" + lines + extra
    return HEAD + "method: POST\n" + lines + extra


def _where(text: str, marker: str) -> tuple[int, int]:
    """The line of the marker and the column its value starts at (after `key: `, `- `)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            stripped = line.lstrip()
            if stripped.startswith("- "):
                return number, len(line) - len(stripped) + 3
            return number, line.index(": ") + 3
    raise AssertionError(marker)


def _write(folder: Path, name: str, text: str) -> Path:
    target = folder / "acme" / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace("name: hook", f"name: {name}", 1), encoding="utf-8")
    return target


# -- validate -----------------------------------------------------------------------------


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: p.id)
def test_validate_refuses_a_planted_literal_at_its_field(
    planted: Planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text(planted)
    _write(tmp_path, "hook", text)
    monkeypatch.chdir(tmp_path)
    result = load_definitions(tmp_path)
    line, col = _where(text, planted.marker)
    shown = [str(p) for p in result.problems]
    assert len(shown) == 1, shown
    assert shown[0].startswith(
        f"acme/hook.yaml:{line}:{col}: {planted.path}: a literal credential; "
    ), shown
    if planted.path != "description":  # free text can hold no reference: it is removed
        assert "${env:ACME_" in shown[0]
    assert planted.marker not in shown[0]
    assert not result.definitions


def test_the_message_names_the_reference_to_write(tmp_path: Path) -> None:
    planted = next(p for p in PLANTED if p.id == "x-auth")
    _write(tmp_path, "hook", _text(planted))
    (problem,) = load_definitions(tmp_path).problems
    assert problem.message.startswith(
        "headers.X-Auth: a literal credential; write ${env:ACME_X_AUTH} and set the "
        "variable on the dispatcher"
    )


def test_the_cli_refuses_every_planted_literal_in_one_run(tmp_path: Path) -> None:
    for number, planted in enumerate(PLANTED):
        _write(tmp_path / "webhooks.d", f"hook-{number}", _text(planted))
    for fmt in ("text", "json"):
        result = run_cli(["validate", "--format", fmt], tmp_path, cli_env())
        assert result.returncode == 1, result.stdout
        output = result.stdout + result.stderr
        assert output.count("a literal credential") == len(PLANTED)
        for marker in MARKERS:
            assert marker not in output


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Accept": "application/json, text/plain"},
        {"User-Agent": "reconciler/1.0 (+https://acme.example/bot)"},
        {"X-Request-Id": "550e8400-e29b-41d4-a716-446655440000"},
        {"Idempotency-Key": "nightly-report-2024"},
        {"X-Event-Key": "repo:push"},
        {"Access-Control-Allow-Origin": "https://acme.example"},
        {"Cache-Control": "no-cache, private"},
        {"X-GitHub-Event": "push"},
        {"X-Trace-Id": "reserved_instance_surplus_2024"},
        {"Content-Language": "en-US"},
        {"Authorization": "Bearer ${env:ACME_TOKEN}"},
        {"X-Api-Key": "${env:ACME_KEY}"},
        {"Cookie": "session=${env:ACME_SESSION}"},
    ],
    ids=lambda h: next(iter(h)),
)
def test_common_headers_and_references_pass(
    headers: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(f"  {k}: '{v}'\n" for k, v in headers.items())
    _write(tmp_path, "hook", HEAD + "method: POST\n" + URL + "headers:\n" + lines)
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in load_definitions(tmp_path).problems] == []


def test_placeholders_and_ordinary_values_pass(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "hook",
        HEAD + "method: POST\nurl: https://api.acme.example/v2/orgs/{{organization}}/events\n"
        "query:\n  token: '{{event_id}}'\n  region: us-east-1-production-cluster-2024\n"
        "body:\n  password_hint: '{{description}}'\n  key: OPS\n"
        "  id: 550e8400-e29b-41d4-a716-446655440000\n"
        "  text: The rule {{name}} was violated at {{time}}; see https://acme.example/r?id=42\n"
        "  camel: NewRuleViolationNotificationForAccount\n",
    )
    assert [str(p) for p in load_definitions(tmp_path).problems] == []


def test_the_examples_have_no_literal_credential(repo_root: Path) -> None:
    folders = [repo_root / "webhooks.d", repo_root / "tests" / "examples" / "valid"]
    for folder in folders:
        result = load_definitions(folder)
        assert result.ok and result.definitions
        for definition in result.definitions:
            assert credentials.find(definition.spec.canonical()) == []


# -- the exception ------------------------------------------------------------------------


def test_allow_literal_lets_exactly_the_named_field_through(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "hook",
        HEAD + "method: POST\n" + URL + "headers:\n  X-Trace-Token: plntTRACE\n"
        "  X-Auth: plntAUTH\nallow_literal: [headers.x-trace-token]\n",
    )
    problems = [str(p) for p in load_definitions(tmp_path).problems]
    assert len(problems) == 1
    assert ":7:11: headers.X-Auth: a literal credential" in problems[0]


def test_an_allow_literal_entry_that_allows_nothing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path,
        "hook",
        HEAD + "method: POST\n" + URL + "headers:\n  Content-Type: application/json\n"
        "allow_literal:\n  - headers.Content-Type\n  - not a path\n",
    )
    problems = [str(p) for p in load_definitions(tmp_path).problems]
    assert problems == [
        "acme/hook.yaml:9:5: allow_literal[1]: 'not a path' is not a field path; write url, "
        "description, headers.<name>, query.<name> or body.<key>"
    ]
    _write(
        tmp_path,
        "hook",
        HEAD + "method: POST\n" + URL + "headers:\n  Content-Type: application/json\n"
        "allow_literal:\n  - headers.Content-Type\n",
    )
    assert [str(p) for p in load_definitions(tmp_path).problems] == [
        "acme/hook.yaml:8:5: allow_literal[0]: headers.Content-Type holds no literal "
        "credential; remove it from the list"
    ]


# -- masking: plans, history and the audit rows on both stores ----------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(state_url: str) -> Iterator[Store]:
    made = open_store(state_url, create=True)
    try:
        yield made
    finally:
        made.close()


def _raw_audit_rows(url: str) -> str:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return repr(conn.execute("SELECT * FROM audit_log").fetchall())
        finally:
            conn.close()
    import psycopg

    from reconciler.store.postgres import split_url

    conninfo, schema, _ = split_url(url)
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
        return repr(conn.execute("SELECT * FROM audit_log").fetchall())


def _changed(marker: str) -> str:
    """Another value of the same shape: its last character changed."""
    return marker[:-1] + ("Q" if marker[-1] == "Z" else "Z")


CHANGED = [_changed(marker) for marker in MARKERS]


def _allowed_folder(folder: Path, *, changed: bool = False) -> None:
    for number, planted in enumerate(PLANTED):
        text = _text(planted, f"allow_literal: ['{planted.path}']\n")
        if changed:
            text = text.replace(planted.marker, _changed(planted.marker))
        _write(folder, f"hook-{number}", text)


def _plan(store: Store, folder: Path) -> Plan:
    result = load_definitions(folder)
    assert [str(p) for p in result.problems] == []
    return make_plan([d.spec for d in result.definitions], store.webhooks(), store.state())


def _shown_plan(plan: Plan) -> str:
    return "\n".join(
        [
            plan_report.text(plan, []),
            plan_report.as_json(plan, []),
            plan_report.markdown(plan, []),
            json.dumps(plan.as_json()),
        ]
    )


class _Yes:
    interactive = False

    def confirm_deletes(self, plan: Plan) -> bool:
        return True

    def approve(self, plan: Plan) -> bool:
        return True


def _apply(store: Store, plan: Plan) -> None:
    apply(store, lambda: plan, ApplyOptions(actor="alice", auto_approve=True), _Yes(), _ignore)


def _ignore(_plan: Plan, _refusals: list[str]) -> None:
    pass


def _assert_clean(where: str, text: str) -> None:
    for marker in MARKERS + CHANGED:
        assert marker not in text, f"{marker!r} leaked into {where}"


def test_allowed_literals_are_masked_in_plans_history_and_audit_rows(
    store: Store, state_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "webhooks.d"
    _allowed_folder(folder)
    created = _plan(store, folder)
    assert created.counts()["create"] == len(PLANTED)
    _assert_clean("the create plan", _shown_plan(created))
    _apply(store, created)

    # the live state keeps the values: the dispatcher sends them
    live = "".join(w.spec for w in store.webhooks())
    assert all(marker in live for marker in MARKERS)

    _allowed_folder(folder, changed=True)  # every literal changes: field-level diffs
    updated = _plan(store, folder)
    assert updated.counts()["update"] == len(PLANTED)
    _assert_clean("the update plan", _shown_plan(updated))
    _apply(store, updated)

    for path in folder.rglob("*.yaml"):
        path.unlink()
    deleted = _plan(store, folder)
    _assert_clean("the delete plan", _shown_plan(deleted))

    entries = list(store.history())
    assert len(entries) == 2 * len(PLANTED)
    _assert_clean("history json", json.dumps([history_report.entry_json(e) for e in entries]))
    _assert_clean("history text", "\n".join(history_report.entry_text(e) for e in entries))
    _assert_clean("the stored audit rows", json.dumps([e.as_json() for e in entries]))
    _assert_clean("the audit_log table", _raw_audit_rows(state_url))


def test_a_row_stored_before_the_rule_is_masked_when_shown(store: Store) -> None:
    old = spec("legacy", headers={"X-Vault-Tok": "plntVAULT14"}).canonical()
    # as an older version stored it: masked by a rule that missed this header
    store.commit([], [AuditRecord("create", "acme", "legacy", None, old, "alice")], 0)
    (entry,) = store.history()
    assert entry.record.after is not None
    assert entry.record.after["headers"] == {"X-Vault-Tok": "plntVAULT14"}
    shown = history_report.entry_json(entry)
    assert shown["after"]["headers"] == {"X-Vault-Tok": "****"}
    assert "plntVAULT14" not in history_report.entry_text(entry)


def test_a_live_literal_stored_before_the_rule_is_masked_in_plans(
    store: Store, tmp_path: Path
) -> None:
    put_specs(
        store,
        [
            spec("legacy", url="https://HOOKS.SLACK.COM./services/T0/B0/plntSLACK5"),
            spec("gone", headers={"X-Auth": "plntAUTH12"}),
        ],
    )
    folder = tmp_path / "webhooks.d"
    _write(folder, "legacy", HEAD + "method: POST\nurl: ${env:ACME_SLACK_URL}\n")
    plan = _plan(store, folder)
    assert plan.counts() == {"update": 1, "delete": 1}
    _assert_clean("the plan", _shown_plan(plan))


def test_the_cli_masks_allowed_literals_in_plan_and_history(tmp_path: Path) -> None:
    _allowed_folder(tmp_path / "webhooks.d")
    env = cli_env(NO_COLOR="1")
    outputs = []
    for args in (
        ["validate"],
        ["migrate"],
        ["plan"],
        ["plan", "--format", "json"],
        ["plan", "--format", "markdown"],
        ["apply", "--auto-approve", "--actor", "alice"],
        ["history"],
        ["history", "--format", "json"],
    ):
        result = run_cli(args, tmp_path, env)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result.stdout + result.stderr)
    _assert_clean("the CLI's output", "\n".join(outputs))
    _assert_clean(
        "the audit_log table", _raw_audit_rows(f"sqlite:///{tmp_path}/.reconciler/state.db")
    )
    # export writes the definitions back as they are, so that they round-trip
    assert run_cli(["export", "out.d"], tmp_path, env).returncode == 0
    exported = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "out.d").rglob("*.yaml"))
    assert all(marker in exported for marker in MARKERS)
    replanned = run_cli(["plan", "out.d", "--detailed-exitcode"], tmp_path, env)
    assert replanned.returncode == 0, replanned.stdout + replanned.stderr


# -- the rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Authorization", True),
        ("X-Auth", True),
        ("X-Session", True),
        ("X-Vault-Tok", True),
        ("X-Hub-Sig", True),
        ("X-Hub-Signature-256", True),
        ("x-api-key", True),
        ("APIKey", True),
        ("X-APIKEY", True),
        ("accessToken", True),
        ("client_secret", True),
        ("X-CSRFToken", True),
        ("PHPSESSID", True),
        ("passwd", True),
        ("Proxy-Authorization", True),
        ("X-Amz-Security-Token", True),
        ("Content-Type", False),
        ("Accept", False),
        ("User-Agent", False),
        ("X-Request-Id", False),
        ("Idempotency-Key", False),
        ("X-Event-Key", False),
        ("Access-Control-Allow-Headers", False),
        ("Keep-Alive", False),
        ("author", False),
        ("passenger", False),
        ("X-Forwarded-For", False),
    ],
)
def test_credential_names_by_their_words(name: str, expected: bool) -> None:
    assert credentials.credential_name(name) is expected


def test_code_names_a_credential_in_a_query_only() -> None:
    assert credentials.credential_name("code", "query")
    assert not credentials.credential_name("X-Country-Code", "header")


def test_random_tokens_are_found_and_words_are_not() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(alphabet) for _ in range(32)) for _ in range(500)]
    found = sum(credentials.random_looking(t) for t in tokens)
    assert found >= 0.97 * len(tokens)
    hex_keys = ["".join(rng.choice("0123456789abcdef") for _ in range(32)) for _ in range(500)]
    assert sum(credentials.random_looking(t) for t in hex_keys) >= 0.97 * len(hex_keys)
    for word in (
        "reserved_instance_surplus",
        "NewRuleViolationNotification",
        "us-east-1-production-cluster-2024",
        "application-json-charset-utf8",
        "550e8400-e29b-41d4-a716-446655440000",
        "XXXXXXXXXXXXXXXXXXXXXXXX",
        "T00000000B00000000XXXXXXXX",
        "2024-01-01T00-00-00Z-report",
    ):
        assert not credentials.random_looking(word), word


def test_hosts_are_compared_normalised() -> None:
    for host in ("hooks.slack.com", "HOOKS.SLACK.COM.", "\uff48\uff4f\uff4f\uff4b\uff53.slack.com"):
        assert credentials.secret_path_service(host, "/services/x") == "Slack"
    assert credentials.secret_path_service("hooks.slack.com.evil.example", "/services/x") is None
    assert credentials.secret_path_service("notdiscord.com", "/api/webhooks/1/x") is None


def test_the_masks_keep_references_and_placeholders_readable() -> None:
    shown = mask_spec(
        {
            "url": "https://${env:U}:${env:P}@api.example.com/{{organization}}?token=${env:T}",
            "headers": {"Authorization": "Bearer ${env:ACME_TOKEN}", "X-Auth": "plain"},
            "query": {"access": "{{event_id}}", "pass": "hunter2"},
            "body": {"token": "{{event_id}}", "password": "hunter2-long"},
        }
    )
    assert shown == {
        "url": "https://${env:U}:${env:P}@api.example.com/{{organization}}?token=${env:T}",
        "headers": {"Authorization": "Bearer ${env:ACME_TOKEN}", "X-Auth": "****"},
        "query": {"access": "{{event_id}}", "pass": "****"},
        "body": {"token": "{{event_id}}", "password": "****"},
    }


def test_the_schema_documents_allow_literal() -> None:
    schema: dict[str, Any] = json.loads(
        (REPO / "schemas" / "webhook.schema.json").read_text(encoding="utf-8")
    )
    assert schema["properties"]["allow_literal"]["type"] == "array"


def test_a_preview_masks_allowed_literals_in_headers_url_and_body() -> None:
    allowed = spec(
        "hook",
        url="https://HOOKS.SLACK.COM./services/T0/B0/plntSLACK5",
        headers={"X-Vault-Tok": "plntVAULT14", "X-Custom": "AKIAPLNT0000000021XY"},
        body={"text": "rule {{name}}", "token": "plntBODY27", "n": 3},
        allow_literal=["url", "headers.X-Vault-Tok", "headers.X-Custom", "body.token"],
    )
    event = EventData(
        event="new_rule_violation",
        organization="acme",
        name="r1",
        description="d",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        id="evt_1",
    )
    shown = preview.preview(allowed, event, "msg_1", 1_700_000_000)
    _assert_clean("the preview", json.dumps(shown.as_json()))
    assert shown.url == "https://HOOKS.SLACK.COM./****"
    assert shown.headers["X-Vault-Tok"] == "****"
    assert json.loads(shown.body or b"") == {"text": "rule r1", "token": "****", "n": 3}
