"""Workers: claim due deliveries under a lease, render, send, record.

Store calls run on one database thread (the store's connection is not shared
between threads at once); HTTP requests run on the event loop, never inside a
transaction. Time comes from an injected clock, so tests move it instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from reconciler import templates
from reconciler.dispatch.metrics import Metrics
from reconciler.dispatch.ratelimit import Holds, admit
from reconciler.dispatch.retry import RETRY_AFTER_CAP, Backoff, parse_retry_after
from reconciler.dispatch.sender import Outcome, Sender
from reconciler.dispatch.ssrf import NetworkPolicy, TargetRefused
from reconciler.durations import parse_duration
from reconciler.envaccess import EnvAccess
from reconciler.events import event_data
from reconciler.model import WebhookSpec
from reconciler.render import Renderer, RenderError, utc
from reconciler.sent_request import as_sent, secret_values, unresolved
from reconciler.signing import SigningSecretError, signature_header
from reconciler.store import Backend
from reconciler.store.breakers import BreakerRecord, BreakerReport, may_probe
from reconciler.store.liveness import gone_here
from reconciler.store.queue import (
    DEFAULT_TIMEOUT,
    LEASE_MARGIN,
    AttemptOutcome,
    AttemptResult,
    Claim,
    EventKey,
    SentRequest,
    lease_of,
)

log = logging.getLogger("reconciler.dispatch")

# A delivery is sent only while its lease, counted from before the claim was sent
# to the state, has the request's timeout and this much left: a claim that came back
# late (a stalled link, a slow commit) is put back, never sent.
SEND_MARGIN = 1.0
HEARTBEAT = 3.0  # seconds between renewals of held leases and looks for dead owners
# How long the live state's organizations and shared list are trusted before they
# are read again: an apply that changes them reaches running workers this fast.
ENV_ACCESS_TTL = 1.0
ENV_ACCESS_RETRY = 5.0  # when they cannot be read at all, deliveries wait this long
# How long this process trusts its view of the webhooks' circuit breakers (by the
# injected clock) before reading them again; read at once after it recorded a
# failure. The healthy path reads nothing else of them.
BREAKER_TTL = 1.0
DEFAULT_PAUSE_AFTER = 3 * 86_400.0  # a breaker failing this long pauses its webhook
SLOT_MARGIN = 0.001  # a loop waiting for a slot wakes this long after it, not before
INTERRUPTED = (
    "interrupted: the dispatcher shut down before the receiver answered "
    "(it may have the request); due again at once"
)
T = TypeVar("T")


def owner_id() -> str:
    """host:pid:random, so a restarted process on this host can spot its dead self."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True  # another machine's: its lease expires on its own
    return not gone_here(int(rest.partition(":")[0] or 0), host)


class Database:
    """Runs store calls one at a time on a dedicated thread, and notes, by `clock`,
    when one last succeeded (`answered`) and last failed (`failed`), and whether the
    last one to end failed (`failing`): readiness.py."""

    def __init__(self, store: Backend, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.answered: float | None = None
        self.failed: float | None = None
        self.failing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconciler-db")

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._noted, call, args, kwargs)

    def _noted(self, call: Callable[..., T], args: Any, kwargs: Any) -> T:
        try:
            result = call(*args, **kwargs)
        except BaseException:
            self.failed, self.failing = self.clock(), True
            raise
        self.answered, self.failing = self.clock(), False
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class WorkerSettings:
    batch: int = 200
    concurrency: int = 200
    poll_interval: float = 0.5
    # A webhook whose endpoint has been down (its circuit breaker open) this long is
    # paused, as after HTTP 410, until an apply or `webhooks resume`.
    pause_after: float = DEFAULT_PAUSE_AFTER
    # Every `heartbeat` seconds the loop renews the leases it has held that long and
    # gives back deliveries held by dead dispatchers of this host.
    heartbeat: float = HEARTBEAT


@dataclass
class _Held:
    """A delivery this worker holds: its lease (seconds), and by the worker's clock
    when the lease was last stamped and when it ends, both counted from before the
    call that stamped it (the state stamped it then or later, never sooner)."""

    lease: float
    stamped: float
    until: float


