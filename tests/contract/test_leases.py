"""Leases as the worker holds them, and intake's deadline, on SQLite and PostgreSQL.

A claim counts its lease from before the call that took it: one that comes back
late (a stalled link, a slow commit) is put back unsent, never sent under a lease
another dispatcher may hold by then. Held leases are renewed (the state checks each
is still the worker's); one another dispatcher took is lost and not sent from here.
Dead dispatchers of this host are noticed while running. Intake answers within its
deadline: 202, or 503 "outcome unknown" in the shape of every refusal.

Time is a FakeClock the tests move; a call is made "late" by moving the clock while
it runs. Nothing is sent for real: httpx's transport is mocked (pytest-httpx).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.dispatch import failures
from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.worker import SEND_MARGIN, Database, Worker, WorkerSettings
from reconciler.store.queue import LEASE_MARGIN, Claim, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

T = TypeVar("T")
START = 1_700_000_000.0
TIMEOUT = 2.0  # the webhook's: its lease is TIMEOUT + LEASE_MARGIN
URL = "https://hooks.example.com/a"
OWNER = "test-host:1:worker"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        made: Any = SqliteStore(tmp_path / "state.db")
    else:
        from reconciler.store.postgres import PostgresStore

        made = PostgresStore(request.getfixturevalue("postgres_url"))
    try:
        put_specs(made, [spec("a", url=URL, timeout=f"{TIMEOUT:g}s")])
        yield made
    finally:
        made.close()


def event(event_id: str = "evt-1") -> EventRecord:
    return EventRecord(
        event_id, "new_rule_violation", "acme", "no-public-s3", "", "2026-11-29T21:22:42Z"
    )


class Late:
    """The store, with `claim` (and the intake's claim) taking `delay` seconds of the
    clock, as a stalled link or a slow commit would: the rows are leased by the
    state, the answer comes back late."""

    def __init__(self, store: Any, clock: FakeClock, delay: float) -> None:
        self._store = store
        self._clock = clock
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim(self, *args: Any, **kwargs: Any) -> list[Claim]:
        claims: list[Claim] = self._store.claim(*args, **kwargs)
        self._clock.sleep(self.delay)
        return claims

    def add_events_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        found = self._store.add_events_and_claim(*args, **kwargs)
        self._clock.sleep(self.delay)
        return found


def with_worker(store: Any, clock: FakeClock, scenario: Callable[[Worker], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(store, clock)
        try:
            async with Sender(httpx.AsyncHTTPTransport()) as sender:
                worker = Worker(db, sender, env={}, clock=clock, owner=OWNER)
                return await scenario(worker)
        finally:
            db.close()

    return asyncio.run(go())


def lease() -> float:
    return TIMEOUT + LEASE_MARGIN


def test_a_claim_that_came_back_too_late_to_send_is_put_back_unsent(
    store: Any, httpx_mock: HTTPXMock
) -> None:
    clock = FakeClock(START)
    store.add_event(event(), START)
    # The claim took so long that less than the request's timeout of its lease is left.
    late = Late(store, clock, lease() - TIMEOUT - SEND_MARGIN + 0.5)

    assert with_worker(late, clock, lambda worker: worker.run_once()) == 1

    assert httpx_mock.get_requests() == []
    ((record, attempts),) = [store.delivery(r.id) for r in store.deliveries()]
    assert (record.status, record.attempts, attempts) == ("pending", 0, [])
    assert record.due_at == clock.now  # due again at once, for whoever claims it

    # Claimed in time, it is sent, under the same id.
    httpx_mock.add_response(url=URL, status_code=204)
    late.delay = lease() - TIMEOUT - SEND_MARGIN - 0.5
    assert with_worker(late, clock, lambda worker: worker.run_once()) == 1
    (request,) = httpx_mock.get_requests()
    assert request.headers["webhook-id"] == record.id
    assert store.delivery(record.id)[0].status == "delivered"


def test_deliveries_intake_hands_over_late_are_not_sent(store: Any, httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(START)
    late = Late(store, clock, lease())  # the intake's commit came back after the lease

    async def scenario(worker: Worker) -> list[Any]:
        since = clock()
        _, handed = await worker.db.run(
            late.add_events_and_claim, [event()], since, worker.owner, 10, worker.lease()
        )
        worker.hand(handed, since)
        return [await worker._deliver(claim) for claim in handed]

    (result,) = with_worker(store, clock, scenario)
    assert (result.outcome, result.sent) == ("deferred", False)
    assert httpx_mock.get_requests() == []


def test_held_leases_are_renewed_and_one_taken_over_is_lost(store: Any, tmp_path: Path) -> None:
    clock = FakeClock(START)
    store.add_event(event(), START)
    rival = store  # another dispatcher sharing the state (by owner)

    async def scenario(worker: Worker) -> None:
        since = clock()
        (claim,) = await worker.db.run(store.claim, worker.owner, 10, since, worker.lease())
        worker.hand([claim], since)
        assert claim.lease == lease()
        assert await worker.renew_leases() == 0  # not a heartbeat old yet
        clock.sleep(worker.settings.heartbeat)
        assert await worker.renew_leases() == 1
        # past the first lease, within the renewed one: still the worker's to send
        clock.sleep(lease() - worker.settings.heartbeat + 0.5)
        assert rival.claim("rival", 10, clock(), worker.lease()) == []
        assert worker.may_send(claim, worker.settings.heartbeat - SEND_MARGIN - 1, clock())

        # The state cannot be reached: no renewal; the lease runs out and a rival
        # takes it over. The worker's next renewal finds it lost: not sent from here.
        clock.sleep(lease())
        assert [c.delivery_id for c in rival.claim("rival", 10, clock(), 1.0)] == [
            claim.delivery_id
        ]
        assert not worker.may_send(claim, TIMEOUT, clock())  # counted out already
        assert await worker.renew_leases() == 0
        clock.sleep(-lease())  # even were the clock to say otherwise, it stays lost
        assert not worker.may_send(claim, TIMEOUT, clock())

    with_worker(store, clock, scenario)


def test_a_dead_dispatcher_of_this_host_is_noticed_while_running(store: Any) -> None:
    clock = FakeClock(START)
    store.add_event(event(), START)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = f"{socket.gethostname()}:{int(gone.stdout)}:deadbeef"
    (claim,) = store.claim(dead, 10, START, 1.0)

    async def scenario(worker: Worker) -> int:
        return await worker.reap_dead()

    assert with_worker(store, clock, scenario) == 1
    (record,) = store.deliveries()
    assert (record.id, record.status, record.due_at) == (claim.delivery_id, "pending", START)


def test_the_running_loop_looks_for_dead_dispatchers_at_every_heartbeat(store: Any) -> None:
    """run_forever runs the heartbeat, not only a start: a short one here, on the real
    clock."""
    clock = FakeClock(START)
    calls: list[str] = []

    class Counted:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def release_dead(self, *args: Any) -> int:
            calls.append("release_dead")
            return int(store.release_dead(*args))

    async def scenario(worker: Worker) -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(worker.run_forever(stop.is_set, asyncio.Event()))
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        stop.set()
        worker.notify()
        await asyncio.wait_for(loop, 30)

    async def go() -> None:
        db = Database(Counted(), clock)
        try:
            async with Sender(httpx.AsyncHTTPTransport()) as sender:
                settings = WorkerSettings(heartbeat=0.01)
                worker = Worker(db, sender, env={}, clock=clock, owner=OWNER, settings=settings)
                await scenario(worker)
        finally:
            db.close()

    asyncio.run(go())
    assert calls[:2] == ["release_dead", "release_dead"]


# -- intake's deadline ----------------------------------------------------------------


class Stuck:
    """The store, with intake's writes held until `gate` opens: a wedged database."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add_events_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait(30)
        return self._store.add_events_and_claim(*args, **kwargs)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "route"])
