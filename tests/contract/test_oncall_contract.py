"""Retry now and the deliveries' filters, on both backends."""

from __future__ import annotations

from typing import Any

from reconciler.store.queue import AttemptResult, SentRequest
from reconciler.store.retention import Cutoffs
from tests.contract.test_queue_contract import LEASE, NOW, commit, event
from tests.support.helpers_state import FakeClock
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


def test_retention_drops_old_bodies_and_keeps_the_rest(each_store: Any) -> None:
    store = each_store
    commit(store, put("acme", "a"))
    sent = SentRequest("POST", "https://hooks.example.com/a", {"X": "1"}, '{"k": "body"}')
    for number, when in enumerate((NOW, NOW + 100, NOW + 200)):
        store.add_event(event(f"evt-{number}"), when)
        (claim,) = store.claim("w1", 10, when, LEASE)
        done = AttemptResult(
            claim.delivery_id, 1, when, 5.0, "delivered", 200, response_excerpt="ok", request=sent
        )
        store.finish([done], "w1", when)

    # bodies before NOW + 150 go, in batches of 1; the deliveries stay (kept for ever)
    store.prune(Cutoffs(-1.0, bodies=NOW + 150), FakeClock(NOW + 300), "me", batch=1)

    kept = {}
    for record in store.deliveries():
        _, (attempt,) = store.delivery(record.id)
        kept[record.event_id] = attempt
    assert len(kept) == 3
    for old in ("evt-0", "evt-1"):
        request = kept[old].request
        assert request is not None and request.body is None
        assert (request.method, request.url, request.headers) == ("POST", sent.url, {"X": "1"})
        assert kept[old].response_excerpt == ""
    assert kept["evt-2"].request == sent
    assert kept["evt-2"].response_excerpt == "ok"

    # the next run goes on from there: a later cutoff takes the last one
    store.prune(Cutoffs(-1.0, bodies=NOW + 250), FakeClock(NOW + 400), "me")
    _, (last,) = store.delivery(next(r.id for r in store.deliveries() if r.event_id == "evt-2"))
    assert last.request is not None and last.request.body is None
