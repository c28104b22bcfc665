"""The on-call's commands, through the CLI (CliRunner): held deliveries at intake and
resume, `fire --webhook`, `deliveries retry`, and the deliveries' filters."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.store.queue import AttemptResult, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import put_specs, spec, sqlite_url

GONE = "paused by the dispatcher after HTTP 410 on msg_x"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    try:
        put_specs(
            store,
            [
                spec("slack-alerts"),
                spec("pager"),
                spec("off", enabled=False),
                spec("surplus", event="reserved_instance_surplus"),
                spec("slack-alerts", "globex"),
            ],
        )
    finally:
        store.close()
    return path


@pytest.fixture
def store(state: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(state)
    yield opened
    opened.close()


def run(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--state", sqlite_url(state)])


def fire(state: Path, *args: str) -> Result:
    return run(state, "fire", "new_rule_violation", "--org", "acme", "--name", "r1", *args)


def statuses(store: SqliteStore, **filters: Any) -> dict[str, str]:
    return {r.webhook: r.status for r in store.deliveries(**filters)}


# -- 1. held while paused -------------------------------------------------------------


def test_fire_says_which_webhook_is_held_and_why(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")

    text = fire(state, "--id", "e1")
    data = fire(state, "--id", "e2", "--format", "json")

    assert text.exit_code == 0, text.output
    assert "event acme/e1: 1 delivery queued, 1 held" in text.output
    (line,) = [ln for ln in text.output.splitlines() if ln.startswith("held")]
    assert line.startswith("held  acme/pager: held: the webhook is paused since ")
    assert GONE in line
    answer = json.loads(data.output)
    assert answer["deliveries"] == 2
    assert [h["webhook"] for h in answer["held"]] == ["pager"]
    assert "note" not in answer
    assert statuses(store, organization="acme", event=None, status="held") == {"pager": "held"}


def test_resume_releases_what_was_held_and_says_how_many(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    fire(state, "--id", "e1")
    fire(state, "--id", "e2")

    done = run(state, "webhooks", "resume", "acme/pager", "--actor", "alice")

    assert done.exit_code == 0, done.output
    assert "Released 2 held deliveries, due at once" in done.output
    assert store.deliveries(status="held") == []
    assert {r.status for r in store.deliveries(webhook="pager")} == {"pending"}


def test_held_deliveries_are_listed_by_their_status(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    fire(state, "--id", "e1")
    listed = run(state, "deliveries", "list", "--status", "held")
    assert listed.exit_code == 0, listed.output
    (line,) = listed.output.splitlines()
    assert "held" in line and "acme/pager" in line


# -- 3. fire --webhook ----------------------------------------------------------------


def test_fire_webhook_reaches_that_webhook_alone(state: Path, store: SqliteStore) -> None:
    done = fire(state, "--id", "e1", "--webhook", "pager")
    assert done.exit_code == 0, done.output
    assert "event acme/e1: 1 delivery queued" in done.output
    assert list(statuses(store)) == ["pager"]


def test_fire_webhook_unknown_name_is_an_error_with_did_you_mean(
    state: Path, store: SqliteStore
) -> None:
    done = fire(state, "--id", "e1", "--webhook", "slack-alert")
    assert done.exit_code == 1
    assert done.output.strip() == (
        "error: --webhook: no webhook slack-alert in organization acme "
        "(did you mean 'slack-alerts'?)"
    )
    assert store.deliveries() == []
    assert store.event(EventKey("acme", "e1")) is None


def test_fire_webhook_of_another_event_type_is_a_clear_error(
    state: Path, store: SqliteStore
) -> None:
    done = fire(state, "--id", "e1", "--webhook", "surplus")
    assert done.exit_code == 1
    assert "acme/surplus fires on reserved_instance_surplus, not on new_rule_violation" in (
        done.output
    )
    assert store.deliveries() == []


def test_fire_webhook_disabled_is_a_clear_error(state: Path) -> None:
    done = fire(state, "--id", "e1", "--webhook", "off")
    assert done.exit_code == 1
    assert "acme/off is disabled (enabled: false)" in done.output


def test_fire_webhook_of_another_organization_is_not_found(state: Path) -> None:
    done = run(
        state, "fire", "new_rule_violation", "--org", "globex", "--name", "r", "--webhook", "pager"
    )
    assert done.exit_code == 1
    assert "no webhook pager in organization globex" in done.output


def test_fire_webhook_dry_run_previews_that_webhook_alone(state: Path) -> None:
    done = fire(state, "--dry-run", "--webhook", "pager", "--format", "json")
    assert done.exit_code == 0, done.output
    assert [r["webhook"] for r in json.loads(done.output)] == ["pager"]


# -- 2. retry now ---------------------------------------------------------------------


def ev(event_id: str) -> EventRecord:
    return EventRecord(event_id, "new_rule_violation", "acme", "r", "", "2026-01-01T00:00:00Z")


def backing_off(store: SqliteStore, event_id: str, webhook: str, when: float) -> str:
    """An event fired at `webhook` alone, its first attempt a 503: due again in 2h."""
    store.add_event(ev(event_id), when, webhook)
    (claim,) = store.claim("t", 10, when, 90, EventKey("acme", event_id))
    store.finish(
        [AttemptResult(claim.delivery_id, 1, when, 5.0, "retry", 503, next_due=when + 7200)],
        "t",
        when,
    )
    return claim.delivery_id


def test_retry_makes_a_pending_delivery_due_now(state: Path, store: SqliteStore) -> None:
    now = time.time()
    waiting = backing_off(store, "e1", "pager", now)

    done = run(state, "deliveries", "retry", waiting)

    assert done.exit_code == 0, done.output
    assert "retried 1 delivery: due now" in done.output
    ((record, _),) = [store.delivery(waiting)]  # type: ignore[misc]
    assert record.status == "pending"
    assert record.due_at is not None and record.due_at <= time.time()
    assert record.attempts == 1


def test_retry_by_filter_takes_only_the_pending_ones_it_selects(
    state: Path, store: SqliteStore
) -> None:
    now = time.time()
    pager = backing_off(store, "e1", "pager", now)
    slack = backing_off(store, "e2", "slack-alerts", now)

    done = run(state, "deliveries", "retry", "--org", "acme", "--webhook", "pager")

    assert done.exit_code == 0, done.output
    due = {d: store.delivery(d)[0].due_at for d in (pager, slack)}  # type: ignore[index]
    assert due[pager] is not None and due[pager] <= time.time()
    assert due[slack] is not None and due[slack] > now + 3600


def test_retry_of_a_finished_delivery_points_at_replay(state: Path, store: SqliteStore) -> None:
    now = time.time()
    store.add_event(ev("e1"), now, "pager")
    (claim,) = store.claim("t", 10, now, 90)
    store.finish([AttemptResult(claim.delivery_id, 1, now, 5.0, "failed", 404)], "t", now)

    done = run(state, "deliveries", "retry", claim.delivery_id)

    assert done.exit_code == 1
    assert (
        f"error: delivery {claim.delivery_id} is failed: retry makes a pending delivery due "
        f"now; `reconciler deliveries replay {claim.delivery_id}` sends a finished one again"
    ) in done.output


def test_retry_of_a_held_delivery_points_at_resume(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    fire(state, "--id", "e1", "--webhook", "pager")
    (held,) = store.deliveries(status="held")
    done = run(state, "deliveries", "retry", held.id)
    assert done.exit_code == 1
    assert "`reconciler webhooks resume acme/pager` sends it" in done.output
    replayed = run(state, "deliveries", "replay", held.id)
    assert replayed.exit_code == 1
    assert "`reconciler webhooks resume acme/pager` sends it" in replayed.output


def test_retry_needs_ids_or_a_filter(state: Path) -> None:
    assert run(state, "deliveries", "retry").exit_code == 2
    assert run(state, "deliveries", "retry", "msg_x", "--org", "acme").exit_code == 2


# -- 5. filters -------------------------------------------------------------------------


def finished_at(store: SqliteStore, event_id: str, when: float, status: int) -> str:
    store.add_event(ev(event_id), when, "pager")
    (claim,) = store.claim("t", 10, when, 90, EventKey("acme", event_id))
    store.finish([AttemptResult(claim.delivery_id, 1, when, 5.0, "failed", status)], "t", when)
    return claim.delivery_id


def listed(state: Path, *args: str) -> list[str]:
    done = run(state, "deliveries", "list", "--format", "json", *args)
    assert done.exit_code == 0, done.output
    return [r["id"] for r in json.loads(done.output)]


def test_list_filters_by_time_status_code_and_webhook(state: Path, store: SqliteStore) -> None:
    now = time.time()
    old = finished_at(store, "e1", now - 3 * 3600, 404)
    new = finished_at(store, "e2", now - 60, 503)

    assert listed(state, "--since", "2h") == [new]
    assert listed(state, "--until", "2h") == [old]
    assert listed(state, "--status-code", "404") == [old]
    assert listed(state, "--webhook", "pager", "--status", "failed") == [new, old]
    iso = datetime.fromtimestamp(now - 3600, UTC).isoformat().replace("+00:00", "Z")
    assert listed(state, "--since", iso) == [new]
    assert listed(state, "--webhook", "slack-alerts") == []


def test_a_bad_time_is_a_usage_error_naming_the_option(state: Path) -> None:
    done = run(state, "deliveries", "list", "--since", "yesterday")
    assert done.exit_code == 2
    assert "--since" in done.output and "2h" in done.output


def test_replay_by_filter(state: Path, store: SqliteStore) -> None:
    now = time.time()
    old = finished_at(store, "e1", now - 3 * 3600, 404)
    new = finished_at(store, "e2", now - 60, 503)

    done = run(state, "deliveries", "replay", "--failed", "--status-code", "503", "--since", "1h")

    assert done.exit_code == 0, done.output
    assert "replayed 1 delivery" in done.output
    assert store.delivery(new)[0].status == "pending"  # type: ignore[index]
    assert store.delivery(old)[0].status == "failed"  # type: ignore[index]


def test_history_filters_by_time_actor_and_action(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    store.resume("acme", "pager", "alice")

    def actions(*args: str) -> list[tuple[str, str]]:
        done = run(state, "history", "--format", "json", *args)
        assert done.exit_code == 0, done.output
        return [(e["action"], e["actor"]) for e in json.loads(done.output)]

    assert actions("--action", "pause") == [("pause", "dispatcher")]
    assert actions("--actor", "alice") == [("resume", "alice")]
    assert actions("--since", "1h", "--action", "resume") == [("resume", "alice")]
    assert actions("--until", "1h") == []
    assert len(actions("--since", "1h", "--limit", "1")) == 1
    assert run(state, "history", "--action", "paws").exit_code == 2


def test_serve_refuses_a_bad_retention_bodies_age(state: Path) -> None:
    done = run(state, "serve", "--retention-bodies", "soon")
    assert done.exit_code == 2
    assert "--retention-bodies" in done.output


def test_retention_settings_carry_the_bodies_age() -> None:
    from reconciler.cli.dispatcher import retention_options

    settings = retention_options("30d", (), "1m", "7d")
    assert settings.bodies == 7 * 86400
    assert settings.cutoffs(1_000_000.0).bodies == 1_000_000.0 - 7 * 86400
    assert retention_options("30d", (), "1m").cutoffs(0.0).bodies is None


def test_a_dry_run_says_a_paused_webhooks_delivery_would_be_held(
    state: Path, store: SqliteStore
) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    done = fire(state, "--dry-run", "--webhook", "pager")
    assert done.exit_code == 0, done.output
    assert f"note: acme/pager is paused ({GONE}): its delivery would be held" in done.output
    assert store.deliveries() == []
