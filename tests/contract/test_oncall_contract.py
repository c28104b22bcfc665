"""Retry now and the deliveries' filters, on both backends."""

from __future__ import annotations

from typing import Any

from reconciler.store.queue import AttemptResult, SentRequest
from tests.contract.test_queue_contract import LEASE, NOW, commit, event
from tests.support.store_contract import put


def finish(store: Any, when: float, outcome: str, status: int, **fields: Any) -> list[str]:
    """Claim everything due at `when` and finish it with `outcome`; the ids."""
    claims = store.claim("w1", 100, when, LEASE)
    store.finish(
        [
            AttemptResult(c.delivery_id, c.attempt, when, 5.0, outcome, status=status, **fields)  # type: ignore[arg-type]
            for c in claims
        ],
        "w1",
        when,
    )
    return [c.delivery_id for c in claims]


def test_retry_now_makes_a_backing_off_delivery_due_at_once(each_store: Any) -> None:
    store = each_store
    commit(store, put("acme", "a"))
    store.add_event(event("evt-1"), NOW)
    (waiting,) = finish(store, NOW, "retry", 503, next_due=NOW + 7200)
    assert store.claim("w1", 10, NOW + 60, LEASE) == []

    assert store.retry_now([waiting, "msg_nope"], NOW + 60) == [waiting]

    (record,) = store.deliveries()
    assert (record.status, record.due_at, record.attempts) == ("pending", NOW + 60, 1)
    (claim,) = store.claim("w1", 10, NOW + 60, LEASE)
    assert (claim.delivery_id, claim.attempt, claim.retry_number) == (waiting, 2, 2)


def test_retry_now_leaves_finished_held_and_in_flight_ones(each_store: Any) -> None:
    store = each_store
    commit(store, put("acme", "a"), put("acme", "b"), put("acme", "c"))
    store.pause("acme", "c", "HTTP 410", actor="dispatcher")
    store.add_event(event("evt-1"), NOW)
    ids = {r.webhook: r.id for r in store.deliveries()}
    claims = store.claim("w1", 10, NOW, LEASE)
    a = next(c for c in claims if c.webhook == "a")
    store.finish([AttemptResult(a.delivery_id, 1, NOW, 5.0, "delivered", 200)], "w1", NOW)

    assert store.retry_now([ids["a"], ids["b"], ids["c"]], NOW) == []
    assert {r.webhook: r.status for r in store.deliveries()} == {
        "a": "delivered",
        "b": "in_flight",
        "c": "held",
    }


def test_deliveries_filter_by_last_change_and_status_code(each_store: Any) -> None:
    store = each_store
    commit(store, put("acme", "a"), put("globex", "a"))
    store.add_event(event("e1"), NOW)
    (old,) = finish(store, NOW, "failed", 404)
    store.add_event(event("e2"), NOW + 100)
    (new,) = finish(store, NOW + 100, "failed", 500)
    store.add_event(event("e3", "globex"), NOW + 200)

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in store.deliveries(organization="acme", **filters)]

    assert ids(since=NOW + 50) == [new]
    assert ids(until=NOW + 50) == [old]
    assert ids(since=NOW, until=NOW + 100) == [old]  # until is exclusive
    assert ids(status_code=404) == [old]
    assert ids(status_code=500, since=NOW + 100) == [new]
    assert ids(status_code=200) == []
    # a token's scope and a filter together: another organization's stays out
    scoped = store.deliveries(organizations=["acme"], since=NOW + 150)
    assert scoped == []


def test_an_attempt_keeps_the_request_it_sent(each_store: Any) -> None:
    store = each_store
    commit(store, put("acme", "a"))
    store.add_event(event("evt-1"), NOW)
    (claim,) = store.claim("w1", 10, NOW, LEASE)
    sent = SentRequest(
        "POST",
        "https://hooks.example.com/a?key=${env:ACME_KEY}",
        {"Authorization": "****", "webhook-id": claim.delivery_id},
        '{"text": "caf\u00e9 \\u0000 ok"}',
    )
    store.finish(
        [
            AttemptResult(
                claim.delivery_id, 1, NOW, 5.0, "retry", 503, next_due=NOW + 5, request=sent
            )
        ],
        "w1",
        NOW,
    )
    (again,) = store.claim("w1", 10, NOW + 5, LEASE)
    store.finish([AttemptResult(again.delivery_id, 2, NOW + 5, 5.0, "delivered", 200)], "w1", NOW)

    _, attempts = store.delivery(claim.delivery_id)
    assert [a.request for a in attempts] == [sent, None]
    assert attempts[0].as_json()["request"] == {
        "method": "POST",
        "url": "https://hooks.example.com/a?key=${env:ACME_KEY}",
        "headers": {"Authorization": "****", "webhook-id": claim.delivery_id},
        "body": '{"text": "caf\u00e9 \\u0000 ok"}',
    }
