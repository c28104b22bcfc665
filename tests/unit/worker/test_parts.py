"""Worker: its parts: the database thread, owner ids, intake handing deliveries straight to
a worker."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pytest_httpx import HTTPXMock

from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.worker import Database, Worker, WorkerSettings, owner_alive, owner_id
from reconciler.events import EventIn
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    SUBPROCESS_TIMEOUT,
    FakeClock,
    spec,
)
from tests.unit.worker.helpers import (
    T,
    live,
    queue,
    run,
    shown,
)

# -- the worker's parts ------------------------------------------------------------------


def test_store_calls_run_on_the_database_thread(store: SqliteStore) -> None:
    async def go() -> int:
        db = Database(store)
        try:
            return await db.run(threading.get_ident)
        finally:
            db.close()

    assert asyncio.run(go()) != threading.get_ident()


def test_owner_ids_name_this_host_and_process() -> None:
    owner = owner_id()
    host, pid, suffix = owner.split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert suffix
    assert owner != owner_id()
    assert owner_alive(owner)


def test_an_owner_on_another_host_is_presumed_alive() -> None:
    assert owner_alive("build-7.example:1:abc")


def test_an_owner_whose_process_is_gone_is_dead() -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert not owner_alive(f"{socket.gethostname()}:{int(gone.stdout)}:abc")


class Counting:
    """The real store, with each call counted by name."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if not callable(real):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return real(*args, **kwargs)

        return call


def _event_in(event_id: str) -> Any:

    return EventIn.model_validate(
        {"type": "new_rule_violation", "organization": "acme", "name": "n", "id": event_id}
    )


def _dispatching(
    store: SqliteStore, clock: FakeClock, scenario: Callable[[Dispatcher, Counting], Awaitable[T]]
) -> T:
    async def go() -> T:
        counting = Counting(store)
        sender = Sender(httpx.AsyncHTTPTransport())
        settings = WorkerSettings(poll_interval=30.0, concurrency=3, batch=3)
        dispatcher = Dispatcher(counting, sender, clock=clock, env={}, settings=settings)  # type: ignore[arg-type]
        dispatcher.start()
        try:
            return await asyncio.wait_for(scenario(dispatcher, counting), timeout=30)
        finally:
            await dispatcher.stop(grace=30)

    return asyncio.run(go())


async def _until(done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.sleep(0.001)


def test_an_idle_worker_is_handed_new_deliveries_by_intake_without_a_claim(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"), spec("b"))
    httpx_mock.add_response(url="https://hooks.example.com/a")
    httpx_mock.add_response(url="https://hooks.example.com/b")

    async def scenario(dispatcher: Dispatcher, counting: Counting) -> dict[str, int]:
        await _until(lambda: dispatcher.worker._taking)  # its first claim found nothing
        claims_before = counting.calls.get("claim", 0)
        result = await dispatcher.accept(_event_in("evt-1"))
        assert result.deliveries == 2
        await _until(lambda: {r.status for r in store.deliveries()} == {"delivered"})
        return {"claims": counting.calls.get("claim", 0) - claims_before}

    calls = _dispatching(store, clock, scenario)
    assert calls == {"claims": 0}  # sent as intake stored them
    assert sorted(r.url.path for r in httpx_mock.get_requests()) == ["/a", "/b"]
    for record in store.deliveries():
        (attempt,) = shown(store, record.id)[1]
        assert (attempt.number, attempt.outcome) == (1, "delivered")


def test_intake_hands_over_no_more_than_the_worker_has_room_for_and_queues_the_rest(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, *(spec(name) for name in "abcde"))
    for name in "abcde":
        httpx_mock.add_response(url=f"https://hooks.example.com/{name}")

    async def scenario(dispatcher: Dispatcher, counting: Counting) -> list[str]:
        await _until(lambda: dispatcher.worker._taking)
        room = dispatcher.worker.reserve()
        dispatcher.worker.unreserve(room)
        assert room == 3  # its concurrency
        await dispatcher.accept(_event_in("evt-1"))
        await _until(lambda: {r.status for r in store.deliveries()} == {"delivered"})
        return sorted(r.url.path for r in httpx_mock.get_requests())

    sent = _dispatching(store, clock, scenario)
    assert sent == ["/a", "/b", "/c", "/d", "/e"]  # 3 handed over, 2 claimed after


def test_a_worker_with_deliveries_due_in_the_queue_is_handed_nothing(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    queue(store, clock, "first")
    queue(store, clock, "second")
    room_while_sending: list[int] = []
    holder: list[Worker] = []

    def answer(request: httpx.Request) -> httpx.Response:
        worker = holder[0]
        room_while_sending.append(worker.reserve())
        worker.unreserve(room_while_sending[-1])
        return httpx.Response(200)

    httpx_mock.add_callback(answer, url="https://hooks.example.com/a", is_reusable=True)

    async def scenario(worker: Worker) -> int:
        holder.append(worker)
        assert worker.reserve() == 0  # not running
        done = lambda: {r.status for r in store.deliveries()} == {"delivered"}  # noqa: E731
        await asyncio.wait_for(worker.run_forever(done, asyncio.Event()), timeout=30)
        return worker.reserve()

    # One claimed at a time: the first claim takes one of two due, so the queue is
    # not drained and intake gets no room, though two of three slots are free.
    settings = WorkerSettings(concurrency=3, batch=1, poll_interval=0.001)
    assert run(store, scenario, clock=clock, settings=settings) == 0  # stopped
    assert room_while_sending[0] == 0
