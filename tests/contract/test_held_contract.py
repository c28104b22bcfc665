"""Held deliveries, on both backends: an event for a paused webhook is recorded as
held (never claimed, never removed by retention) and goes out when it is resumed."""

from __future__ import annotations

import time
from typing import Any

from reconciler.store.base import Write
from reconciler.store.queue import AttemptResult, Held
from reconciler.store.retention import Cutoffs
from tests.contract.test_queue_contract import LEASE, NOW, commit, event, key
from tests.support.helpers_state import FakeClock
from tests.support.store_contract import put

GONE = "paused by the dispatcher after HTTP 410 on msg_x"


def paused_store(store: Any) -> Any:
    commit(store, put("acme", "a"), put("acme", "b"), put("acme", "off", enabled=False))
    store.pause("acme", "a", GONE, actor="dispatcher")
    return store


def test_an_event_for_a_paused_webhook_is_held_with_the_reason(each_store: Any) -> None:
    store = paused_store(each_store)

    got = store.add_event(event("evt-1"), NOW)

    assert (got.deliveries, [h.webhook for h in got.held]) == (2, ["a"])
    (held,) = got.held
    assert held.reason.startswith("held: the webhook is paused since ")
    assert GONE in held.reason
    answer = got.as_json()
    assert answer["held"] == [{"webhook": "a", "reason": held.reason}]
    assert "note" not in answer  # something is recorded: the note is for nothing at all
    records = {r.webhook: r for r in store.deliveries(event=key("evt-1"))}
    assert sorted(records) == ["a", "b"]  # a disabled webhook is not a surprise: left out
    assert (records["a"].status, records["a"].due_at) == ("held", None)
    assert records["a"].last_error == held.reason
    assert records["b"].status == "pending"
    # held is never claimed, whatever the time
    claims = store.claim("w1", 10, NOW + 10**9, LEASE)
    assert [c.webhook for c in claims] == ["b"]
    assert store.claim("w1", 10, NOW + 10**9, LEASE, event=key("evt-1")) == []


def test_intake_handing_over_to_a_worker_never_hands_a_held_one(each_store: Any) -> None:
    store = paused_store(each_store)
    results, claims = store.add_events_and_claim([event("evt-1")], NOW, "w1", 10, LEASE)
    assert [c.webhook for c in claims] == ["b"]
    assert results[0].held == (Held("a", results[0].held[0].reason),)


def test_a_duplicate_says_nothing_of_held(each_store: Any) -> None:
    store = paused_store(each_store)
    store.add_event(event("evt-1"), NOW)
    again = store.add_event(event("evt-1"), NOW)
    assert (again.duplicate, again.deliveries, again.held) == (True, 2, ())


def test_a_pause_holds_what_was_pending_and_resume_releases_all_due_now(
    each_store: Any,
) -> None:
    store = each_store
    commit(store, put("acme", "a"), put("acme", "b"))
    store.add_event(event("evt-1"), NOW)
    store.pause("acme", "a", GONE, actor="dispatcher")
    store.add_event(event("evt-2"), NOW)
    held = store.deliveries(status="held")
    assert sorted(r.event_id for r in held) == ["evt-1", "evt-2"]
    assert all(r.webhook == "a" for r in held)

    before = time.time()
    assert store.resume("acme", "a", "alice") == "resumed"

    assert store.deliveries(status="held") == []
    released = [r for r in store.deliveries(webhook="a")]
    assert {r.status for r in released} == {"pending"}
    assert all(r.due_at is not None and r.due_at >= before for r in released)
    assert all(r.last_error is None for r in released)
    entry = next(iter(store.history(name="a")))
    assert entry.record.action == "resume"
    assert "2 held deliveries released" in (entry.record.note or "")
    claimed = store.claim("w1", 10, time.time() + 1, LEASE)
    assert sorted((c.webhook, c.event.id) for c in claimed) == [
        ("a", "evt-1"),
        ("a", "evt-2"),
        ("b", "evt-1"),
        ("b", "evt-2"),
    ]


def test_an_apply_that_lifts_the_pause_releases_what_was_held(each_store: Any) -> None:
    store = paused_store(each_store)
    store.add_event(event("evt-1"), NOW)
    commit(store, put("acme", "a"))  # apply puts it again: the pause is lifted
    (record,) = store.deliveries(webhook="a")
    assert record.status == "pending"


def test_deleting_a_paused_webhook_cancels_what_was_held(each_store: Any) -> None:
    store = paused_store(each_store)
    store.add_event(event("evt-1"), NOW)
    commit(store, Write("delete", "acme", "a"))
    (record,) = store.deliveries(webhook="a")
    assert record.status == "cancelled"


def test_retention_never_removes_held_work(each_store: Any) -> None:
    store = paused_store(each_store)
    store.add_event(event("evt-1"), NOW)
    (b,) = store.claim("w1", 10, NOW, LEASE)
    store.finish([AttemptResult(b.delivery_id, 1, NOW, 5.0, "delivered", 200)], "w1", NOW)

    store.prune(Cutoffs(NOW + 10**9), FakeClock(NOW + 10**9), "me")

    assert [(r.webhook, r.status) for r in store.deliveries()] == [("a", "held")]
    assert store.event(key("evt-1")) is not None


def test_one_organizations_pause_holds_nothing_of_another(each_store: Any) -> None:
    store = paused_store(each_store)
    commit(store, put("globex", "a"))
    got = store.add_event(event("evt-1", "globex"), NOW)
    assert (got.deliveries, got.held) == (1, ())
    (record,) = store.deliveries(organization="globex")
    assert record.status == "pending"


def test_fire_at_one_webhook_queues_for_it_alone(each_store: Any) -> None:
    store = paused_store(each_store)
    got = store.add_event(event("evt-1"), NOW, "b")
    assert (got.deliveries, got.held) == (1, ())
    assert [r.webhook for r in store.deliveries(event=key("evt-1"))] == ["b"]
    held = store.add_event(event("evt-2"), NOW, "a")
    assert [h.webhook for h in held.held] == ["a"]
    assert store.add_event(event("evt-3"), NOW, "nope").deliveries == 0
