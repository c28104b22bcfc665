"""The dispatcher: event intake and the delivery workers over one store, and what
the HTTP API asks of them (server.py serves it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import httpx

from reconciler.dispatch.failures import OutcomeUnknown
from reconciler.dispatch.metrics import Metrics, QueueGauges, WebhookGauges
from reconciler.dispatch.readiness import Readiness
from reconciler.dispatch.retention import Retention
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.ssrf import GuardedResolver, NetworkPolicy, guarded_socket
from reconciler.dispatch.state_metrics import state_lines
from reconciler.dispatch.transport import ExactUrlTransport
from reconciler.dispatch.worker import Database, Worker, WorkerSettings, owner_alive
from reconciler.events import EventIn
from reconciler.health import HealthReport, breaker_states, endpoint_health, oldest_due_age
from reconciler.store import Backend
from reconciler.store.base import ResumeOutcome
from reconciler.store.queue import (
    AttemptRecord,
    DeliveryRecord,
    EventKey,
    EventRecord,
    IntakeResult,
    QueueStore,
)
from reconciler.store.tokens import TokenRecord
from reconciler.tokens import Access, find_by_hash

if TYPE_CHECKING:
    pass

log = logging.getLogger("reconciler.dispatch")
T = TypeVar("T")

DEFAULT_GRACE = 20.0
# Intake answers within this many seconds: accepted (202), refused, or 503 "outcome
# unknown" when the state has not answered by then (failures.py). Below the 30 s
# most HTTP clients wait, and above a commit on a loaded but healthy database.
INTAKE_DEADLINE = 10.0
INTAKE_BATCH = 500  # events per intake transaction, unless one batch is larger

# A batch of events on its way to the store, and who waits for its results.
_IntakeUnit = tuple[list[EventRecord], "asyncio.Future[list[IntakeResult]]"]


def make_sender(concurrency: int, policy: NetworkPolicy | None = None) -> Sender:
    """httpx as the interface, aiohttp underneath: several times the requests per
    second of httpx's own transport on the same CPU (docs/benchmarks.md). Host names
    resolve through the network policy, and every socket is made for an address the
    policy allows, so the address checked is the one used."""
    policy = policy or NetworkPolicy()
    resolver = GuardedResolver(policy)

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=concurrency,
            resolver=resolver,
            ssl=ssl.create_default_context(),
            socket_factory=guarded_socket(policy),
        )
        return aiohttp.ClientSession(connector=connector)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return Sender(ExactUrlTransport(limits=limits, trust_env=False, client=session))


class Dispatcher:
    """Intake and workers over one store; `run` until `stop`."""

    def __init__(
        self,
        store: Backend,
        sender: Sender,
        *,
        settings: WorkerSettings | None = None,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
        policy: NetworkPolicy | None = None,
        retention: Retention | None = None,
        intake_deadline: float = INTAKE_DEADLINE,
    ) -> None:
        self.db = Database(store, clock)
        self.intake_deadline = intake_deadline
        self.retention = retention
        self._retention_stop = asyncio.Event()
        self._retention_task: asyncio.Task[None] | None = None
        self.sender = sender
        self.clock = clock
        self.metrics = Metrics()
        self.worker = Worker(
            self.db,
            sender,
            env=env,
            clock=clock,
            settings=settings,
            policy=policy,
            metrics=self.metrics,
        )
        self.settings = self.worker.settings
        self.readiness = Readiness(self.db, self.worker, clock)
        self._wake = asyncio.Event()
        self._intake: list[_IntakeUnit] = []  # batches waiting for the next commit
        self._flushing: asyncio.Task[None] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def accept(self, event: EventIn) -> IntakeResult:
        """Store the event and its deliveries; returns once they are durable."""
        return (await self.accept_batch([event]))[0]

    async def accept_batch(self, events: Sequence[EventIn]) -> list[IntakeResult]:
        """Store the events and their deliveries, all in one transaction; returns,
        in order, once they are durable. An event is its (organization, id): one seen
        before, or earlier in `events`, queues nothing and answers with the first
        result; the same id in another organization is another event.

        Batches arriving together are committed in one transaction (group commit),
        so the disk's flush is paid once per turn, not once per request; a batch is
        never split between transactions.

        Raises failures.OutcomeUnknown when the state has not answered within
        `intake_deadline` seconds: the events stay queued for the state, which may
        yet store them.
        """
        future: asyncio.Future[list[IntakeResult]] = asyncio.get_running_loop().create_future()
        self._intake.append(([event.record() for event in events], future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_intake())
        try:
            results = await asyncio.wait_for(asyncio.shield(future), self.intake_deadline)
        except TimeoutError:
            raise OutcomeUnknown(self.intake_deadline) from None
        for event, result in zip(events, results, strict=True):
            if not result.duplicate:
                self.metrics.event_received(event.organization, event.type.value)
        return results

    async def metrics_text(self, access: Access) -> str:
        """This process's metrics as `access` may see them: its organizations' series
        and their webhooks' gauges (read from the state, for those organizations only),
        and with every organization, the installation's (the queue read from the state)."""
        now = self.clock()
        webhooks = await self.db.run(webhook_gauges, self.db.store, access.visible(None), now)
        if not access.all_organizations:
            return self.metrics.render(access.sees, None, webhooks)
        counts = await self.db.run(self.db.store.queue_counts)
        oldest = await self.db.run(self.db.store.oldest_due, now)
        age = max(0.0, now - oldest) if oldest else 0.0
        text = self.metrics.render(access.sees, QueueGauges(counts, age), webhooks)
        if self.retention is not None and self.retention.size is not None:
            text += "\n".join(state_lines(self.retention.size, now)) + "\n"
        return text

    # -- what the HTTP API reads and changes, each a call on the database thread ----

    async def deliveries(
        self,
        *,
        organizations: Sequence[str] | None,
        status: str | None = None,
        webhook: str | None = None,
        event: EventKey | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """The deliveries of `organizations` (None: all), newest first."""
        return await self.db.run(
            self.db.store.deliveries,
            status=status,
            organizations=organizations,
            webhook=webhook,
            event=event,
            limit=limit,
        )

    async def delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        """One delivery with its attempts, or None."""
        return await self.db.run(self.db.store.delivery, delivery_id)

    async def replay(self, delivery_ids: Sequence[str]) -> list[str]:
        """Queue finished deliveries again; returns those replayed, and wakes the
        workers for them."""
        replayed = await self.db.run(self.db.store.replay, delivery_ids, self.clock())
        if replayed:
            self.wake()
        return replayed

    async def webhook_live(self, organization: str, name: str) -> bool:
        """Whether the webhook is in the live state (not deleted by apply)."""
        live = await self.db.run(self.db.store.webhooks, organization)
        return any(w.name == name for w in live)

    async def resume(self, organization: str, name: str, actor: str) -> ResumeOutcome:
        """Lift a pause the dispatcher set, into the audit log by `actor`."""
        return await self.db.run(self.db.store.resume, organization, name, actor)

    async def endpoint_health(self, organizations: Sequence[str] | None) -> HealthReport:
        """The webhooks' endpoint health, of `organizations` (None: all), as of now."""
        return await self.db.run(endpoint_health, self.db.store, organizations, self.clock())

    async def token(self, digest: str) -> TokenRecord | None:
        """The API token whose secret hashes to `digest`, usable or not."""
        return await self.db.run(find_by_hash, self.db.store, digest)

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        """`call(store, *args)` on the database thread, where every call of the
        dispatcher's runs: the console's reads and sessions, when it has no
        connection of its own (reconciler/dispatch/console/reader.py)."""
        return await self.db.run(call, self.db.store, *args)

    async def _flush_intake(self) -> None:
        while self._intake:
            # Whole batches, up to INTAKE_BATCH events (or one larger batch).
            take, size = 0, 0
            while take < len(self._intake) and (
                take == 0 or size + len(self._intake[take][0]) <= INTAKE_BATCH
            ):
                size += len(self._intake[take][0])
                take += 1
            units, self._intake = self._intake[:take], self._intake[take:]
            # The worker takes what it has room for at once: those deliveries are
            # stored leased to it and handed over at commit, the rest wait their turn.
            room = self.worker.reserve()
            since = self.clock()
            try:
                results, handed = await self.db.run(
                    self.db.store.add_events_and_claim,
                    [record for records, _ in units for record in records],
                    since,
                    self.worker.owner,
                    room,
                    self.worker.lease(),
                )
            except Exception:
                # One bad batch must not fail its neighbours: store them one by one,
                # and let only the failing ones hear of it.
                self.worker.unreserve(room)
                await self._store_one_by_one(units)
                continue
            self.worker.unreserve(room)
            self.worker.hand(handed, since)
            if _new_deliveries(results) > len(handed):
                self.wake()
            start = 0
            for records, future in units:
                if not future.done():
                    future.set_result(results[start : start + len(records)])
                start += len(records)

    async def _store_one_by_one(self, units: list[_IntakeUnit]) -> None:
        for records, future in units:
            try:
                results = await self.db.run(self.db.store.add_events, records, self.clock())
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if _new_deliveries(results):
                    self.wake()
                if not future.done():
                    future.set_result(results)

    def wake(self) -> None:
        """New work is due: workers look now rather than at their next poll."""
        self.worker.notify()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler-workers")
        if self.retention is not None:
            self._retention_task = asyncio.create_task(
                self.retention.run_forever(self._retention_stop), name="reconciler-retention"
            )

    async def _run(self) -> None:
        released = await self.db.run(self.db.store.release_dead, owner_alive, self.clock())
        if released:
            log.info("took back %d deliveries from a dispatcher that died", released)
        while True:
            try:
                await self.worker.run_forever(lambda: self._stopping, self._wake)
                return
            except Exception:
                # Store failures are handled inside; this is a bug. Workers must not
                # stop while the API keeps accepting events: log it and go on.
                log.exception("the delivery loop failed; starting it again")
                await asyncio.sleep(self.settings.poll_interval)

    def stop_claiming(self) -> None:
        self._stopping = True
        self._wake.set()
        self._retention_stop.set()
        if self.retention is not None:
            self.retention.stop()

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop claiming, let in-flight requests finish within `grace`, release the
        rest; then close the sender and join the database thread, whatever failed
        before, so the store may be closed once this returns."""
        self.stop_claiming()
        try:
            if self._task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), grace)
                except TimeoutError:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
            released = await self.db.run(self.db.store.release, self.worker.owner, self.clock())
            if released:
                log.info("released %d in-flight deliveries for another worker", released)
        finally:
            try:
                await self.sender.aclose()
            finally:
                self.db.close()
                await self._stop_retention()

    async def _stop_retention(self) -> None:
        """Retention ends after its batch under way; its thread is joined and its
        connection closed."""
        if self.retention is None:
            return
        if self._retention_task is not None:
            with contextlib.suppress(Exception):
                await self._retention_task
        await asyncio.get_running_loop().run_in_executor(None, self.retention.close)


def webhook_gauges(
    store: QueueStore, organizations: Sequence[str] | None, now: float
) -> list[WebhookGauges]:
    """The per-webhook gauges of `organizations` (None: all), in one query of the queue."""
    queues = store.webhook_queue(organizations, now)
    breakers = breaker_states(store, [q.key for q in queues])
    return [
        WebhookGauges(
            q.organization,
            q.webhook,
            breakers[q.key],
            q.pending_due + q.pending_later,
            oldest_due_age(q.oldest_due_at, now),
        )
        for q in queues
    ]


def _new_deliveries(results: Sequence[IntakeResult]) -> int:
    return sum(result.deliveries for result in results if not result.duplicate)
