"""What the worker tests share: the live webhooks, queueing an event, running a
worker against the fake clock, and reading back a delivery.

Time is a FakeClock the tests move; nothing sleeps. pytest-httpx mocks httpx's
default transport, so a `Sender` over `httpx.AsyncHTTPTransport()` sends nothing for real.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import httpx

from reconciler.dispatch.sender import Sender
from reconciler.dispatch.worker import Database, Worker, WorkerSettings
from reconciler.model import WebhookSpec
from reconciler.store.queue import AttemptRecord, DeliveryRecord, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    put_specs,
)

T = TypeVar("T")
START = 1_700_000_000.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_" + base64.b64encode(b"the secret after the rotation!!!").decode()
EVENT_TIME = "2026-11-29T21:22:42Z"


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