class Worker:
    def __init__(
        self,
        db: Database,
        sender: Sender,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        settings: WorkerSettings | None = None,
        owner: str | None = None,
        policy: NetworkPolicy | None = None,
        holds: Holds | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.sender = sender
        self.env = os.environ if env is None else env
        self.clock = clock
        self.rng = rng or random.Random()
        self.settings = settings or WorkerSettings()
        self.owner = owner or owner_id()
        self.policy = policy or NetworkPolicy()
        # Receivers' Retry-After holds, as the state has them (see ratelimit.py).
        self.holds = holds or Holds()
        self._holds_lock = asyncio.Lock()
        # When the rate-limit slots this worker put deliveries off to come (a heap):
        # the loop looks at the queue then rather than at its next poll, so a
        # delivery goes at its slot, not up to a poll interval later in a bunch
        # with the slots after it.
        self._slots: list[float] = []
        self.metrics = metrics or Metrics()
        self._renderers: dict[str, Renderer] = {}  # a live definition's text -> its renderer
        # Which variables each organization may read, as last read from the state.
        self._access: EnvAccess | None = None
        self._access_read = 0.0  # time.monotonic() when it was read
        self._access_lock = asyncio.Lock()
        # Deliveries intake stored leased to this worker (see reserve()).
        self._in_flight: set[asyncio.Task[AttemptResult]] = set()
        self._handed: list[Claim] = []
        self._reserved = 0
        self._taking = False  # run_forever is running, with no backlog due, not stopping
        self._news = False  # deliveries came due in the queue since the last claim
        self._wake: asyncio.Event | None = None
        self._limit = asyncio.Semaphore(self.settings.concurrency)
        # The circuit breakers that are not plainly healthy, as last read from the
        # state (at `_breakers_read`, by the clock), and the probes this process has
        # out: webhook -> (the probe's delivery, its breaker when the probe was taken).
        self._breakers: dict[tuple[str, str], BreakerRecord] = {}
        self._breakers_read: float | None = None
        # Outcomes that moved a breaker were recorded `_breakers_moved` times; the
        # view was read after `_breakers_seen` of them.
        self._breakers_moved = 0
        self._breakers_seen = 0
        self._breakers_lock = asyncio.Lock()
        self._probing: dict[tuple[str, str], tuple[str, BreakerRecord]] = {}
        self.turned: float | None = None  # when run_forever's loop last turned, by the clock
        self._held: dict[str, _Held] = {}  # delivery id -> its lease, until recorded

    async def run_once(self, event: EventKey | None = None) -> int:
        """Claim what is due (of one event, if given), deliver it, record the outcomes;
        returns how many."""
        now = self.clock()
        # No more than can be in flight at once: a claimed delivery waiting for a
        # free slot would see its lease run out.
        limit = min(self.settings.batch, self.settings.concurrency)
        claims = await self.db.run(self.db.store.claim, self.owner, limit, now, self.lease(), event)
        if not claims:
            return 0
        self._took(claims, now)
        results = await asyncio.gather(*(self._deliver(claim) for claim in claims))
        await self.db.run(self.db.store.finish, results, self.owner, self.clock())
        self._recorded(results)
        return len(claims)

    def notify(self) -> None:
        """Deliveries are due in the queue: claim now rather than at the next poll."""
        self._news = True
        if self._wake is not None:
            self._wake.set()

    # -- deliveries handed over by intake ---------------------------------------------

    def reserve(self) -> int:
        """How many of the deliveries intake is about to store this worker takes at
        once: intake stores them already leased to it (`owner`, `lease()`) and hands
        them over with `hand()` when they are committed, so they go out without a
        claim, that is without another transaction to wait for. None while the
        worker has a backlog due (the queue's order comes first), is stopping, or is
        not running. Each reservation ends with `unreserve()`."""
        count = min(self._free(), self.settings.batch) if self._taking else 0
        self._reserved += count
        return count

    def unreserve(self, count: int) -> None:
        self._reserved -= count

    def hand(self, claims: list[Claim], since: float) -> None:
        """Deliveries stored leased to this worker, to send now; `since`: the clock
        before the call that stored them. A worker that has stopped leaves them to
        the release at shutdown."""
        if claims:
            self._took(claims, since)
            self._handed += claims
            if self._wake is not None:
                self._wake.set()

    def _free(self) -> int:
        taken = len(self._in_flight) + len(self._handed) + self._reserved
        return max(0, self.settings.concurrency - taken)

    async def run_forever(self, stopping: Callable[[], bool], wake: asyncio.Event) -> None:
        """Keep up to `concurrency` requests in flight; claim as slots free up and
        record outcomes as they come, so one slow receiver holds one slot, not a batch.

        A failing store call (the database restarting, a full disk) never ends the
        loop: it is logged, and claiming pauses while recording is retried, with
        growing pauses, until the store answers again. Outcomes not yet recorded are
        kept and recorded then; requests are never sent twice for that.

        Returns once `stopping()` is true, nothing is in flight and every outcome is
        recorded.
        """
        in_flight = self._in_flight
        completed: list[asyncio.Task[AttemptResult]] = []  # finished, not yet looked at
        unrecorded: list[AttemptResult] = []
        trouble = _StoreTrouble(self.settings.poll_interval)

        def on_done(task: asyncio.Task[AttemptResult]) -> None:
            # One list and the wake event, rather than asyncio.wait() over every
            # request in flight: that hooks and unhooks each of them at every turn.
            completed.append(task)
            wake.set()

        def start(claims: list[Claim]) -> None:
            for claim in claims:
                task = asyncio.create_task(self._deliver(claim))
                task.add_done_callback(on_done)
                in_flight.add(task)

        def wanted() -> int:
            return 0 if stopping() else min(self._free(), self.settings.batch)

        # The last claim found fewer due than it asked for: until notify() or the
        # poll, claiming again would find nothing.
        drained = False
        looked = time.monotonic()  # when the queue was last looked at
        self._wake = wake
        beat = asyncio.create_task(self._heartbeat(), name="reconciler-leases")
        try:
            while True:
                self.turned = self.clock()
                woken, self._news = self._news, False
                if time.monotonic() - looked >= self.settings.poll_interval:
                    drained = False  # the poll: retries may have come due since
                wake.clear()  # before claiming: a wake during the claim is not lost
                if self._handed:
                    handed, self._handed = self._handed, []
                    start(handed)
                if completed:
                    finished, completed[:] = completed[:], []
                    in_flight.difference_update(finished)
                    unrecorded += [task.result() for task in finished]
                limit = wanted()
                if unrecorded and trouble.ready():
                    # Recording the outcomes and claiming the slots they free are one
                    # transaction, so a busy worker waits for the database once a turn.
                    unrecorded, claims = await self._settle(unrecorded, limit, trouble)
                    drained, looked = len(claims) < limit, time.monotonic()
                    start(claims)
                elif limit and (woken or not drained) and not unrecorded and trouble.ready():
                    claims = await self._claim(limit, trouble)
                    drained, looked = len(claims) < limit, time.monotonic()
                    start(claims)
                self._taking = drained and not stopping()
                if not in_flight and not unrecorded and stopping():
                    self._taking = False
                    return
                if not completed and not self._handed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(trouble.pause() or self._poll_wait()):
                            await wake.wait()
                    if not wake.is_set():
                        drained = False  # the poll: retries may have come due since
        except asyncio.CancelledError:
            self._taking = False
            # Out of grace: abandon the requests. Each one cut short is recorded as an
            # interrupted attempt (_deliver), with the outcomes not yet recorded; the
            # deliveries still waiting for a slot are released by the caller.
            for task in in_flight:
                task.cancel()
            ended = await asyncio.gather(*in_flight, return_exceptions=True)
            unrecorded += [r for r in ended if isinstance(r, AttemptResult)]
            if unrecorded:
                await self._record(unrecorded, trouble)  # on failure: logged; leases expire
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    def _poll_wait(self) -> float:
        """Seconds until the queue is looked at again: the poll interval, or less
        when a slot this worker put a delivery off to comes sooner."""
        now = self.clock()
        while self._slots and self._slots[0] <= now:
            heapq.heappop(self._slots)
        if not self._slots:
            return self.settings.poll_interval
        return min(self.settings.poll_interval, self._slots[0] - now + SLOT_MARGIN)

    async def _claim(self, limit: int, trouble: _StoreTrouble) -> list[Claim]:
        now = self.clock()
        try:
            claims = await self.db.run(self.db.store.claim, self.owner, limit, now, self.lease())
        except Exception:
            trouble.failed("claiming deliveries")
            return []
        trouble.recovered()
        self._took(claims, now)
        return claims

    async def _record(
        self, results: list[AttemptResult], trouble: _StoreTrouble
    ) -> list[AttemptResult]:
        """Record `results`; returns what is still to record (all of it on failure)."""
        try:
            await self.db.run(self.db.store.finish, results, self.owner, self.clock())
        except Exception:
            trouble.failed(f"recording {len(results)} attempts")
            return results
        trouble.recovered()
        self._recorded(results)
        return []

    async def _settle(
        self, results: list[AttemptResult], limit: int, trouble: _StoreTrouble
    ) -> tuple[list[AttemptResult], list[Claim]]:
        """Record `results` and claim up to `limit` more, in one transaction; returns
        what is still to record (all of it, on failure) and the claims."""
        if not limit:
            return await self._record(results, trouble), []
        now = self.clock()
        try:
            claims = await self.db.run(
                self.db.store.finish_and_claim, results, self.owner, now, limit, self.lease()
            )
        except Exception:
            trouble.failed(f"recording {len(results)} attempts")
            return results, []
        trouble.recovered()
        self._recorded(results)
        self._took(claims, now)
        return [], claims

    def _recorded(self, results: Sequence[AttemptResult]) -> None:
        """Outcomes are in the state: their leases are no longer held; when any moved
        a circuit breaker, the view of them is read again before the next attempt."""
        for r in results:
            self._held.pop(r.delivery_id, None)
        if any(r.breaker is not None for r in results):
            self._breakers_moved += 1

    def lease(self) -> float:
        """The shortest lease a claim takes: the store leases each delivery for its
        webhook's timeout plus LEASE_MARGIN (queue.lease_of)."""
        return LEASE_MARGIN

    # -- leases -------------------------------------------------------------------

    def _took(self, claims: Sequence[Claim], since: float) -> None:
        """`claims` were leased by a call made at `since` (by the clock, before the
        call): their leases end, as this worker counts them, `lease` after that,
        however late the call came back."""
        for claim in claims:
            if claim.lease:
                self._held[claim.delivery_id] = _Held(claim.lease, since, since + claim.lease)

    def may_send(self, claim: Claim, timeout: float, now: float) -> bool:
        """Whether `claim`'s lease, as this worker counts it, outlasts a request of
        `timeout` started `now`, with SEND_MARGIN to spare."""
        held = self._held.get(claim.delivery_id)
        return held is None or now + timeout + SEND_MARGIN <= held.until

    async def renew_leases(self) -> int:
        """Renew the leases held at least one heartbeat since they were stamped (the
        state re-checks that each is still this worker's); a lease another dispatcher
        took is marked lost, and its delivery, if not sent yet, is not sent.
        Returns how many were renewed."""
        now = self.clock()
        due = [
            (delivery, held.lease)
            for delivery, held in self._held.items()
            if now - held.stamped >= self.settings.heartbeat
        ]
        if not due:
            return 0
        renewed = set(await self.db.run(self.db.store.renew, self.owner, due, now))
        for delivery, lease in due:
            held = self._held.get(delivery)
            if held is None:
                continue  # recorded meanwhile
            if delivery in renewed:
                held.stamped, held.until = now, now + lease
            elif held.until != float("-inf"):
                held.until = float("-inf")
                log.warning("lost the lease of delivery %s: it is not sent from here", delivery)
        return len(renewed)

    async def reap_dead(self) -> int:
        """Give back, due at once, the deliveries held by dispatchers of this host
        that are gone (a SIGKILL, a crash), without waiting for their leases."""
        released = await self.db.run(self.db.store.release_dead, owner_alive, self.clock())
        if released:
            log.info("took back %d deliveries from a dispatcher that died", released)
            self.notify()
        return released

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            for what, call in (
                ("renewing leases", self.renew_leases),
                ("looking for dead dispatchers", self.reap_dead),
            ):
                try:
                    await call()
                except Exception as exc:
                    reason = (str(exc).strip().splitlines() or [""])[0]
                    log.warning(
                        "the state failed while %s: %s: %s", what, type(exc).__name__, reason
                    )

    async def _deliver(self, claim: Claim) -> AttemptResult:
        async with self._limit:
            started = self.clock()
            try:
                result = await self._attempt(claim, started)
            except asyncio.CancelledError:
                # Shutdown's grace ran out while the request was out: the receiver may
                # or may not have it. Recorded, and due again at once, so the log shows
                # what happened; the next send has the same webhook-id.
                ended = self.clock()
                result = AttemptResult(
                    claim.delivery_id,
                    claim.attempt,
                    started,
                    (ended - started) * 1000,
                    "retry",
                    error=INTERRUPTED,
                    next_due=ended,
                )
            except Exception:  # a bug must fail one delivery, not stop the worker
                log.exception("delivery %s failed unexpectedly", claim.delivery_id)
                result = AttemptResult(
                    claim.delivery_id,
                    claim.attempt,
                    started,
                    0.0,
                    "failed",
                    error="internal error while sending; see the dispatcher's log",
                    sent=False,
                )
        probing = self._probing.get((claim.organization, claim.webhook))
        if probing is not None and probing[0] == claim.delivery_id:
            del self._probing[(claim.organization, claim.webhook)]
            if result.breaker is None:
                # The probe did not reach the endpoint (a rendering error, a rate
                # limit, a shutdown): another may go at once.
                probe = BreakerReport(claim.organization, claim.webhook, "release", probe=True)
                result = replace(result, breaker=probe)
        self.metrics.attempt(claim, result)
        log.info(
            "attempt delivery=%s event=%s/%s webhook=%s/%s attempt=%d outcome=%s status=%s "
            "duration_ms=%.1f%s",
            claim.delivery_id,
            claim.event.organization,
            claim.event.id,
            claim.organization,
            claim.webhook,
            claim.attempt,
            result.outcome,
            result.status,
            result.duration_ms,
            f" error={result.error!r}" if result.error else "",
        )
        return result

    async def _attempt(self, claim: Claim, started: float) -> AttemptResult:
        def unsent(outcome: AttemptOutcome, error: str) -> AttemptResult:
            return AttemptResult(
                claim.delivery_id, claim.attempt, started, 0.0, outcome, error=error, sent=False
            )

        if claim.spec is None:
            return unsent("cancelled", "cancelled: the webhook was deleted by apply")
        renderer = self._renderer(claim.spec)
        spec = renderer.spec
        if not spec.enabled:
            return unsent("cancelled", "cancelled: the webhook is disabled")
        if claim.paused_reason:
            return unsent("failed", f"the webhook is paused ({claim.paused_reason})")
        if spec.event.value != claim.event.type:
            return unsent(
                "cancelled", f"cancelled: the webhook now fires on {spec.event.value} events"
            )
        key = (claim.organization, claim.webhook)
        breaker_wait = await self._breaker_gate(claim, spec, started)
        if breaker_wait is not None:
            # The endpoint is down and this is not the probe: the delivery waits in
            # the queue, and no attempt is spent.
            return _deferred(claim, started, breaker_wait)
        await self._refresh_holds(started)
        wait_until, keeps_slot = admit(claim, started, self.holds.until(key))
        if wait_until is not None:
            if keeps_slot:
                heapq.heappush(self._slots, wait_until)
            return _deferred(claim, started, wait_until, keeps_slot=keeps_slot)
        access = await self._env_access()
        if access is None:
            return _deferred(claim, started, started + ENV_ACCESS_RETRY)
        # The environment as this delivery's organization may read it: a reference
        # to any other variable fails it, whatever wrote the definition.
        env = access.scoped(self.env, claim.organization)
        timestamp = int(started)
        try:
            request = renderer.render(event_data(claim.event), env)
            self.policy.check_url(request.url)
            headers = {**request.headers, "webhook-id": claim.delivery_id}
            headers["webhook-timestamp"] = str(timestamp)
            secrets = _signing_secrets(spec, env)
            if secrets:
                headers["webhook-signature"] = signature_header(
                    secrets, claim.delivery_id, timestamp, request.body or b""
                )
        except (RenderError, SigningSecretError, TargetRefused) as exc:
            return unsent("failed", str(exc))
        timeout = parse_duration(spec.timeout) if spec.timeout else DEFAULT_TIMEOUT
        now = self.clock()
        if not self.may_send(claim, timeout, now):
            # The claim came back too late (or its lease was lost): another
            # dispatcher may hold the delivery by now. Back to the queue, unsent.
            log.info("lease too short to send delivery=%s; put back", claim.delivery_id)
            return _deferred(claim, started, now)
        sending = type(request)(request.method, request.url, headers, request.body)
        outcome = await self.sender.send(sending, timeout)
        values = secret_values(renderer, env)
        if values:
            # A receiver may echo what it got (an Authorization header, the URL):
            # what it answered is kept with the secrets put back as references.
            outcome = _without(outcome, values)
        result = self._result(
            claim, spec, started, outcome, as_sent(sending, renderer, env, values)
        )
        hold = self._hold(outcome)
        if hold is not None:
            await self._write_hold(key, hold)
        return result

    def _hold(self, outcome: Outcome) -> float | None:
        """Until when the receiver asked for a pause, if it did (Retry-After on a
        response that is retried), capped at RETRY_AFTER_CAP."""
        if outcome.kind != "retry":
            return None
        now = self.clock()
        retry_after = parse_retry_after(outcome.retry_after, now)
        return None if retry_after is None else now + min(retry_after, RETRY_AFTER_CAP)

    async def _write_hold(self, key: tuple[str, str], until: float) -> None:
        """Hold the webhook here at once, and in the state for every dispatcher."""
        self.holds.hold(key, until)
        try:
            await self.db.run(self.db.store.hold, key[0], key[1], until)
        except Exception:
            log.exception(
                "the state failed while holding webhook %s/%s; only this process holds it",
                *key,
            )

    async def _refresh_holds(self, now: float) -> None:
        """Read the state's holds if this process's copy is older than its TTL. A
        failed read keeps the copy (and is tried again after the TTL)."""
        if not self.holds.stale(now):
            return
        async with self._holds_lock:
            if not self.holds.stale(now):
                return
            try:
                read = await self.db.run(self.db.store.holds, now)
            except Exception:
                log.exception("the state failed while reading the webhooks' holds")
                read = {}
            self.holds.refreshed(read, now)

    def _result(
        self,
        claim: Claim,
        spec: WebhookSpec,
        started: float,
        outcome: Outcome,
        request: SentRequest | None = None,
    ) -> AttemptResult:
        common: dict[str, Any] = {
            "request": request,
            "delivery_id": claim.delivery_id,
            "number": claim.attempt,
            "started_at": started,
            "duration_ms": outcome.duration_ms,
            "status": outcome.status,
            "response_headers": outcome.response_headers,
            "response_excerpt": outcome.excerpt,
            "error": outcome.error,
        }
        pause: str | None = None
        if self._breakers or self._probing or _down(outcome):
            common["breaker"], pause = self._breaker_report(claim, outcome)
        if outcome.kind == "delivered":
            return AttemptResult(outcome="delivered", **common)
        if outcome.kind == "gone":
            return AttemptResult(
                outcome="failed",
                pause_webhook=f"paused by the dispatcher after HTTP 410 on {claim.delivery_id}",
                **common,
            )
        if outcome.kind == "retry":
            now = self.clock()
            retry_after = parse_retry_after(outcome.retry_after, now)
            backoff = Backoff.from_policy(spec.retry)
            delay = backoff.delay_after(claim.retry_number, self.rng, retry_after)
            if delay is not None:
                return AttemptResult(
                    outcome="retry", next_due=now + delay, pause_webhook=pause, **common
                )
            common["error"] = (
                f"{outcome.error}; retries exhausted after {claim.retry_number} attempts"
            )
        return AttemptResult(outcome="failed", pause_webhook=pause, **common)

    # -- the circuit breaker ------------------------------------------------------

    async def _breaker_gate(self, claim: Claim, spec: WebhookSpec, now: float) -> float | None:
        """None when the delivery may go now (its breaker is closed, or this is the
        probe); else when it is to be tried again."""
        key = (claim.organization, claim.webhook)
        record = (await self._breaker_view(now)).get(key)
        if record is None or record.state == "closed":
            return None
        # A probe that is out answers within its timeout: look again then.
        wait = now + (parse_duration(spec.timeout) if spec.timeout else DEFAULT_TIMEOUT)
        if key in self._probing:
            return wait
        if not may_probe(record, now):
            if record.state == "open" and record.next_probe_at is not None:
                return record.next_probe_at
            return min(wait, record.probe_expires or wait)
        try:
            taken, fresh = await self.db.run(
                self.db.store.take_probe, *key, self.owner, now, lease_of(claim.spec, self.lease())
            )
        except Exception:
            log.exception("the state failed while taking the probe of %s/%s", *key)
            return now + ENV_ACCESS_RETRY
        if fresh is None or fresh.healthy:
            self._breakers.pop(key, None)
        else:
            self._breakers[key] = fresh
        if taken:
            assert fresh is not None
            self._probing[key] = (claim.delivery_id, fresh)
            log.info(
                "breaker probe webhook=%s/%s delivery=%s failures=%d probes_failed=%d",
                *key,
                claim.delivery_id,
                fresh.consecutive_failures,
                fresh.probes_failed,
            )
            return None
        if fresh is None or fresh.state == "closed":
            return None
        if fresh.state == "open" and fresh.next_probe_at is not None:
            return max(fresh.next_probe_at, now)
        return min(wait, fresh.probe_expires or wait)

    def _breaker_report(
        self, claim: Claim, outcome: Outcome
    ) -> tuple[BreakerReport | None, str | None]:
        """What the attempt tells the webhook's breaker, if anything, and a reason to
        pause the webhook when its probe failed after `pause_after` of failures."""
        key = (claim.organization, claim.webhook)
        probing = self._probing.get(key)
        probe = probing[1] if probing is not None and probing[0] == claim.delivery_id else None
        down = _down(outcome)
        if down:
            health: Literal["down", "up"] = "down"
        elif outcome.status is not None and (probe is not None or key in self._breakers):
            health = "up"  # an answer that is not a 5xx: the endpoint is there
        else:
            return None, None
        report = BreakerReport(*key, health, outcome.error, probe=probe is not None)
        pause = None
        if down and probe is not None and probe.failing_since is not None:
            failing = self.clock() - probe.failing_since
            if failing >= self.settings.pause_after:
                pause = (
                    f"paused by the dispatcher: its endpoint has failed for "
                    f"{_span(failing)} (since {utc(probe.failing_since)}; circuit breaker "
                    f"open, {probe.probes_failed + 1} probes failed, last: {outcome.error})"
                )
        return report, pause

    async def _breaker_view(self, now: float) -> dict[tuple[str, str], BreakerRecord]:
        """The breakers that are not plainly healthy, read at most once per
        BREAKER_TTL by the clock (and after this process recorded a failure)."""
        read = self._breakers_read
        fresh = self._breakers_seen == self._breakers_moved
        if read is not None and fresh and read <= now < read + BREAKER_TTL:
            return self._breakers
        async with self._breakers_lock:
            read = self._breakers_read
            fresh = self._breakers_seen == self._breakers_moved
            if read is None or not fresh or not read <= now < read + BREAKER_TTL:
                # Marked read once the read is done (on failure too: not once per
                # attempt); attempts arriving meanwhile wait for it on the lock.
                moved = self._breakers_moved
                try:
                    records = await self.db.run(self.db.store.breakers)
                except Exception:
                    log.exception(
                        "the state failed while reading the circuit breakers; keeping the last read"
                    )
                else:
                    self._breakers = {record.key: record for record in records}
                finally:
                    self._breakers_read, self._breakers_seen = now, moved
        return self._breakers

    async def _env_access(self) -> EnvAccess | None:
        """The live state's organizations and shared list, read at most once per
        ENV_ACCESS_TTL; None when they were never read and cannot be now."""
        if self._access is not None and time.monotonic() - self._access_read < ENV_ACCESS_TTL:
            return self._access
        async with self._access_lock:
            if self._access is None or time.monotonic() - self._access_read >= ENV_ACCESS_TTL:
                self._access_read = time.monotonic()  # on failure too: not once per attempt
                try:
                    self._access = await self.db.run(self.db.store.env_access)
                except Exception:
                    log.exception(
                        "the state failed while reading which variables each organization "
                        "may read; %s",
                        "keeping the last read" if self._access else "deliveries wait",
                    )
        return self._access

    def _renderer(self, text: str) -> Renderer:
        """The definition, parsed, and its request prepared, once per version of it."""
        renderer = self._renderers.get(text)
        if renderer is None:
            if len(self._renderers) > 10_000:
                self._renderers.clear()
            spec = WebhookSpec.model_validate_json(text)
            renderer = self._renderers[text] = Renderer(spec)
        return renderer


class _StoreTrouble:
    """After a failed store call: how long to wait before the next (0.5 s doubling
    to 30 s, from the loop's poll interval), and one log line per failure."""

    CAP = 30.0

    def __init__(self, first: float) -> None:
        self.first = max(first, 0.001)
        self.delay = 0.0
        self.until = 0.0

    def failed(self, what: str) -> None:
        self.delay = min(self.CAP, self.delay * 2 if self.delay else self.first)
        self.until = time.monotonic() + self.delay
        log.exception("the state failed while %s; trying again in %.1fs", what, self.delay)

    def recovered(self) -> None:
        if self.delay:
            log.info("the state answers again")
        self.delay = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.until

    def pause(self) -> float:
        """Seconds until the next store call may be made (0: now)."""
        return max(0.0, self.until - time.monotonic())


def _down(outcome: Outcome) -> bool:
    """An attempt that failed as an endpoint that is down fails: a timeout, a
    connection error, a 5xx. Not a 4xx (429 included: Retry-After paces it), nor a
    request that could not be made (a rendering error, a refused target)."""
    return outcome.kind == "retry" and (outcome.status is None or outcome.status >= 500)


def _span(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m"


def _deferred(
    claim: Claim, started: float, next_due: float, *, keeps_slot: bool = False
) -> AttemptResult:
    """The delivery goes back to the queue, due at `next_due`, without an attempt spent:
    a breaker's wait, a rate limit's slot, or a state that could not be read."""
    return AttemptResult(
        claim.delivery_id,
        claim.attempt,
        started,
        0.0,
        "deferred",
        next_due=next_due,
        keeps_slot=keeps_slot,
        sent=False,
    )


def _signing_secrets(spec: WebhookSpec, env: Mapping[str, str]) -> list[str]:
    if not spec.signing_secret:
        return []
    secrets = []
    for name in templates.env_names(spec.signing_secret):
        if name not in env:
            raise RenderError(f"environment variable {name} is not set")
        secrets.append(env[name])
    return secrets


def _without(outcome: Outcome, values: list[tuple[str, str]]) -> Outcome:
    """`outcome` with the secret `values` put back as references in what the receiver
    answered (excerpt and headers) and in the error."""
    return dataclasses.replace(
        outcome,
        excerpt=unresolved(outcome.excerpt, values),
        response_headers={k: unresolved(v, values) for k, v in outcome.response_headers.items()},
        error=None if outcome.error is None else unresolved(outcome.error, values),
    )
