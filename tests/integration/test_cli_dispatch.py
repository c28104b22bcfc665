"""`reconciler fire` and `reconciler deliveries`, run as real processes.

The live state is prepared in-process (webhooks put directly, deliveries moved
on with claim/finish), so no test needs the network.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.base import Write
from reconciler.store.queue import AttemptResult, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import cli_env, json_out, put_specs, run_cli, spec, sqlite_url


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    try:
        put_specs(store, [spec("a"), spec("b"), spec("a", "globex")])
    finally:
        store.close()
    return path


@pytest.fixture
def store(state: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(state)
    yield opened
    opened.close()


def cli(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli([*args, "--state", sqlite_url(state)], cwd=state.parent, env=env)


def fire(state: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return cli(
        state, "fire", "new_rule_violation", "--org", "acme", "--name", "r1", *args, **kwargs
    )


def finished(
    store: SqliteStore, event_id: str, organization: str, outcome: str, status: int, when: float
) -> str:
    """Queue an event and finish its deliveries with `outcome`; return the first id."""
    store.add_event(
        EventRecord(event_id, "new_rule_violation", organization, "r1", "", "2026-01-01T00:00:00Z"),
        when,
    )
    claims = store.claim("test", 100, when, 90, EventKey(organization, event_id))
    store.finish(
        [
            AttemptResult(
                c.delivery_id,
                c.attempt,
                when,
                12.0,
                outcome,  # type: ignore[arg-type]
                status=status,
                response_excerpt="no such hook" if status == 404 else "ok",
                error=None if status < 300 else f"HTTP {status}",
            )
            for c in claims
        ],
        "test",
        when,
    )
    return sorted(c.delivery_id for c in claims)[0]


# -- fire ----------------------------------------------------------------------------


def test_fire_queues_and_prints_the_count(state: Path, store: SqliteStore) -> None:
    result = fire(state, "--description", "bucket logs is public")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"event acme/evt_[0-9a-f]{32}: 2 deliveries queued\n", result.stdout)
    event_id = result.stdout.split()[1].rstrip(":").removeprefix("acme/")
    records = store.deliveries(event=EventKey("acme", event_id))
    assert sorted((r.webhook, r.status) for r in records) == [("a", "pending"), ("b", "pending")]
    event = store.event(EventKey("acme", event_id))
    assert event is not None
    assert event.description == "bucket logs is public"


def test_fire_with_the_same_id_twice_queues_nothing_new(state: Path, store: SqliteStore) -> None:
    first = fire(state, "--id", "rule-42")
    again = fire(state, "--id", "rule-42")
    assert first.stdout == "event acme/rule-42: 2 deliveries queued\n"
    assert again.returncode == 0
    assert again.stdout == (
        "event acme/rule-42: 2 deliveries queued (already queued: nothing new)\n"
    )
    assert len(store.deliveries(event=EventKey("acme", "rule-42"))) == 2

    as_json = json_out(fire(state, "--id", "rule-42", "--format", "json"))
    assert (
        as_json["event_id"],
        as_json["organization"],
        as_json["deliveries"],
        as_json["duplicate"],
    ) == ("rule-42", "acme", 2, True)
    assert sorted(d["webhook"] for d in as_json["deliveries_log"]) == ["a", "b"]


def test_fire_with_an_id_another_organization_used_is_a_new_event(
    state: Path, store: SqliteStore
) -> None:
    # globex/a reads a variable that is not set: --wait fails it without sending
    put_specs(store, [spec("a", "globex", url="${env:GLOBEX_URL}")])
    acme = fire(state, "--id", "r17:2026-11-30")
    env = cli_env()
    env.pop("GLOBEX_URL", None)
    globex = json_out(
        cli(
            state,
            *("fire", "new_rule_violation", "--org", "globex", "--name", "r1"),
            *("--id", "r17:2026-11-30", "--wait", "--format", "json"),
            env=env,
        )
    )
    again = cli(
        state,
        "fire",
        "new_rule_violation",
        "--org",
        "globex",
        "--name",
        "r1",
        "--id",
        "r17:2026-11-30",
    )

    assert acme.stdout == "event acme/r17:2026-11-30: 2 deliveries queued\n"
    assert (globex["organization"], globex["deliveries"], globex["duplicate"]) == (
        "globex",
        1,
        False,
    )
    # --wait took globex's event's delivery alone; acme's wait for `serve`
    assert [(d["organization"], d["webhook"], d["status"]) for d in globex["deliveries_log"]] == [
        ("globex", "a", "failed")
    ]
    assert {r.status for r in store.deliveries(event=EventKey("acme", "r17:2026-11-30"))} == {
        "pending"
    }
    assert again.stdout == (
        "event globex/r17:2026-11-30: 1 delivery queued (already queued: nothing new)\n"
    )

    listed = cli(state, "deliveries", "list", "--org", "globex", "--event", "r17:2026-11-30")
    assert [line.split()[2] for line in listed.stdout.splitlines()] == ["globex/a"]
    as_json = json_out(
        cli(
            state,
            "deliveries",
            "list",
            "--org",
            "acme",
            "--event",
            "r17:2026-11-30",
            "--format",
            "json",
        )
    )
    assert sorted((d["organization"], d["event_id"], d["webhook"]) for d in as_json) == [
        ("acme", "r17:2026-11-30", "a"),
        ("acme", "r17:2026-11-30", "b"),
    ]


def test_deliveries_list_by_event_needs_the_organization(state: Path) -> None:
    fire(state, "--id", "r17")
    result = cli(state, "deliveries", "list", "--event", "r17")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--event goes with --org: an event id names an event only within its organization" in (
        result.stderr
    )


def test_fire_for_one_organization_only(state: Path) -> None:
    result = cli(state, "fire", "new_rule_violation", "--org", "globex", "--name", "r1")
    assert ": 1 delivery queued" in result.stdout


@pytest.mark.parametrize(
    "moment",
    [
        "yesterday",
        "2026-11-29T21:22:42",  # no time zone
        "2026-13-40T00:00:00Z",
        # BUG: valid, but out of range once converted to UTC: OverflowError traceback
        "9999-12-31T23:00:00-05:00",
    ],
)
def test_a_bad_time_is_one_error_line(state: Path, store: SqliteStore, moment: str) -> None:
    result = fire(state, "--time", moment)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: time: ")
    assert store.deliveries() == []


def test_a_bad_organization_is_one_error_line(state: Path) -> None:
    result = cli(state, "fire", "new_rule_violation", "--org", "Acme Corp", "--name", "r1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: organization: ")
    assert len(result.stderr.splitlines()) == 1


def test_an_unknown_event_type_is_a_usage_error(state: Path) -> None:
    result = cli(state, "fire", "rule_violated", "--org", "acme", "--name", "r1")
    assert result.returncode == 2
    assert "new_rule_violation" in result.stderr


def test_fire_wait_with_an_unset_environment_variable_fails_without_a_traceback(
    state: Path, store: SqliteStore
) -> None:
    put_specs(store, [spec("a", url="${env:ACME_URL}"), spec("b", enabled=False)])
    env = cli_env()
    env.pop("ACME_URL", None)
    result = fire(state, "--wait", env=env)  # run_cli asserts: no traceback
    assert result.returncode == 1
    assert "1 delivery queued" in result.stdout
    assert "failed" in result.stdout
    assert "environment variable ACME_URL is not set" in result.stdout
    (record,) = store.deliveries()
    assert (record.status, record.attempts) == ("failed", 0)

    as_json = json_out(fire(state, "--wait", "--format", "json", env=env))
    assert [d["status"] for d in as_json["deliveries_log"]] == ["failed"]


def test_fire_wait_with_a_malformed_secret_url_fails_without_showing_it(
    state: Path, store: SqliteStore
) -> None:
    put_specs(store, [spec("a", url="${env:ACME_URL}"), spec("b", enabled=False)])
    env = cli_env(ACME_URL="http://[SECHOST4]/x")
    result = fire(state, "--wait", env=env)  # run_cli asserts: no traceback
    assert result.returncode == 1
    assert "failed" in result.stdout
    assert "the resolved url is not usable: it is not a valid URL" in result.stdout
    assert "SECHOST4" not in result.stdout + result.stderr
    (record,) = store.deliveries()
    assert (record.status, record.attempts) == ("failed", 0)
    found = store.delivery(record.id)
    assert found is not None
    assert all("SECHOST4" not in (a.error or "") for a in found[1])


NO_MATCH = "no enabled webhook of {org} fires on {event}: the event is stored, and nothing is sent"


@pytest.mark.parametrize("wait", [[], ["--wait"]])
def test_fire_with_nothing_to_deliver_says_so_and_exits_1(
    state: Path, store: SqliteStore, wait: list[str]
) -> None:
    fired = cli(state, "fire", "reserved_instance_surplus", "--org", "acme", "--name", "x", *wait)
    assert fired.returncode == 1
    assert ": 0 deliveries queued" in fired.stdout
    note = NO_MATCH.format(org="acme", event="reserved_instance_surplus")
    assert fired.stderr == f"error: {note}\n"
    event_id = fired.stdout.split()[1].rstrip(":").removeprefix("acme/")
    assert store.event(EventKey("acme", event_id)) is not None  # stored all the same


def test_fire_for_an_organization_without_webhooks_exits_1_unless_allowed(
    state: Path, store: SqliteStore
) -> None:
    typo = cli(state, "fire", "new_rule_violation", "--org", "nosuchorg", "--name", "x")
    assert typo.returncode == 1
    assert (
        typo.stderr
        == "error: " + NO_MATCH.format(org="nosuchorg", event="new_rule_violation") + "\n"
    )

    expected = cli(
        state,
        *("fire", "new_rule_violation", "--org", "nosuchorg", "--name", "x"),
        *("--allow-no-match", "--format", "json"),
    )
    assert expected.returncode == 0, expected.stderr
    answer = json_out(expected)
    assert (answer["deliveries"], answer["note"]) == (
        0,
        NO_MATCH.format(org="nosuchorg", event="new_rule_violation"),
    )
    assert expected.stderr.startswith("note: no enabled webhook of nosuchorg")

    matched = json_out(fire(state, "--format", "json"))
    assert matched["deliveries"] == 2 and "note" not in matched


# -- deliveries list / show ---------------------------------------------------------------


def test_deliveries_list_text_and_json(state: Path, store: SqliteStore) -> None:
    now = time.time()
    failed = finished(store, "e-failed", "globex", "failed", 404, now - 60)
    fire(state, "--id", "e-pending")

    text = cli(state, "deliveries", "list")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 3
    # newest first: the two pending deliveries, then the older failed one
    assert sorted(line.split()[1:4] for line in lines[:2]) == [
        ["pending", "acme/a", "new_rule_violation"],
        ["pending", "acme/b", "new_rule_violation"],
    ]
    failed_line = lines[2]
    assert failed_line.startswith(failed)
    assert "failed" in failed_line
    assert "globex/a" in failed_line
    assert "attempts 1" in failed_line
    assert "HTTP 404" in failed_line

    only_failed = cli(state, "deliveries", "list", "--status", "failed").stdout.splitlines()
    assert [line.split()[0] for line in only_failed] == [failed]
    assert cli(state, "deliveries", "list", "--org", "initech").stdout == "No deliveries.\n"
    assert len(cli(state, "deliveries", "list", "--limit", "1").stdout.splitlines()) == 1

    data = json_out(cli(state, "deliveries", "list", "--format", "json", "--org", "acme"))
    assert sorted(d["webhook"] for d in data) == ["a", "b"]
    assert {d["status"] for d in data} == {"pending"}
    assert {d["event_id"] for d in data} == {"e-pending"}


def test_deliveries_show_text_and_json(state: Path, store: SqliteStore) -> None:
    delivery = finished(store, "e1", "globex", "failed", 404, time.time())

    text = cli(state, "deliveries", "show", delivery)
    assert text.returncode == 0
    assert f"delivery  {delivery}  (sent as webhook-id)" in text.stdout
    assert "webhook   globex/a" in text.stdout
    assert "event     globex/e1  new_rule_violation" in text.stdout
    assert "status    failed" in text.stdout
    assert "error     HTTP 404" in text.stdout
    assert "attempts  1" in text.stdout
    assert re.search(r"#1 .* failed +HTTP 404 +12 ms", text.stdout)
    assert "response: no such hook" in text.stdout

    data = json_out(cli(state, "deliveries", "show", delivery, "--format", "json"))
    assert (data["id"], data["status"], data["attempts"]) == (delivery, "failed", 1)
    assert (data["organization"], data["event_id"]) == ("globex", "e1")
    assert [(a["number"], a["status"], a["outcome"]) for a in data["attempts_log"]] == [
        (1, 404, "failed")
    ]


def test_deliveries_show_of_an_unknown_id_is_one_error_line(state: Path) -> None:
    result = cli(state, "deliveries", "show", "msg_nope")
    assert result.returncode == 1
    assert result.stderr == "error: no delivery msg_nope\n"


@pytest.mark.parametrize("command", [["list"], ["show", "msg_1"], ["replay", "msg_1"]])
def test_reading_a_state_that_does_not_exist_is_one_error_line(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo" / "state.db"
    result = run_cli(["deliveries", *command, "--state", sqlite_url(missing)], cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: no state at ")
    assert not missing.exists()  # and none was created


# -- deliveries replay ----------------------------------------------------------------------


def test_replay_by_id(state: Path, store: SqliteStore) -> None:
    delivery = finished(store, "e1", "globex", "failed", 404, time.time())
    result = cli(state, "deliveries", "replay", delivery)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("replayed 1 delivery;")
    record, attempts = store.delivery(delivery)  # type: ignore[misc]
    assert (record.id, record.status, len(attempts)) == (delivery, "pending", 1)


def test_replay_of_a_queued_or_unknown_delivery_says_so_and_exits_1(
    state: Path, store: SqliteStore
) -> None:
    delivery = finished(store, "e1", "globex", "failed", 404, time.time())
    fire(state, "--id", "e-pending")
    pending = store.deliveries(event=EventKey("acme", "e-pending"))[0].id
    result = cli(state, "deliveries", "replay", delivery, pending, "msg_nope")
    assert result.returncode == 1
    assert result.stdout.startswith("replayed 1 delivery;")
    assert result.stderr.splitlines() == [
        f"error: delivery {pending} is pending: not replayable yet",
        "error: no delivery msg_nope",
    ]


def test_replay_of_a_delivery_of_a_deleted_webhook_is_refused_and_kept(
    state: Path, store: SqliteStore
) -> None:
    """Deleting a webhook keeps its deliveries for auditors: listed and shown as they
    were, never sent again; named, the replay is an error, and --failed skips them."""
    now = time.time()
    gone = finished(store, "e1", "globex", "failed", 404, now)
    kept = finished(store, "e2", "acme", "failed", 500, now)  # acme/a, which stays
    store.commit([Write("delete", "globex", "a")], [], expected_serial=store.state().serial)

    named = cli(state, "deliveries", "replay", gone)
    assert named.returncode == 1
    assert named.stdout.startswith("replayed 0 deliveries;")
    assert named.stderr == (
        f"error: delivery {gone} is of the webhook globex/a, which was deleted: "
        "its delivery history is kept, but it is never sent again\n"
    )
    assert store.delivery(gone)[0].status == "failed"  # type: ignore[index]
    listed = cli(state, "deliveries", "list", "--org", "globex")
    assert f"{gone}  failed     globex/a" in listed.stdout

    every = cli(state, "deliveries", "replay", "--failed")
    assert every.returncode == 0, every.stderr
    assert every.stdout.startswith("replayed 2 deliveries;")  # acme's a and b
    assert every.stderr == (
        "skipped 1 failed delivery of deleted webhooks (kept as history, never sent again)\n"
    )
    assert store.delivery(kept)[0].status == "pending"  # type: ignore[index]
    assert store.delivery(gone)[0].status == "failed"  # type: ignore[index]


def test_list_and_show_agree_on_attempts_after_a_cancelled_try(
    state: Path, store: SqliteStore
) -> None:
    """A replayed delivery the worker cancels (nothing sent) keeps one attempt sent:
    list says 1, and show says 1 sent and lists the cancelled try as not sent."""
    now = time.time()
    delivery = finished(store, "e1", "globex", "failed", 404, now)
    assert store.replay([delivery], now + 1) == [delivery]
    (claim,) = store.claim("test", 10, now + 1, 90)
    store.finish(
        [
            AttemptResult(
                claim.delivery_id,
                claim.attempt,
                now + 1,
                0.0,
                "cancelled",
                error="cancelled: the webhook is disabled",
                sent=False,
            )
        ],
        "test",
        now + 1,
    )
    listed = cli(state, "deliveries", "list", "--org", "globex")
    assert f"{delivery}  cancelled  globex/a  new_rule_violation  attempts 1" in listed.stdout
    shown = cli(state, "deliveries", "show", delivery).stdout.splitlines()
    assert "attempts  1 sent, 1 more recorded without sending" in shown
    (cancelled,) = [line for line in shown if line.startswith("  #2")]
    assert "cancelled  not sent" in cancelled
    as_json = json_out(cli(state, "deliveries", "show", delivery, "--format", "json"))
    assert as_json["attempts"] == 1
    assert [a["outcome"] for a in as_json["attempts_log"]] == ["failed", "cancelled"]


def test_replay_failed_with_since_and_org(state: Path, store: SqliteStore) -> None:
    now = time.time()
    old = finished(store, "e-old", "acme", "failed", 500, now - 3 * 3600)  # two: a and b
    recent = finished(store, "e-recent", "globex", "failed", 404, now - 60)
    delivered = finished(store, "e-ok", "globex", "delivered", 200, now - 60)

    since = cli(state, "deliveries", "replay", "--failed", "--since", "2h")
    assert since.returncode == 0, since.stderr
    assert since.stdout.startswith("replayed 1 delivery;")
    assert store.delivery(recent)[0].status == "pending"  # type: ignore[index]
    assert store.delivery(old)[0].status == "failed"  # type: ignore[index]

    by_org = cli(state, "deliveries", "replay", "--failed", "--org", "globex")
    assert by_org.stdout.startswith("replayed 0 deliveries;")
    every = cli(state, "deliveries", "replay", "--failed")
    assert every.stdout.startswith("replayed 2 deliveries;")
    assert {r.status for r in store.deliveries(event=EventKey("acme", "e-old"))} == {"pending"}
    assert store.delivery(delivered)[0].status == "delivered"  # type: ignore[index]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["msg_1", "--failed"],
        ["msg_1", "--since", "2h"],
        ["--since", "2h"],
        ["--failed", "--since", "soon"],
    ],
)
def test_replay_usage_errors_exit_2(state: Path, args: list[str]) -> None:
    result = cli(state, "deliveries", "replay", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Usage:" in result.stderr or "Error:" in result.stderr


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["fire"],
        ["serve"],
        ["deliveries"],
        ["deliveries", "list"],
        ["deliveries", "show"],
        ["deliveries", "replay"],
    ],
)
def test_every_help_has_an_example(tmp_path: Path, command: list[str]) -> None:
    result = run_cli([*command, "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "Example:" in result.stdout
    example = result.stdout.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"reconciler {command[0]}")


def test_the_json_outputs_are_json(state: Path, store: SqliteStore) -> None:
    delivery = finished(store, "e1", "globex", "delivered", 200, time.time())
    for args in (
        ["deliveries", "list", "--format", "json"],
        ["deliveries", "show", delivery, "--format", "json"],
    ):
        json.loads(cli(state, *args).stdout)