def test_intake_answers_outcome_unknown_at_its_deadline_and_the_retry_queues_once(
    store: Any, fast: bool
) -> None:
    headers = bearer(store, "acme", role="publisher")
    body = {
        "type": "new_rule_violation",
        "organization": "acme",
        "name": "no-public-s3",
        "id": "evt-1",
    }
    stuck = Stuck(store)

    async def go() -> list[httpx.Response]:
        sender = Sender(httpx.AsyncHTTPTransport())
        dispatcher = Dispatcher(
            stuck,
            sender,
            clock=FakeClock(START),
            env={},
            intake_deadline=0.2,
        )
        app = create_app(dispatcher)
        if not fast:
            app.intake = None
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                first = await http.post("/v1/events", json=body, headers=headers)
                stuck.gate.set()  # the state answers again, and stores what it was given
                while dispatcher._intake or (
                    dispatcher._flushing is not None and not dispatcher._flushing.done()
                ):
                    await asyncio.sleep(0.01)
                again = await http.post("/v1/events", json=body, headers=headers)
                return [first, again]
        finally:
            stuck.gate.set()
            await sender.aclose()
            dispatcher.db.close()

    first, again = asyncio.run(go())
    assert first.status_code == 503, first.text
    assert first.headers["retry-after"] == str(failures.RETRY_AFTER)
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"error": failures.unknown(0.2), "problems": []}
    assert "retry with the same event id" in first.json()["error"]
    # The first request was stored after all: the retry is a duplicate, queued once.
    assert again.status_code == 202, again.text
    assert again.json() == {
        "event_id": "evt-1",
        "organization": "acme",
        "deliveries": 1,
        "duplicate": True,
    }
    assert len(store.deliveries()) == 1
