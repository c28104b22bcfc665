"""POST /v1/events/batch: several events in one request, stored together or not at all.

Called in-process, as in test_api.py, whose helpers this reuses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.events import MAX_BATCH_BYTES, MAX_BATCH_EVENTS
from reconciler.store.queue import EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.integration.test_api import EVENT, START, Api, call, problems
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

BATCH = "/v1/events/batch"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    made = SqliteStore(tmp_path / "state.db")
    put_specs(made, [spec("a"), spec("b"), spec("a", "globex")])
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def events(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"events": [{**EVENT, **change} for change in changes]}


def post(store: SqliteStore, clock: FakeClock, body: Any, **kwargs: Any) -> httpx.Response:
    async def scenario(api: Api) -> httpx.Response:
        return await api.http.post(BATCH, json=body, **kwargs)

    return call(store, clock, scenario)


def stored(store: SqliteStore) -> list[tuple[str, str]]:
    return sorted((d.event_id, d.webhook) for d in store.deliveries(limit=10_000))


def test_each_event_of_a_batch_is_answered_in_order_and_queued(
    store: SqliteStore, clock: FakeClock
) -> None:
    body = events({"id": "e1"}, {"id": "g1", "organization": "globex"}, {"organization": "initech"})
    response = post(store, clock, body)

    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert results[:2] == [
        {"event_id": "e1", "organization": "acme", "deliveries": 2, "duplicate": False},
        {"event_id": "g1", "organization": "globex", "deliveries": 1, "duplicate": False},
    ]
    assert results[2]["event_id"].startswith("evt_")  # no id given: one is made
    assert (results[2]["deliveries"], results[2]["duplicate"]) == (0, False)
    assert stored(store) == [("e1", "a"), ("e1", "b"), ("g1", "a")]
    assert store.event(EventKey("initech", results[2]["event_id"])) is not None  # nobody listens


def test_an_id_seen_before_or_earlier_in_the_batch_is_queued_once(
    store: SqliteStore, clock: FakeClock
) -> None:
    async def scenario(api: Api) -> list[httpx.Response]:
        first = await api.http.post(BATCH, json=events({"id": "e1"}))
        again = await api.http.post(
            BATCH, json=events({"id": "e2"}, {"id": "e1", "name": "changed"}, {"id": "e2"})
        )
        return [first, again]

    first, again = call(store, clock, scenario)
    acme = {"organization": "acme", "deliveries": 2}
    assert first.json()["results"] == [{"event_id": "e1", **acme, "duplicate": False}]
    assert again.status_code == 202
    assert again.json()["results"] == [
        {"event_id": "e2", **acme, "duplicate": False},
        {"event_id": "e1", **acme, "duplicate": True},
        {"event_id": "e2", **acme, "duplicate": True},
    ]
    assert stored(store) == [("e1", "a"), ("e1", "b"), ("e2", "a"), ("e2", "b")]
    event = store.event(EventKey("acme", "e1"))
    assert event is not None and event.name == EVENT["name"]  # the first one stays


def test_one_id_in_several_organizations_of_a_batch_is_one_event_in_each(
    store: SqliteStore, clock: FakeClock
) -> None:
    async def scenario(api: Api) -> list[httpx.Response]:
        before = await api.post_event(id="x", organization="globex")
        batch = await api.http.post(
            BATCH,
            json=events(
                {"id": "x"},
                {"id": "x", "organization": "globex"},  # globex's, sent before
                {"id": "x", "organization": "initech"},
                {"id": "x", "name": "again"},  # acme's, earlier in this batch
            ),
        )
        return [before, batch]

    before, batch = call(store, clock, scenario)
    assert before.json()["duplicate"] is False
    assert batch.status_code == 202, batch.text
    assert [
        (r["event_id"], r["organization"], r["deliveries"], r["duplicate"])
        for r in batch.json()["results"]
    ] == [
        ("x", "acme", 2, False),
        ("x", "globex", 1, True),
        ("x", "initech", 0, False),
        ("x", "acme", 2, True),
    ]
    assert sorted((d.organization, d.event_id, d.webhook) for d in store.deliveries()) == [
        ("acme", "x", "a"),
        ("acme", "x", "b"),
        ("globex", "x", "a"),
    ]
    assert store.event(EventKey("initech", "x")) is not None


def test_one_invalid_event_refuses_the_whole_batch_naming_it(
    store: SqliteStore, clock: FakeClock
) -> None:
    body = events({"id": "e1"}, {"id": "e2", "time": "yesterday"}, {"id": "e3", "type": "nope"})
    response = post(store, clock, body)

    found = {p["field"] for p in problems(response)}
    assert found == {"events.1.time", "events.2.type"}
    assert stored(store) == []
    assert store.event(EventKey("acme", "e1")) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({"events": [EVENT] * (MAX_BATCH_EVENTS + 1)}, "events"),
        ({}, "events"),
        ({"events": [EVENT], "more": 1}, "more"),
        ([EVENT], "body"),
        (EVENT, "events"),
    ],
    ids=["empty", "too many", "no events", "unknown field", "a bare list", "one event"],
)
def test_a_body_that_is_not_a_batch_is_422(
    store: SqliteStore, clock: FakeClock, body: Any, field: str
) -> None:
    response = post(store, clock, body)
    assert field in {p["field"] for p in problems(response)}
    assert stored(store) == []


def test_an_event_outside_the_tokens_organizations_refuses_the_batch(
    store: SqliteStore, clock: FakeClock
) -> None:
    headers = bearer(store, "acme", role="publisher")
    body = events({"id": "e1"}, {"id": "g1", "organization": "globex"})
    response = post(store, clock, body, headers=headers)

    assert response.status_code == 403
    assert response.json()["error"] == (
        "events.1: organization globex is out of this token's scope"
    )
    assert stored(store) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Authorization": ""}, 401), ("auditor", 403)],
    ids=["no token", "an auditor"],
)
def test_only_a_token_that_may_send_events_sends_a_batch(
    store: SqliteStore, clock: FakeClock, headers: Any, status: int
) -> None:
    if headers == "auditor":
        headers = bearer(store, "acme", role="auditor")
    response = post(store, clock, events({"id": "e1"}), headers=headers)
    assert response.status_code == status
    assert stored(store) == []


def test_a_batch_may_be_larger_than_one_event_may_but_not_unbounded(
    store: SqliteStore, clock: FakeClock
) -> None:
    long = "x" * 9_000
    fits = events(*({"id": f"e{n}", "description": long} for n in range(100)))
    assert 64 * 1024 < len(json.dumps(fits)) < MAX_BATCH_BYTES
    assert post(store, clock, fits).status_code == 202
    assert len(stored(store)) == 200

    over = events(*({"id": f"f{n}", "description": long} for n in range(120)))
    assert len(json.dumps(over)) > MAX_BATCH_BYTES
    response = post(store, clock, over)
    assert response.status_code == 413
    assert response.json()["error"] == f"request body over {MAX_BATCH_BYTES} bytes"
    assert store.event(EventKey("acme", "f0")) is None


def test_a_failing_batch_does_not_fail_what_was_committed_with_it(
    store: SqliteStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches and single events arriving together share one transaction; if it
    fails, each is stored on its own, and only the failing one hears of it."""
    for name in ("add_events", "add_events_and_claim"):  # shared, and one by one
        original = getattr(store, name)

        def refusing(records: list[EventRecord], *args: Any, original: Any = original) -> Any:
            if any(record.name == "poison" for record in records):
                raise RuntimeError("the store refused")
            return original(records, *args)

        monkeypatch.setattr(store, name, refusing)

    async def scenario(api: Api) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                api.http.post(BATCH, json=events({"id": "b1"}, {"id": "b2"})),
                api.http.post(BATCH, json=events({"id": "p1"}, {"id": "p2", "name": "poison"})),
                api.post_event(id="s1"),
            )
        )

    fine, poisoned, single = call(store, clock, scenario)
    assert (fine.status_code, poisoned.status_code, single.status_code) == (202, 500, 202)
    assert [r["event_id"] for r in fine.json()["results"]] == ["b1", "b2"]
    assert single.json()["event_id"] == "s1"
    assert {event for event, _ in stored(store)} == {"b1", "b2", "s1"}


def test_a_batchs_events_are_delivered_and_counted(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url="https://hooks.example.com/a", is_reusable=True)
    httpx_mock.add_response(url="https://hooks.example.com/b", is_reusable=True)

    async def scenario(api: Api) -> httpx.Response:
        body = events({"id": "e1"}, {"id": "e2"}, {"id": "g1", "organization": "globex"})
        assert (await api.http.post(BATCH, json=body)).status_code == 202
        assert (await api.http.post(BATCH, json=events({"id": "e1"}))).status_code == 202
        assert await api.deliver() == 5
        return await api.http.get("/metrics")

    text = call(store, clock, scenario).text
    assert {d.status for d in store.deliveries()} == {"delivered"}
    assert len(httpx_mock.get_requests()) == 5
    assert (
        'reconciler_events_received_total{organization="acme",event="new_rule_violation"} 2' in text
    )
    assert (
        'reconciler_events_received_total{organization="globex",event="new_rule_violation"} 1'
        in text
    )
