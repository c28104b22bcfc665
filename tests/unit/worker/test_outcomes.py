"""Worker: what each answer of a receiver does to a delivery: delivered, retried when due,
failed, paused."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import httpx
import pytest
from pytest_httpx import HTTPXMock

from reconciler.dispatch.retry import DEFAULT_SCHEDULE
from reconciler.events import EventIn
from reconciler.plan import make_plan
from reconciler.store.queue import EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    definition,
    json_out,
    run_cli,
    spec,
    sqlite_url,
    write_definition,
)
from tests.unit.worker.helpers import (
    EVENT_TIME,
    START,
    drain,
    live,
    once,
    queue,
    run,
    shown,
)

# -- outcomes ---------------------------------------------------------------------


def test_success_is_delivered_with_one_attempt(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=200, text="ok")

    assert once(store, clock) == 1

    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts, record.last_status) == ("delivered", 1, 200)
    assert [(a.number, a.outcome, a.status, a.response_excerpt) for a in attempts] == [
        (1, "delivered", 200, "ok")
    ]
    assert attempts[0].started_at == START
    (request,) = httpx_mock.get_requests()
    assert request.method == "POST"
    assert str(request.url) == "https://hooks.example.com/a"
    assert json.loads(request.content) == {
        "text": f"The rule no-public-s3 was violated at: {EVENT_TIME}."
    }
    assert once(store, clock) == 0


def test_one_id_in_two_organizations_is_sent_twice_and_logged_with_each_organization(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    live(store, spec("a"), spec("a", "globex"))
    acme = queue(store, clock, "r17:2026-11-30")
    globex = queue(store, clock, "r17:2026-11-30", organization="globex")
    httpx_mock.add_response(status_code=200)
    httpx_mock.add_response(status_code=200)
    caplog.set_level(logging.INFO, logger="reconciler.dispatch")

    # one event's deliveries alone, as `fire --wait` takes them
    taken = run(store, lambda w: w.run_once(EventKey("globex", "r17:2026-11-30")), clock=clock)
    assert (taken, shown(store, acme)[0].status) == (1, "pending")
    assert once(store, clock) == 1

    assert {shown(store, d)[0].status for d in (acme, globex)} == {"delivered"}
    assert sorted(r.headers["webhook-id"] for r in httpx_mock.get_requests()) == sorted(
        [acme, globex]
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attempt ")]
    assert [line.split()[1:4] for line in lines] == [
        [f"delivery={globex}", "event=globex/r17:2026-11-30", "webhook=globex/a"],
        [f"delivery={acme}", "event=acme/r17:2026-11-30", "webhook=acme/a"],
    ]


def test_time_is_sent_as_render_shows_it_in_whole_seconds(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    moment = "2026-11-29T18:05:47.882308Z"  # as a client may send it
    body = {"text": "at {{time}}"}
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a", body=body))
    live(store, spec("a", body=body))
    event = {"type": "new_rule_violation", "organization": "acme", "name": "no-public-s3"}
    # As intake stores it (POST /v1/events, fire), and as a state may hold it already.
    store.add_event(EventIn.model_validate({**event, "time": moment}).record(), clock())
    store.add_event(EventRecord(id="evt-stored", description="", time=moment, **event), clock())
    for _ in range(2):
        httpx_mock.add_response(status_code=200)

    assert once(store, clock) == 2

    sent = [json.loads(request.content) for request in httpx_mock.get_requests()]
    assert sent == [{"text": "at 2026-11-29T18:05:47Z"}] * 2
    shown = run_cli(["render", "a", str(folder), "--time", moment, "--format", "json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(json_out(shown)["body"]) == sent[0]
    dry = run_cli(
        ["fire", "new_rule_violation", "--org", "acme", "--name", "no-public-s3",
         "--time", moment, "--dry-run", "--format", "json", "--state", sqlite_url(store.path)],
        tmp_path,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(request["body"]) for request in json_out(dry)] == [sent[0]]


def test_500_then_success_retries_when_due_with_the_same_webhook_id(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=500, text="oops")
    httpx_mock.add_response(status_code=200)

    assert once(store, clock) == 1
    record, _ = shown(store, delivery)
    assert (record.status, record.attempts, record.last_status) == ("pending", 1, 500)
    assert record.due_at is not None
    assert START + 4 <= record.due_at <= START + 6  # 5s, give or take 20%

    assert once(store, clock) == 0  # not due yet: nothing is sent
    assert len(httpx_mock.get_requests()) == 1

    clock.now = record.due_at
    assert once(store, clock) == 1

    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts, record.last_status) == ("delivered", 2, 200)
    assert [(a.number, a.outcome, a.status) for a in attempts] == [
        (1, "retry", 500),
        (2, "delivered", 200),
    ]
    first, second = httpx_mock.get_requests()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery
    assert first.content == second.content


def test_retries_exhausted_fail_and_say_so(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a", retry={"schedule": ["1s", "2s"], "jitter": 0}))
    delivery = queue(store, clock)
    for _ in range(3):
        httpx_mock.add_response(status_code=503)

    assert drain(store, clock) == 3

    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 3)
    assert record.last_error is not None
    assert "retries exhausted after 3 attempts" in record.last_error
    assert "HTTP 503" in record.last_error
    assert [a.started_at - START for a in attempts] == [0, 1, 3]
    assert [a.outcome for a in attempts] == ["retry", "retry", "failed"]


def test_the_default_schedule_makes_eight_attempts(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    for _ in range(8):
        httpx_mock.add_response(status_code=502)

    assert drain(store, clock) == 8

    record, attempts = shown(store, delivery)
    assert record.status == "failed"
    assert "retries exhausted after 8 attempts" in (record.last_error or "")
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(attempts)]
    assert len(gaps) == len(DEFAULT_SCHEDULE)
    for gap, base in zip(gaps, DEFAULT_SCHEDULE, strict=True):
        assert base * 0.8 <= gap <= base * 1.2


def test_no_retry_when_the_schedule_is_empty(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a", retry={"schedule": []}))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=500)
    assert once(store, clock) == 1
    record, _ = shown(store, delivery)
    assert record.status == "failed"
    assert "retries exhausted after 1 attempts" in (record.last_error or "")


def test_retry_after_is_honoured(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "120"})
    once(store, clock)
    record, attempts = shown(store, delivery)
    assert (record.status, record.due_at) == ("pending", START + 120)
    assert attempts[0].response_headers["retry-after"] == "120"


def test_a_connection_error_is_retried(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    once(store, clock)
    record, attempts = shown(store, delivery)
    assert (record.status, record.last_status) == ("pending", None)
    assert record.last_error == "connection failed: connection refused"
    assert [(a.outcome, a.status) for a in attempts] == [("retry", None)]


def test_a_read_timeout_is_retried(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a", timeout="3s"))
    delivery = queue(store, clock)
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    once(store, clock)
    record, _ = shown(store, delivery)
    assert (record.status, record.last_error) == ("pending", "timed out after 3s")


@pytest.mark.parametrize(("timeout", "seconds"), [(None, 15.0), ("2s", 2.0), ("60s", 60.0)])
def test_the_definitions_timeout_is_used(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    timeout: str | None,
    seconds: float,
) -> None:
    live(store, spec("a", timeout=timeout))
    queue(store, clock)
    httpx_mock.add_response()
    once(store, clock)
    (request,) = httpx_mock.get_requests()
    assert request.extensions["timeout"]["read"] == seconds


def test_404_fails_at_once(store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=404, text="no such hook")
    once(store, clock)
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts, record.last_error) == ("failed", 1, "HTTP 404")
    assert attempts[0].response_excerpt == "no such hook"
    clock.now += 100_000
    assert once(store, clock) == 0
    assert len(httpx_mock.get_requests()) == 1


def test_410_fails_and_pauses_the_webhook_as_drift(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    a, b = spec("a"), spec("b")
    live(store, a, b)
    queue(store, clock, "evt-1")
    httpx_mock.add_response(status_code=410, url="https://hooks.example.com/a")
    httpx_mock.add_response(status_code=200, url="https://hooks.example.com/b")
    once(store, clock)

    records = {r.webhook: r for r in store.deliveries(event=EventKey("acme", "evt-1"))}
    assert (records["a"].status, records["a"].last_status) == ("failed", 410)
    assert records["b"].status == "delivered"
    webhooks = {w.name: w for w in store.webhooks("acme")}
    assert webhooks["a"].paused_reason is not None
    assert "410" in webhooks["a"].paused_reason
    assert records["a"].id in webhooks["a"].paused_reason
    assert webhooks["b"].paused_reason is None
    (entry,) = list(store.history(name="a"))
    assert (entry.record.action, entry.record.actor) == ("pause", "dispatcher")

    plan = make_plan([a, b], store.webhooks(), store.state())
    assert [(d.name, d.paused_reason) for d in plan.drift] == [("a", webhooks["a"].paused_reason)]
    (change,) = plan.changes
    assert (change.action, change.name, change.resumes) == (
        "update",
        "a",
        webhooks["a"].paused_reason,
    )

    # a paused webhook's new events are held, never sent while it is paused
    store.add_event(
        EventRecord("evt-2", "new_rule_violation", "acme", "n", "", EVENT_TIME), clock()
    )
    statuses = {r.webhook: r.status for r in store.deliveries(event=EventKey("acme", "evt-2"))}
    assert statuses == {"a": "held", "b": "pending"}


def test_a_delivery_queued_before_a_pause_is_held_without_being_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    store.pause("acme", "a", "HTTP 410 earlier", actor="dispatcher")
    assert once(store, clock) == 0
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("held", 0)
    assert "HTTP 410 earlier" in (record.last_error or "")
    assert httpx_mock.get_requests() == []
    assert attempts == []


def test_one_batch_holds_every_kind_of_outcome(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("ok"), spec("busy"), spec("missing"))
    queue(store, clock)
    httpx_mock.add_response(status_code=200, url="https://hooks.example.com/ok")
    httpx_mock.add_response(status_code=503, url="https://hooks.example.com/busy")
    httpx_mock.add_response(status_code=404, url="https://hooks.example.com/missing")
    assert once(store, clock) == 3
    statuses = {r.webhook: r.status for r in store.deliveries()}
    assert statuses == {"ok": "delivered", "busy": "pending", "missing": "failed"}
