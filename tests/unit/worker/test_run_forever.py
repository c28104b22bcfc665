"""Worker: replays, and the delivery loop that outlives failing deliveries and a failing
store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.worker import Worker, WorkerSettings
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    spec,
)
from tests.unit.worker.helpers import (
    drain,
    live,
    once,
    queue,
    run,
    shown,
)


def test_a_replayed_delivery_gets_its_retries_again(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: replay keeps the attempt count, so a delivery that had exhausted its
    # retries gets a single attempt after a replay: one 503 from a receiver that
    # is just coming back fails it for good ("retries exhausted after 3
    # attempts"). `deliveries replay --failed` after an outage should retry as
    # a first delivery does.
    live(store, spec("a", retry={"schedule": ["1s"], "jitter": 0}))
    delivery = queue(store, clock)
    for status in (500, 500, 503, 200):
        httpx_mock.add_response(status_code=status)
    drain(store, clock)
    assert shown(store, delivery)[0].status == "failed"

    assert store.replay([delivery], clock()) == [delivery]
    once(store, clock)  # 503: the receiver is still warming up

    record, _ = shown(store, delivery)
    assert record.status == "pending", record.last_error
    drain(store, clock)
    assert shown(store, delivery)[0].status == "delivered"


def _stop_after_first_claim() -> Callable[[], bool]:
    answers = iter([False])
    return lambda: next(answers, True)


def test_run_forever_delivers_what_is_due_and_records_each_outcome(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("ok"), spec("busy"), spec("missing"))
    queue(store, clock)
    httpx_mock.add_response(status_code=200, url="https://hooks.example.com/ok")
    httpx_mock.add_response(status_code=503, url="https://hooks.example.com/busy")
    httpx_mock.add_response(status_code=404, url="https://hooks.example.com/missing")

    async def scenario(worker: Worker) -> None:
        await asyncio.wait_for(
            worker.run_forever(_stop_after_first_claim(), asyncio.Event()), timeout=30
        )

    run(store, scenario, clock=clock)
    statuses = {r.webhook: r.status for r in store.deliveries()}
    assert statuses == {"ok": "delivered", "busy": "pending", "missing": "failed"}


@pytest.mark.httpx_mock(assert_all_responses_were_requested=False)
def test_run_forever_survives_a_delivery_that_raises(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: the same escaping exception (a non-ASCII header value) ends serve's
    # worker loop: task.result() re-raises in run_forever, the task dies, and
    # the dispatcher keeps answering POST /v1/events while nothing is sent.
    live(
        store,
        spec("good"),
        spec("zurich", headers={"Content-Type": "application/json", "X-Team": "Zürich"}),
    )
    queue(store, clock)
    httpx_mock.add_response(url="https://hooks.example.com/good")
    httpx_mock.add_response(url="https://hooks.example.com/zurich")

    async def scenario(worker: Worker) -> None:
        await asyncio.wait_for(
            worker.run_forever(_stop_after_first_claim(), asyncio.Event()), timeout=30
        )

    run(store, scenario, clock=clock)
    statuses = {r.webhook: r.status for r in store.deliveries()}
    assert statuses["good"] == "delivered"
    assert statuses["zurich"] in ("delivered", "failed")


class Flaky:
    """A store whose claims and recordings (`claim`; `finish` and `finish_and_claim`,
    counted together) fail the first `failures` times each, as a database that
    restarts would; everything else is the real store's."""

    COUNTED_AS: ClassVar[dict[str, str]] = {
        "claim": "claim",
        "finish": "finish",
        "finish_and_claim": "finish",
    }

    def __init__(self, store: SqliteStore, failures: int) -> None:
        self._store = store
        self.left = {"claim": failures, "finish": failures}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        counter = self.COUNTED_AS.get(name)
        if counter is None:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.left[counter]:
                self.left[counter] -= 1
                raise sqlite3.OperationalError("disk I/O error")
            return real(*args, **kwargs)

        return call


def test_run_forever_outlives_a_failing_store_and_records_every_outcome_once(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture
) -> None:
    # BUG: an exception from the store (PostgreSQL refusing a NUL in a response
    # excerpt, a restart, a full disk) ended serve's worker loop for good, silently,
    # while the API kept answering 202.
    live(store, spec("a"), spec("b"))
    queue(store, clock)
    httpx_mock.add_response(url="https://hooks.example.com/a")
    httpx_mock.add_response(url="https://hooks.example.com/b")
    flaky = Flaky(store, failures=2)
    settings = WorkerSettings(poll_interval=0.001)
    caplog.set_level(logging.INFO, logger="reconciler.dispatch")

    async def scenario(worker: Worker) -> None:
        worker.db.store = flaky  # type: ignore[assignment]
        done = lambda: not flaky.left["finish"] and not store.deliveries(status="in_flight")  # noqa: E731
        await asyncio.wait_for(worker.run_forever(done, asyncio.Event()), timeout=30)

    run(store, scenario, clock=clock, settings=settings)
    assert {r.webhook: r.status for r in store.deliveries()} == {"a": "delivered", "b": "delivered"}
    assert len(httpx_mock.get_requests()) == 2  # sent once each, recorded once the store was back
    assert all(len(shown(store, r.id)[1]) == 1 for r in store.deliveries())
    failures = [r for r in caplog.records if "the state failed while" in r.getMessage()]
    assert len(failures) == 4 and all(r.exc_info for r in failures)
    assert any(r.getMessage() == "the state answers again" for r in caplog.records)


def test_the_dispatcher_starts_its_delivery_loop_again_if_it_ever_fails(
    store: SqliteStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    async def run_forever(stopping: Callable[[], bool], wake: asyncio.Event) -> None:
        calls.append(stopping())
        if len(calls) == 1:
            raise RuntimeError("a bug in the loop")

    async def go() -> None:
        sender = Sender(httpx.AsyncHTTPTransport())
        dispatcher = Dispatcher(
            store, sender, clock=clock, env={}, settings=WorkerSettings(poll_interval=0.001)
        )
        dispatcher.worker.run_forever = run_forever  # type: ignore[method-assign]
        dispatcher.start()
        await dispatcher.stop(grace=30)

    asyncio.run(go())
    assert len(calls) == 2
    assert "the delivery loop failed; starting it again" in caplog.text
    assert "RuntimeError: a bug in the loop" in caplog.text


def test_stop_joins_the_database_thread_even_when_the_release_fails(
    store: SqliteStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller closes the store once stop() returns: a thread still using the
    # connection then crashed the whole process.
    def release(owner: str, now: float) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "release", release)
    before = set(threading.enumerate())

    async def go() -> tuple[Dispatcher, set[threading.Thread]]:
        sender = Sender(httpx.AsyncHTTPTransport())
        dispatcher = Dispatcher(store, sender, clock=clock, env={})
        dispatcher.start()
        await asyncio.sleep(0)
        started = set(threading.enumerate()) - before
        with pytest.raises(sqlite3.OperationalError):
            await dispatcher.stop(grace=30)
        return dispatcher, started  # kept: a collected executor would end its thread

    dispatcher, started = asyncio.run(go())
    assert any(thread.name.startswith("reconciler-db") for thread in started)
    assert not [thread for thread in started if thread.is_alive()]
    assert dispatcher.sender  # still referenced here
