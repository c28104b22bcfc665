"""Worker: rate limits and Retry-After, alone and across two dispatchers sharing a state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.dispatch.sender import Sender
from reconciler.dispatch.worker import Database, Worker, WorkerSettings
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    spec,
)
from tests.unit.worker.helpers import (
    T,
    live,
    queue,
    run,
)


@pytest.mark.httpx_mock(can_send_already_matched_responses=True)
def test_rate_limit_spaces_requests_to_one_webhook(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # `rate_limit` ("at most this many requests to this webhook", e.g. 1/s for
    # Slack): three queued events are spaced out, none dropped.
    live(store, spec("a", rate_limit="1/s"))
    for n in range(3):
        queue(store, clock, f"evt-{n}")
    httpx_mock.add_response()

    async def scenario(worker: Worker) -> None:
        for _ in range(3):
            await worker.run_once()  # the clock does not move
        assert len(httpx_mock.get_requests()) <= 1
        for _ in range(20):
            clock.now += 1
            await worker.run_once()

    run(store, scenario, clock=clock)
    assert {r.status for r in store.deliveries()} == {"delivered"}
    assert len(httpx_mock.get_requests()) == 3


def test_a_429_with_retry_after_holds_every_delivery_to_that_webhook(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"), spec("b"))
    queue(store, clock, "evt-1")
    httpx_mock.add_response(
        url="https://hooks.example.com/a", status_code=429, headers={"Retry-After": "120"}
    )
    httpx_mock.add_response(url="https://hooks.example.com/b", is_reusable=True)
    httpx_mock.add_response(url="https://hooks.example.com/a", is_reusable=True)

    async def scenario(worker: Worker) -> None:
        await worker.run_once()  # a: 429, hold 120 s; b: delivered
        queue(store, clock, "evt-2")
        clock.now += 60
        await worker.run_once()  # a is held: evt-2's delivery to a is put off
        sent_to_a = [r for r in httpx_mock.get_requests() if r.url.path == "/a"]
        assert len(sent_to_a) == 1
        held = [r for r in store.deliveries(webhook="a") if r.event_id == "evt-2"]
        assert held[0].status == "pending"
        assert held[0].attempts == 0  # putting off is not an attempt
        assert held[0].due_at is not None and held[0].due_at >= START_OF_HOLD + 120
        clock.now += 61
        while await worker.run_once():
            clock.now += 1

    START_OF_HOLD = clock.now
    run(store, scenario, clock=clock)
    assert {r.status for r in store.deliveries()} == {"delivered"}
    assert len([r for r in httpx_mock.get_requests() if r.url.path == "/a"]) == 3


def run_two(
    store: SqliteStore,
    path: Path,
    scenario: Callable[[Worker, Worker], Awaitable[T]],
    *,
    clock: FakeClock,
    settings: WorkerSettings | None = None,
) -> T:
    """Run `scenario` with two workers, each with its own connection to the state and
    its own database thread, as two dispatcher processes (or machines) have."""

    async def go() -> T:
        other = SqliteStore(path)
        dbs = [Database(store), Database(other)]
        try:
            async with Sender(httpx.AsyncHTTPTransport()) as sender:
                one, two = (
                    Worker(
                        db,
                        sender,
                        env={},
                        clock=clock,
                        rng=random.Random(0),
                        owner=f"test-host:{n}:worker",
                        settings=settings,
                    )
                    for n, db in enumerate(dbs)
                )
                return await scenario(one, two)
        finally:
            for db in dbs:
                db.close()
            other.close()

    return asyncio.run(go())


def test_two_dispatchers_together_keep_a_webhook_to_its_rate(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    # Each claims a few at a time, in turn: together they send one a second, as the
    # webhook's rate_limit says, however the deliveries spread between them.
    live(store, spec("a", rate_limit="1/s"))
    for n in range(6):
        queue(store, clock, f"evt-{n}")
    sent_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now)
        return httpx.Response(200)

    httpx_mock.add_callback(answer, is_reusable=True)

    async def scenario(one: Worker, two: Worker) -> None:
        for turn in range(40):
            for worker in (one, two) if turn % 2 else (two, one):
                await worker.run_once()
            clock.now += 0.25

    run_two(store, tmp_path / "state.db", scenario, clock=clock, settings=WorkerSettings(batch=2))
    assert {r.status for r in store.deliveries()} == {"delivered"}
    assert len(sent_at) == 6
    for start in sent_at:
        assert len([t for t in sent_at if start <= t < start + 1]) == 1, sent_at


def test_a_retry_after_one_dispatcher_got_holds_the_other(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    # Webhook a has no rate limit: the other dispatcher learns of the hold from the
    # state once its copy of the holds is older than a second of its clock.
    live(store, spec("a"), spec("b", event="reserved_instance_surplus"))
    httpx_mock.add_response(url="https://hooks.example.com/b", is_reusable=True)
    httpx_mock.add_response(
        url="https://hooks.example.com/a", status_code=429, headers={"Retry-After": "120"}
    )
    httpx_mock.add_response(url="https://hooks.example.com/a", is_reusable=True)
    start = clock.now

    def sent_to_a() -> int:
        return len([r for r in httpx_mock.get_requests() if r.url.path == "/a"])

    async def scenario(one: Worker, two: Worker) -> None:
        queue(store, clock, "evt-0", type="reserved_instance_surplus")
        assert await two.run_once() == 1  # b: delivered; two has read the holds (none)
        queue(store, clock, "evt-1")
        assert await one.run_once() == 1  # a: 429, held for 120 s
        assert sent_to_a() == 1
        queue(store, clock, "evt-2")
        clock.now += 2
        assert await two.run_once() == 1  # held: put off, not sent
        assert sent_to_a() == 1
        (held,) = [r for r in store.deliveries(webhook="a") if r.event_id == "evt-2"]
        assert (held.status, held.attempts) == ("pending", 0)
        assert held.due_at == start + 120
        clock.now = start + 121
        while await two.run_once():
            clock.now += 1

    run_two(store, tmp_path / "state.db", scenario, clock=clock)
    assert {r.status for r in store.deliveries()} == {"delivered"}
    assert sent_to_a() == 3


def test_a_worker_looks_at_the_queue_again_when_a_slot_it_put_off_to_comes(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # Not at its next poll: deliveries go at their slots, not in a bunch a poll later.
    live(store, spec("a", rate_limit="1/s"))
    queue(store, clock, "evt-1")
    queue(store, clock, "evt-2")
    httpx_mock.add_response()

    async def scenario(worker: Worker) -> list[float]:
        await worker.run_once()  # one sent, one put off to its slot a second from now
        waits = [worker._poll_wait()]
        clock.now += 0.5
        waits.append(worker._poll_wait())
        clock.now += 0.6
        waits.append(worker._poll_wait())  # the slot has come: back to the poll
        return waits

    waits = run(store, scenario, clock=clock, settings=WorkerSettings(poll_interval=5.0))
    assert waits == pytest.approx([1.001, 0.501, 5.0])


def test_a_delivery_waiting_for_a_free_slot_is_not_sent_twice(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    # run_once claims no more than it can send at once: a delivery claimed and left
    # waiting for a slot would outlive its lease, and another dispatcher would send
    # it too. Here every request takes a whole (fake) minute, and a rival dispatcher
    # on the same state claims what it can meanwhile and gives it back at once.
    live(store, *(spec(name, timeout="60s") for name in ("a", "b", "c")))
    queue(store, clock)
    rival = SqliteStore(tmp_path / "state.db")

    def slow_answer(request: httpx.Request) -> httpx.Response:
        clock.now += 60
        rival.claim("rival", 10, clock.now, 90)
        rival.release("rival", clock.now)
        return httpx.Response(200)

    httpx_mock.add_callback(slow_answer, is_reusable=True)

    async def scenario(worker: Worker) -> None:
        while await worker.run_once():
            pass

    try:
        run(store, scenario, clock=clock, settings=WorkerSettings(batch=3, concurrency=1))
    finally:
        rival.close()
    assert {r.status for r in store.deliveries()} == {"delivered"}
    assert len(httpx_mock.get_requests()) == 3
