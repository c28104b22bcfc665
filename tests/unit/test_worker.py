"""Worker: claim, render, send, record, on a real SQLite state and a mocked network.

Time is a FakeClock the tests move; nothing sleeps. pytest-httpx mocks httpx's
default transport, so a `Sender` over `httpx.AsyncHTTPTransport()` sends nothing for real.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs

import httpx
import pytest
from pytest_httpx import HTTPXMock
from standardwebhooks import Webhook

from reconciler.dispatch.retry import DEFAULT_SCHEDULE
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.worker import Database, Worker, WorkerSettings, owner_alive, owner_id
from reconciler.events import EventIn
from reconciler.model import WebhookSpec
from reconciler.plan import make_plan
from reconciler.store.base import Write
from reconciler.store.queue import AttemptRecord, DeliveryRecord, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    SUBPROCESS_TIMEOUT,
    FakeClock,
    definition,
    json_out,
    put_specs,
    run_cli,
    spec,
    sqlite_url,
    write_definition,
)

T = TypeVar("T")
START = 1_700_000_000.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_" + base64.b64encode(b"the secret after the rotation!!!").decode()
EVENT_TIME = "2026-11-29T21:22:42Z"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    made = SqliteStore(tmp_path / "state.db")
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def live(store: SqliteStore, *specs: WebhookSpec) -> None:
    put_specs(store, specs)


def queue(store: SqliteStore, clock: FakeClock, event_id: str = "evt-1", **fields: str) -> str:
    """Queue an event for acme; return the id of its first delivery."""
    values = {
        "type": "new_rule_violation",
        "organization": "acme",
        "name": "no-public-s3",
        "description": "bucket logs is public",
        "time": EVENT_TIME,
    }
    values.update(fields)
    event = EventRecord(id=event_id, **values)
    store.add_event(event, clock())
    records = store.deliveries(event=event.key)
    assert records, "the event matched no webhook"
    return sorted(records, key=lambda r: r.webhook)[0].id


def run(
    store: SqliteStore,
    scenario: Callable[[Worker], Awaitable[T]],
    *,
    clock: FakeClock,
    env: Mapping[str, str] | None = None,
    settings: WorkerSettings | None = None,
) -> T:
    """Run `scenario` with a worker on a fresh client and database thread."""

    async def go() -> T:
        db = Database(store)
        try:
            async with Sender(httpx.AsyncHTTPTransport()) as sender:
                worker = Worker(
                    db,
                    sender,
                    env={} if env is None else env,
                    clock=clock,
                    rng=random.Random(0),
                    owner="test-host:1:worker",
                    settings=settings,
                )
                return await scenario(worker)
        finally:
            db.close()

    return asyncio.run(go())


def once(store: SqliteStore, clock: FakeClock, env: Mapping[str, str] | None = None) -> int:
    return run(store, lambda worker: worker.run_once(), clock=clock, env=env)


def shown(store: SqliteStore, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]]:
    found = store.delivery(delivery_id)
    assert found is not None
    return found


def drain(store: SqliteStore, clock: FakeClock, env: Mapping[str, str] | None = None) -> int:
    """Attempt until nothing is pending, moving the clock to each next due time;
    returns how many attempts were made."""

    async def scenario(worker: Worker) -> int:
        made = 0
        for _ in range(50):
            made += await worker.run_once()
            pending = await worker.db.run(store.deliveries, status="pending")
            if not pending:
                return made
            clock.now = max(clock.now, min(r.due_at or clock.now for r in pending))
        raise AssertionError("still pending after 50 rounds")

    return run(store, scenario, clock=clock, env=env)


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

    # a paused webhook takes no new events
    store.add_event(
        EventRecord("evt-2", "new_rule_violation", "acme", "n", "", EVENT_TIME), clock()
    )
    assert [r.webhook for r in store.deliveries(event=EventKey("acme", "evt-2"))] == ["b"]


def test_a_delivery_queued_before_a_pause_fails_without_being_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    store.pause("acme", "a", "HTTP 410 earlier", actor="dispatcher")
    assert once(store, clock) == 1
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 0)
    assert "paused" in (record.last_error or "")
    assert httpx_mock.get_requests() == []
    assert attempts[0].status is None


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


# -- what is sent -------------------------------------------------------------------


def test_headers_sent_definition_webhook_id_timestamp_and_a_verifiable_signature(
    store: SqliteStore, httpx_mock: HTTPXMock
) -> None:
    clock = FakeClock(float(int(time.time())))  # the reference library checks freshness
    live(
        store,
        spec(
            "a",
            headers={
                "Content-Type": "application/json",
                "X-Custom": "yes",
                "Authorization": "Bearer ${env:ACME_TOKEN}",
            },
            signing_secret="${env:ACME_SIGNING}",
        ),
    )
    delivery = queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_TOKEN": "t0ken", "ACME_SIGNING": SECRET})

    (request,) = httpx_mock.get_requests()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-custom"] == "yes"
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["webhook-id"] == delivery
    assert request.headers["webhook-timestamp"] == str(int(clock.now))
    assert request.headers["webhook-signature"].startswith("v1,")
    payload = Webhook(SECRET).verify(request.content, dict(request.headers))
    assert payload["text"].startswith("The rule no-public-s3")


def test_during_a_rotation_both_secrets_sign(store: SqliteStore, httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(float(int(time.time())))
    live(store, spec("a", signing_secret="${env:ACME_OLD_SECRET} ${env:ACME_NEW_SECRET}"))
    queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_OLD_SECRET": SECRET, "ACME_NEW_SECRET": NEW_SECRET})
    (request,) = httpx_mock.get_requests()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEW_SECRET):
        Webhook(secret).verify(request.content, dict(request.headers))


def test_no_signing_secret_no_signature(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response()
    once(store, clock)
    (request,) = httpx_mock.get_requests()
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == delivery
    assert request.headers["webhook-timestamp"] == str(int(START))


@pytest.mark.parametrize(
    ("fields", "variable"),
    [
        ({"url": "${env:ACME_URL}"}, "ACME_URL"),
        ({"url": "https://hooks.example.com/${env:ACME_PATH}"}, "ACME_PATH"),
        ({"headers": {"Authorization": "Bearer ${env:ACME_TOKEN}"}}, "ACME_TOKEN"),
        ({"query": {"key": "${env:ACME_KEY}"}}, "ACME_KEY"),
        ({"signing_secret": "${env:ACME_SIGNING}"}, "ACME_SIGNING"),
    ],
)
def test_an_unset_environment_variable_fails_the_delivery_and_sends_nothing(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    fields: dict[str, Any],
    variable: str,
) -> None:
    live(store, spec("a", **fields))
    delivery = queue(store, clock)
    assert once(store, clock, env={"UNRELATED": "x"}) == 1

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert record.status == "failed"
    assert record.attempts == 0  # nothing went out
    assert record.last_error == f"environment variable {variable} is not set"
    assert [(a.outcome, a.status) for a in attempts] == [("failed", None)]
    clock.now += 100_000
    assert once(store, clock, env={"UNRELATED": "x"}) == 0  # failed, not retried


def test_a_signing_secret_that_is_not_base64_fails_without_showing_it(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: the worker catches SigningSecretError only around collecting the
    # secrets; signature_header() decodes them later, outside that try, so the
    # error escapes run_once and takes the batch (and the worker loop) down.
    live(store, spec("a", signing_secret="${env:ACME_SIGNING}"))
    delivery = queue(store, clock)
    once(store, clock, env={"ACME_SIGNING": "whsec_not*base64!!"})
    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert record.status == "failed"
    assert "whsec_<base64>" in (record.last_error or "")
    assert "not*base64" not in (record.last_error or "")


@pytest.mark.parametrize(
    ("fields", "env", "words"),
    [
        ({"url": "${env:ACME_URL}"}, {"ACME_URL": "ftp://files.example.com/x"}, "url"),
        ({"url": "${env:ACME_URL}"}, {"ACME_URL": "https://hooks.example.com/a b"}, "url"),
        (
            {"headers": {"Authorization": "${env:ACME_TOKEN}"}},
            {"ACME_TOKEN": "t0ken\r\nX-Injected: 1"},
            "line break",
        ),
    ],
)
def test_an_unusable_resolved_value_fails_the_delivery_and_sends_nothing(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    fields: dict[str, Any],
    env: dict[str, str],
    words: str,
) -> None:
    live(store, spec("a", **fields))
    delivery = queue(store, clock)
    once(store, clock, env=env)
    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 0)
    assert words in (record.last_error or "")
    for value in env.values():
        assert value not in (record.last_error or "")


def test_a_webhook_deleted_after_queueing_is_cancelled_and_nothing_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    store.commit([Write("delete", "acme", "a")], [], store.state().serial)

    once(store, clock)

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("cancelled", 0)
    assert "deleted" in (record.last_error or "")
    assert attempts == []


def test_a_webhook_disabled_after_queueing_is_cancelled_and_nothing_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(store, spec("a", enabled=False))

    assert once(store, clock) == 1

    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert (record.status, record.attempts) == ("cancelled", 0)
    assert "disabled" in (record.last_error or "")


@pytest.mark.httpx_mock(assert_all_requests_were_expected=False)
def test_a_webhook_moved_to_another_event_type_after_queueing_is_not_sent_this_event(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: the worker checks that the live webhook still exists and is enabled,
    # but not that it still listens to this event type: after an apply moves it
    # to reserved_instance_surplus, a queued new_rule_violation is still sent,
    # rendered with the surplus template. Expected: cancelled, as when disabled.
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(store, spec("a", event="reserved_instance_surplus"))

    once(store, clock)

    assert httpx_mock.get_requests() == []
    assert shown(store, delivery)[0].status == "cancelled"


def test_a_change_applied_after_queueing_is_what_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(
        store,
        spec(
            "a",
            url="https://new.example.com/hook",
            headers={"Content-Type": "application/json", "X-Version": "2"},
            body={"v": 2, "rule": "{{name}}"},
        ),
    )
    httpx_mock.add_response(url="https://new.example.com/hook")

    once(store, clock)

    (request,) = httpx_mock.get_requests()
    assert str(request.url) == "https://new.example.com/hook"
    assert request.headers["x-version"] == "2"
    assert json.loads(request.content) == {"v": 2, "rule": "no-public-s3"}
    assert shown(store, delivery)[0].status == "delivered"


HOSTILE = [
    'say "hi"',
    "back\\slash \\u0000 \\n",
    "new\nline\r\n\ttab",
    "{{time}} {{name}} {{event_id}}",
    "${env:SECRET} and ${env:ACME_TOKEN}",
    "</script><script>alert(1)</script>",
    "é 🚀 \u2028 \u0001 \u001f \u007f",
    '{"text": "injected"}',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_event_values_give_valid_json_with_the_value_verbatim(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, value: str
) -> None:
    live(
        store,
        spec(
            "a",
            headers={"Content-Type": "application/json", "Authorization": "${env:ACME_TOKEN}"},
            body={
                "text": "{{name}}",
                "details": {"description": "{{description}}"},
                "list": ["{{name}}", 1, True, None],
                "both": "rule {{name}}: {{description}}",
            },
        ),
    )
    queue(store, clock, name=value, description=value)
    httpx_mock.add_response()
    once(store, clock, env={"SECRET": "leaked-secret", "ACME_TOKEN": "leaked-token"})

    (request,) = httpx_mock.get_requests()
    body = json.loads(request.content)
    assert body == {
        "text": value,
        "details": {"description": value},
        "list": [value, 1, True, None],
        "both": f"rule {value}: {value}",
    }
    assert b"leaked-secret" not in request.content
    assert b"leaked-token" not in request.content
    assert EVENT_TIME.encode() not in request.content  # {{time}} in a value stays text


def test_a_relaxed_json_body_is_sent_as_strict_json(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(
        store,
        spec("a", body="{ text: 'The rule {{name}} was violated at: {{time}}. {{description}}' }"),
    )
    queue(store, clock, description='It\'s "bad"')
    httpx_mock.add_response()
    once(store, clock)
    (request,) = httpx_mock.get_requests()
    assert json.loads(request.content) == {
        "text": f'The rule no-public-s3 was violated at: {EVENT_TIME}. It\'s "bad"'
    }


def test_get_sends_the_query_percent_encoded_and_no_body(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(
        store,
        spec(
            "a",
            method="GET",
            body=None,
            headers={},
            url="https://hooks.example.com/{{organization}}/{{name}}",
            query={"rule": "{{name}}", "at": "{{time}}", "key": "${env:ACME_KEY}"},
        ),
    )
    name = "a b&c=d/../é?#"
    queue(store, clock, name=name)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_KEY": "k&v"})

    (request,) = httpx_mock.get_requests()
    assert request.method == "GET"
    assert request.content == b""
    assert "content-type" not in request.headers
    raw_query = request.url.query.decode("ascii")
    assert " " not in raw_query
    assert "#" not in raw_query
    assert parse_qs(raw_query) == {"rule": [name], "at": [EVENT_TIME], "key": ["k&v"]}
    # the value stays inside its path segment, encoded
    path = request.url.raw_path.partition(b"?")[0]
    assert path.startswith(b"/acme/")
    assert path.count(b"/") == 2
    assert b".." not in path
    assert request.url.path == f"/acme/{name}"
    assert request.url.host == "hooks.example.com"


def test_a_get_is_signed_over_an_empty_body(store: SqliteStore, httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(float(int(time.time())))
    live(
        store,
        spec("a", method="GET", body=None, headers={}, signing_secret="${env:ACME_SIGNING}"),
    )
    queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_SIGNING": SECRET})
    (request,) = httpx_mock.get_requests()
    Webhook(SECRET).verify(b"", dict(request.headers), json_parse=False)


def test_a_secret_url_never_reaches_the_log_or_the_delivery_record(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack = "https://hooks.slack.com/services/T0/B0/SECRET"
    live(store, spec("a", url="${env:ACME_SLACK_URL}"))
    delivery = queue(store, clock)
    httpx_mock.add_exception(httpx.ConnectError(f"cannot connect to {slack}"))
    with caplog.at_level(logging.DEBUG):
        once(store, clock, env={"ACME_SLACK_URL": slack})
    record, attempts = shown(store, delivery)
    assert record.status == "pending"
    assert "SECRET" not in (record.last_error or "")
    assert all("SECRET" not in (a.error or "") for a in attempts)
    assert caplog.records  # each attempt is logged...
    assert "SECRET" not in caplog.text  # ...without the secret


@pytest.mark.parametrize(
    "value", ["http://[SECHOST4]/x", "http://[SECHOST4/x", "http://SECHOST4\uff03x/y"]
)
def test_a_malformed_secret_url_fails_as_a_rendering_error_that_never_shows_it(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    live(store, spec("a", url="${env:ACME_HOOK_URL}"))
    delivery = queue(store, clock)
    with caplog.at_level(logging.DEBUG):
        assert once(store, clock, env={"ACME_HOOK_URL": value}) == 1

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 0)  # permanent; nothing sent
    assert record.last_error == (
        "the resolved url is not usable: it is not a valid URL (its host is malformed)"
    )
    assert [(a.outcome, a.error) for a in attempts] == [("failed", record.last_error)]
    assert caplog.records  # the attempt is logged...
    assert "SECHOST4" not in caplog.text  # ...without the secret, and without a traceback
    assert not any(r.exc_info for r in caplog.records)


# -- bugs: one bad answer or definition must not take the batch down ------------------


def test_a_retry_after_that_is_not_a_number_is_ignored(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: `Retry-After: ²` passes str.isdigit() and float() raises ValueError,
    # which escapes run_once: the batch's outcomes are never recorded and the
    # dispatcher's worker task dies.
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=429, headers=[(b"Retry-After", "²".encode())])
    once(store, clock)
    record, _ = shown(store, delivery)
    assert record.status == "pending"
    assert record.due_at is not None
    assert START + 4 <= record.due_at <= START + 6


@pytest.mark.httpx_mock(assert_all_responses_were_requested=False)
def test_a_header_value_httpx_cannot_send_fails_one_delivery_not_the_batch(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: a non-ASCII header value (valid in a definition, and `validate` says
    # so) raises UnicodeEncodeError out of sender.send; run_once raises, no
    # outcome of the batch is recorded, and the worker loop dies.
    live(
        store,
        spec("good"),
        spec("zurich", headers={"Content-Type": "application/json", "X-Team": "Zürich"}),
    )
    queue(store, clock)
    httpx_mock.add_response(url="https://hooks.example.com/good")
    httpx_mock.add_response(url="https://hooks.example.com/zurich")
    once(store, clock)
    statuses = {r.webhook: r.status for r in store.deliveries()}
    assert statuses["good"] == "delivered"
    assert statuses["zurich"] in ("delivered", "failed")


@pytest.mark.httpx_mock(assert_all_requests_were_expected=False)
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://127.0.0.1:8080/hook",  # loopback
        "http://10.0.0.5/hook",  # private
        "http://[::1]/hook",
    ],
)
def test_no_request_reaches_private_loopback_or_link_local_addresses(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, url: str
) -> None:
    # BUG: DESIGN.md (Dispatcher): "No request reaches private, loopback or
    # link-local addresses unless the deployment allows it". The dispatcher has
    # no such check (only `validate` warns), so these are sent.
    live(store, spec("a", url=url))
    delivery = queue(store, clock)
    once(store, clock)
    assert httpx_mock.get_requests() == []
    assert shown(store, delivery)[0].status == "failed"


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
    from reconciler.events import EventIn

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
