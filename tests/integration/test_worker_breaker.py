"""The circuit breaker in the worker: a dead endpoint's deliveries wait, one probe
goes out at a growing interval, an answer drains the backlog, days of failure pause.

Real states (SQLite, and PostgreSQL where marked), real workers, a FakeClock the
tests move, and pytest-httpx for the network, except where a real loopback
receiver stands in for the endpoint.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher, make_sender
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.dispatch.worker import Database, Worker, WorkerSettings
from reconciler.plan import make_plan
from reconciler.store.breakers import FIRST_PROBE, THRESHOLD
from reconciler.store.queue import EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, cli_env, put_specs, run_cli, spec
from tests.support.receiver import Receiver, status

T = TypeVar("T")
START = 1_700_000_000.0
EVENT_TIME = "2026-11-29T21:22:42Z"
A_URL = "https://hooks.example.com/a"


@pytest.fixture
def store(each_store: Any) -> Any:
    put_specs(each_store, [spec("a", timeout="10s", max_in_flight=100), spec("g", "globex")])
    return each_store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def fire(store: Any, clock: FakeClock, count: int, organization: str = "acme") -> None:
    for n in range(count):
        event_id = f"{organization}-{clock.now}-{n}"
        record = EventRecord(event_id, "new_rule_violation", organization, "rule", "", EVENT_TIME)
        store.add_event(record, clock())


def workers(
    store: Any,
    clock: FakeClock,
    scenario: Callable[[list[Worker]], Awaitable[T]],
    *,
    count: int = 1,
    settings: WorkerSettings | None = None,
) -> T:
    """Run `scenario` with `count` workers (dispatchers with owners of their own) on
    the state."""

    async def go() -> T:
        dbs = [Database(store) for _ in range(count)]
        try:
            async with Sender(httpx.AsyncHTTPTransport()) as sender:
                made = [
                    Worker(
                        db,
                        sender,
                        env={},
                        clock=clock,
                        rng=random.Random(0),
                        owner=f"test-host:1:w{n}",
                        settings=settings or WorkerSettings(batch=THRESHOLD, concurrency=THRESHOLD),
                    )
                    for n, db in enumerate(dbs)
                ]
                return await scenario(made)
        finally:
            for db in dbs:
                db.close()

    return asyncio.run(go())


def sent_to_a(httpx_mock: HTTPXMock) -> int:
    return len([r for r in httpx_mock.get_requests() if str(r.url) == A_URL])


def breaker(store: Any) -> Any:
    found = [b for b in store.breakers() if b.key == ("acme", "a")]
    return found[0] if found else None


def actions(store: Any, organization: str = "acme", name: str = "a") -> list[tuple[str, str]]:
    entries = reversed(list(store.history(organization, name)))
    return [(e.record.action, e.record.actor) for e in entries]


class Endpoint:
    """acme/a's endpoint: down (a timeout) until `up` is set; globex/g always answers."""

    def __init__(self, httpx_mock: HTTPXMock) -> None:
        self.up = False
        self.answer = 200
        httpx_mock.add_callback(self._answer, is_reusable=True)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == A_URL and not self.up:
            raise httpx.ReadTimeout("read timed out")
        return httpx.Response(self.answer if str(request.url) == A_URL else 200)


# -- opening --------------------------------------------------------------------------


