"""/readyz: ready only while the state answers the dispatcher and its workers turn;
/healthz stays "the process is alive". On both stores, wrapped so a test can make
every store call block (as behind a stalled link or a held lock) or fail."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.dispatch.app import create_app
from reconciler.dispatch.readiness import STALE
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.errors import StateError
from tests.support.helpers_state import FakeClock, put_specs, spec

START = 1_700_000_000.0


class Troubled:
    """A store whose calls, while `gate` is cleared, wait for it (on the database
    thread), and while `failing`, raise as a state that is down."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()  # a call is waiting at the gate
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if not callable(real):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.gate.is_set():
                self.blocked.set()
                self.gate.wait(timeout=30)
            if self.failing:
                raise StateError("the state at test failed: the server closed the connection")
            return real(*args, **kwargs)

        return call


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        from reconciler.store.sqlite import SqliteStore

        made: Any = SqliteStore(tmp_path / "state.db")
    else:
        from reconciler.store.postgres import PostgresStore

        made = PostgresStore(request.getfixturevalue("postgres_url"))
    put_specs(made, [spec("a")])
    yield made
    made.close()


def run(
    store: Any,
    clock: FakeClock,
    scenario: Callable[[httpx.AsyncClient, Dispatcher], Awaitable[Any]],
) -> Any:
    troubled = Troubled(store)

    async def go() -> Any:
        sender = Sender(httpx.MockTransport(lambda request: httpx.Response(204)))
        dispatcher = Dispatcher(troubled, sender, clock=clock, env={})  # type: ignore[arg-type]
        # A probe that answers is waited for, however loaded the machine; the test of
        # a stuck probe shortens the wait where it expects none.
        dispatcher.readiness.probe_wait = 10.0
        transport = httpx.ASGITransport(app=create_app(dispatcher), raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await scenario(http, dispatcher)
        finally:
            troubled.gate.set()
            await sender.aclose()
            dispatcher.db.close()

    return asyncio.run(go())


async def turn(dispatcher: Dispatcher) -> None:
    """One turn of the delivery loop, stopping: it claims nothing."""
    await dispatcher.worker.run_forever(lambda: True, asyncio.Event())


def test_ready_when_the_state_answers_and_the_workers_turn(store: Any) -> None:
    clock = FakeClock(START)

    async def scenario(http: httpx.AsyncClient, dispatcher: Dispatcher) -> None:
        before = await http.get("/readyz")  # no token needed, as for /healthz
        assert before.status_code == 503
        assert before.json() == {
            "ready": False,
            "reasons": ["the delivery workers have not started"],
        }
        await turn(dispatcher)
        clock.sleep(3)
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            200,
            {"ready": True, "state_answered_ago": 3.0, "workers_turned_ago": 3.0},
        )

    run(store, clock, scenario)


def test_not_ready_while_the_state_blocks_and_ready_again_when_it_answers(store: Any) -> None:
    clock = FakeClock(START)

    async def scenario(http: httpx.AsyncClient, dispatcher: Dispatcher) -> None:
        troubled: Troubled = dispatcher.db.store  # type: ignore[assignment]
        await turn(dispatcher)
        assert (await http.get("/readyz")).status_code == 200
        troubled.gate.clear()
        # The dispatcher's own work (a claim) hangs on the database thread.
        stuck = asyncio.create_task(dispatcher.worker.run_once())
        await asyncio.to_thread(troubled.blocked.wait, 10)
        clock.sleep(STALE + 1)
        await turn(dispatcher)  # the workers turn: only the state holds readiness back
        dispatcher.readiness.probe_wait = 0.05  # a stuck probe is not waited for long
        for _ in range(2):  # the probe is stuck behind the claim, and asked once
            response = await http.get("/readyz")
            assert response.status_code == 503, response.text
            assert response.json() == {
                "ready": False,
                "reasons": [
                    f"the state has not answered a probe within 0.05s "
                    f"(last answer {STALE + 1:.0f}s ago)"
                ],
            }
        health = await http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})

        troubled.gate.set()
        assert await stuck == 0
        dispatcher.readiness.probe_wait = 10.0
        assert (await http.get("/readyz")).status_code == 200

    run(store, clock, scenario)


def test_not_ready_after_a_failed_call_until_the_state_answers_again(store: Any) -> None:
    clock = FakeClock(START)

    async def scenario(http: httpx.AsyncClient, dispatcher: Dispatcher) -> None:
        troubled: Troubled = dispatcher.db.store  # type: ignore[assignment]
        await turn(dispatcher)
        assert (await http.get("/readyz")).status_code == 200
        troubled.failing = True
        with pytest.raises(StateError):
            await dispatcher.worker.run_once()
        clock.sleep(2)
        response = await http.get("/readyz")  # its probe fails too
        assert response.status_code == 503
        assert response.json() == {
            "ready": False,
            "reasons": ["the state's last call failed 0s ago"],
        }
        troubled.failing = False
        # The probe asks again, as the last call failed, and the state answers.
        response = await http.get("/readyz")
        assert response.status_code == 200, response.text

    run(store, clock, scenario)


def test_not_ready_while_the_workers_do_not_turn(store: Any) -> None:
    clock = FakeClock(START)

    async def scenario(http: httpx.AsyncClient, dispatcher: Dispatcher) -> None:
        await turn(dispatcher)
        clock.sleep(STALE + 5)
        response = await http.get("/readyz")  # the state answers the probe
        assert response.status_code == 503
        assert response.json() == {
            "ready": False,
            "reasons": [f"the delivery workers have not progressed for {STALE + 5:.0f}s"],
        }
        await turn(dispatcher)
        assert (await http.get("/readyz")).status_code == 200

    run(store, clock, scenario)