def test_a_dead_endpoint_opens_its_breaker_and_its_backlog_waits_without_attempts(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    Endpoint(httpx_mock)
    fire(store, clock, 4 * THRESHOLD)  # deliveries to acme/a, whose endpoint hangs

    async def scenario(ws: list[Worker]) -> None:
        await ws[0].run_once()  # THRESHOLD timeouts in a row
        assert sent_to_a(httpx_mock) == THRESHOLD
        fire(store, clock, 3, "globex")
        for _ in range(6):  # the rest is claimed, and put back untouched
            await ws[0].run_once()

    workers(store, clock, scenario)

    assert sent_to_a(httpx_mock) == THRESHOLD
    state = breaker(store)
    assert (state.state, state.opened_at, state.next_probe_at) == (
        "open",
        START,
        START + FIRST_PROBE,
    )
    assert state.last_failure == "timed out after 10s"
    waiting = [r for r in store.deliveries(webhook="a", limit=100) if r.attempts == 0]
    assert len(waiting) == 3 * THRESHOLD
    assert {(r.status, r.due_at) for r in waiting} == {("pending", START + FIRST_PROBE)}
    # another organization's deliveries went out meanwhile
    assert {r.status for r in store.deliveries(organization="globex")} == {"delivered"}
    assert actions(store) == [("breaker-open", "dispatcher")]


@pytest.mark.parametrize(("answer", "headers"), [(404, {}), (400, {}), (429, {"Retry-After": "1"})])
def test_answers_that_are_not_5xx_never_open_it(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock, answer: int, headers: dict[str, str]
) -> None:
    httpx_mock.add_response(url=A_URL, status_code=answer, headers=headers, is_reusable=True)
    fire(store, clock, 2 * THRESHOLD)

    async def scenario(ws: list[Worker]) -> None:
        for _ in range(10):
            await ws[0].run_once()
            clock.now += 2

    workers(store, clock, scenario)
    assert breaker(store) is None
    assert actions(store) == []


def test_a_rendering_error_says_nothing_about_the_endpoint(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    put_specs(store, [spec("a", url="${env:ACME_UNSET}", max_in_flight=100), spec("g", "globex")])
    fire(store, clock, 2 * THRESHOLD)
    workers(store, clock, lambda ws: ws[0].run_once())
    workers(store, clock, lambda ws: ws[0].run_once())
    assert {r.status for r in store.deliveries(webhook="a")} == {"failed"}
    assert breaker(store) is None
    assert httpx_mock.get_requests() == []


# -- probes -----------------------------------------------------------------------------


def test_one_probe_at_a_growing_interval_then_an_answer_drains_the_backlog(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    endpoint = Endpoint(httpx_mock)
    fire(store, clock, 4 * THRESHOLD)

    async def scenario(ws: list[Worker]) -> None:
        await ws[0].run_once()  # opens
        intervals = []
        for _ in range(3):  # three failed probes, each with two dispatchers claiming
            probe_at = breaker(store).next_probe_at
            clock.now = probe_at
            before = sent_to_a(httpx_mock)
            for _ in range(3):
                await ws[0].run_once()
                await ws[1].run_once()
            assert sent_to_a(httpx_mock) == before + 1  # one probe, whoever took it
            intervals.append(breaker(store).next_probe_at - probe_at)
        assert intervals == [2 * FIRST_PROBE, 4 * FIRST_PROBE, 8 * FIRST_PROBE]

        endpoint.up = True
        clock.now = breaker(store).next_probe_at
        await ws[1].run_once()  # the probe succeeds: closed
        assert breaker(store) is None
        for _ in range(40):  # the backlog drains; attempts wait for their retries
            await ws[0].run_once()
            clock.now += 60

    workers(store, clock, scenario, count=2)
    assert {r.status for r in store.deliveries(webhook="a", limit=100)} == {"delivered"}
    assert actions(store) == [("breaker-open", "dispatcher"), ("breaker-close", "dispatcher")]
    note = next(iter(store.history("acme", "a"))).record.note or ""
    assert "3 failed probes" in note


def test_a_probe_answered_with_a_4xx_closes_it(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    endpoint = Endpoint(httpx_mock)
    fire(store, clock, 2 * THRESHOLD)

    async def scenario(ws: list[Worker]) -> None:
        await ws[0].run_once()
        endpoint.up, endpoint.answer = True, 400
        clock.now = breaker(store).next_probe_at
        await ws[0].run_once()

    workers(store, clock, scenario)
    assert breaker(store) is None


# -- sustained failure --------------------------------------------------------------------


def test_an_endpoint_down_for_pause_after_is_paused_shown_as_drift_and_resumed(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    Endpoint(httpx_mock)
    fire(store, clock, 2 * THRESHOLD)
    settings = WorkerSettings(batch=THRESHOLD, concurrency=THRESHOLD, pause_after=3600.0)

    async def scenario(ws: list[Worker]) -> None:
        await ws[0].run_once()
        for _ in range(40):
            state = breaker(store)
            if state is None:
                return
            clock.now = state.next_probe_at
            await ws[0].run_once()

    workers(store, clock, scenario, settings=settings)

    (live,) = [w for w in store.webhooks("acme") if w.name == "a"]
    assert live.paused_reason is not None
    assert "paused by the dispatcher: its endpoint has failed for 1." in live.paused_reason
    assert "timed out after 10s" in live.paused_reason
    assert clock.now - START < 3600 + 600  # within one probe interval of --pause-after
    assert actions(store) == [("breaker-open", "dispatcher"), ("pause", "dispatcher")]
    plan = make_plan(
        [spec("a", timeout="10s")], store.webhooks("acme"), store.state(), organization="acme"
    )
    assert [(d.name, d.paused_reason) for d in plan.drift] == [("a", live.paused_reason)]

    # a paused webhook's new events are held; `webhooks resume` lifts the pause and
    # releases them
    fire(store, clock, 1)
    held = store.deliveries(webhook="a", status="held", limit=100)
    assert len(held) >= 1
    url = store.test_url
    done = run_cli(["webhooks", "resume", "acme/a", "--actor", "alice", "--state", url], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Resumed acme/a" in done.stdout
    assert f"Released {len(held)} held deliver" in done.stdout
    assert store.deliveries(webhook="a", status="held", limit=100) == []
    (live,) = [w for w in store.webhooks("acme") if w.name == "a"]
    assert live.paused_reason is None
    assert actions(store)[-1] == ("resume", "alice")
    plan = make_plan(
        [spec("a", timeout="10s")], store.webhooks("acme"), store.state(), organization="acme"
    )
    assert plan.drift == []
    again = run_cli(["webhooks", "resume", "acme/a", "--state", url], tmp_path)
    assert (again.returncode, again.stdout.strip()) == (0, "acme/a is not paused; nothing changed.")


def test_pause_after_never_keeps_probing(
    store: Any, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    Endpoint(httpx_mock)
    fire(store, clock, 2 * THRESHOLD)
    settings = WorkerSettings(batch=THRESHOLD, concurrency=THRESHOLD, pause_after=float("inf"))

    async def scenario(ws: list[Worker]) -> None:
        await ws[0].run_once()
        for _ in range(30):
            clock.now = breaker(store).next_probe_at
            await ws[0].run_once()

    workers(store, clock, scenario, settings=settings)
    assert all(w.paused_reason is None for w in store.webhooks("acme"))
    assert breaker(store).state == "open"


# -- the command and the API ----------------------------------------------------------------


def test_webhooks_resume_names_what_it_cannot_find(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    made = SqliteStore(tmp_path / "state.db")
    made.close()
    for ref, message in [
        ("acme/nope", "error: no webhook acme/nope in the state at"),
        ("acme", "is not ORGANIZATION/NAME"),
    ]:
        done = run_cli(["webhooks", "resume", ref, "--state", url], tmp_path)
        assert done.returncode in (1, 2)
        assert message in done.stderr
    help_text = run_cli(["webhooks", "resume", "--help"], tmp_path, env=cli_env()).stdout
    assert "reconciler webhooks resume acme/slack-new-violations" in help_text


def test_the_api_resumes_only_the_tokens_organizations_webhooks(
    store: Any, clock: FakeClock
) -> None:
    store.pause("acme", "a", "paused by the dispatcher: down", actor="dispatcher")
    globex_admin = bearer(store, "globex")
    acme_auditor = bearer(store, "acme", role="auditor")
    acme_admin = bearer(store, "acme")

    async def go() -> list[httpx.Response]:
        sender = Sender(httpx.AsyncHTTPTransport())
        dispatcher = Dispatcher(store, sender, clock=clock, env={})
        transport = httpx.ASGITransport(app=create_app(dispatcher))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                path = "/v1/webhooks/acme/a/resume"
                return [
                    await http.post(path, headers=globex_admin),
                    await http.post(path, headers=acme_auditor),
                    await http.post("/v1/webhooks/acme/nope/resume", headers=acme_admin),
                    await http.post(path, headers=acme_admin),
                    await http.post(path, headers=acme_admin),
                ]
        finally:
            await sender.aclose()
            dispatcher.db.close()

    held = len(store.deliveries(status="held", organization="acme", webhook="a", limit=1000))
    other, auditor, missing, resumed, again = asyncio.run(go())
    assert (other.status_code, other.json()["error"]) == (404, "no webhook acme/a")
    assert auditor.status_code == 403
    assert missing.status_code == 404
    assert resumed.status_code == 200
    assert resumed.json() == {
        "organization": "acme",
        "name": "a",
        "resumed": True,
        "released": held,  # what it held while paused, due now
    }
    assert store.deliveries(status="held", organization="acme", limit=1000) == []
    assert again.json()["resumed"] is False
    (action, actor) = actions(store)[-1]
    assert action == "resume" and actor.startswith("api token tok_")


# -- end to end ---------------------------------------------------------------------------


def test_a_real_receiver_answering_503_is_probed_then_drained(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    clock = FakeClock(START)
    policy = NetworkPolicy.from_options(False, ["127.0.0.1/32"])
    with Receiver() as receiver:
        receiver.script("/a", *([status(503)] * (THRESHOLD + 1)), status(200))
        put_specs(store, [spec("a", url=receiver.url("/a"))])
        fire(store, clock, THRESHOLD + 7)

        async def go() -> None:
            db = Database(store)
            sender = make_sender(10, policy)
            worker = Worker(
                db,
                sender,
                env={},
                clock=clock,
                policy=policy,
                settings=WorkerSettings(batch=THRESHOLD, concurrency=THRESHOLD),
            )
            try:
                await worker.run_once()  # five 503s: open
                await worker.run_once()  # all put back, nothing sent
                assert len(receiver.requests("/a")) == THRESHOLD
                clock.now = breaker(store).next_probe_at
                await worker.run_once()  # the probe: 503 again
                assert len(receiver.requests("/a")) == THRESHOLD + 1
                clock.now = breaker(store).next_probe_at
                await worker.run_once()  # the probe: 200, closed
                for _ in range(40):
                    await worker.run_once()
                    clock.now += 60
            finally:
                await sender.aclose()
                db.close()

        try:
            asyncio.run(go())
        finally:
            assert not receiver.errors
    try:
        assert {r.status for r in store.deliveries(webhook="a", limit=100)} == {"delivered"}
        assert [a for a, _ in actions(store)] == ["breaker-open", "breaker-close"]
    finally:
        store.close()
