"""The delivery queue's records: events, deliveries and their attempts.

Times here are seconds since the epoch (floats), taken from the dispatcher's
injected clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol

from reconciler.durations import parse_duration, parse_rate
from reconciler.envaccess import EnvAccess
from reconciler.store.breakers import BreakerRecord, BreakerReport

# held: recorded while its webhook is paused (after HTTP 410, or down for
# `serve --pause-after`); never claimed, never removed by retention, and pending,
# due at once, when the webhook is resumed (`webhooks resume`, the API, an apply).
Status = Literal["pending", "held", "in_flight", "delivered", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("pending", "held", "in_flight", "delivered", "failed", "cancelled")
FINAL_STATUSES = ("delivered", "failed", "cancelled")
EXCERPT_LIMIT = 4096
# What an attempt does to its delivery; deferred: not sent, by the webhook's rate
# limit or a receiver's Retry-After.
AttemptOutcome = Literal["delivered", "retry", "failed", "cancelled", "deferred"]
# Leases. A claim holds a delivery for its webhook's timeout plus LEASE_MARGIN (a
# webhook without a timeout: DEFAULT_TIMEOUT), so that a request sent while its
# lease is fresh ends before the lease does even when the database cannot be reached
# meanwhile; the dispatcher renews the leases of what it still holds, and sends
# nothing whose lease, counted from before its claim was sent, has less than the
# request's timeout left (dispatch/worker.py).
DEFAULT_TIMEOUT = 15.0
LEASE_MARGIN = 10.0


class EventKey(NamedTuple):
    """What names an event: its id is the sender's, unique only within its
    organization, so the same id in two organizations names two events. Shown as
    `organization/id` (an id holds no `/`)."""

    organization: str
    id: str

    def __str__(self) -> str:
        return f"{self.organization}/{self.id}"


@dataclass(frozen=True)
class EventRecord:
    id: str
    type: str
    organization: str
    name: str
    description: str
    time: str  # ISO 8601, UTC

    @property
    def key(self) -> EventKey:
        return EventKey(self.organization, self.id)


def held_reason(paused_reason: str, since: str) -> str:
    """Why a delivery is held: its webhook's pause, and since when."""
    return f"held: the webhook is paused since {since} ({paused_reason}); resuming it sends this"


@dataclass(frozen=True)
class Held:
    """A webhook an event's delivery was held for, and why."""

    webhook: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"webhook": self.webhook, "reason": self.reason}


@dataclass(frozen=True)
class IntakeResult:
    event_id: str
    organization: str
    deliveries: int  # recorded: queued, and held for paused webhooks
    duplicate: bool  # this organization had an event with this id already
    # For the answer's note only: two results are equal whatever it says.
    event_type: str = field(default="", compare=False)
    # The deliveries among `deliveries` held for a paused webhook (a new event only).
    held: tuple[Held, ...] = ()

    @property
    def key(self) -> EventKey:
        return EventKey(self.organization, self.event_id)

    @property
    def note(self) -> str | None:
        """Said when nothing is queued: the event is stored, but no webhook gets it."""
        if self.deliveries:
            return None
        return (
            f"no enabled webhook of {self.organization} fires on {self.event_type or 'it'}: "
            "the event is stored, and nothing is sent"
        )

    def as_json(self) -> dict[str, Any]:
        """The intake's answer; `note` only when there is one (older clients see
        the four fields they always saw)."""
        answer: dict[str, Any] = {
            "event_id": self.event_id,
            "organization": self.organization,
            "deliveries": self.deliveries,
            "duplicate": self.duplicate,
        }
        if self.held:
            answer["held"] = [h.as_json() for h in self.held]
        if self.note is not None:
            answer["note"] = self.note
        return answer


@dataclass(frozen=True)
class Claim:
    """A delivery a worker holds under a lease, with what it needs to send it."""

    delivery_id: str
    attempt: int  # the number of the attempt about to be made, from 1
    event: EventRecord
    organization: str
    webhook: str
    spec: str | None  # the webhook's live definition now; None when it was deleted
    paused_reason: str | None
    retry_number: int = 0  # this attempt's place in the retry schedule (from 1)
    # Rate-limited webhooks only (see take_slots): the time this delivery's slot
    # comes (taken by this claim, or kept from an earlier one), and the time the
    # webhook is held until by a receiver's Retry-After, as the state had them.
    rate_slot: float | None = None
    held_until: float | None = None
    # Seconds the claim leases the delivery for (lease_of), from the `now` it was
    # claimed at.
    lease: float = 0.0

    def __post_init__(self) -> None:
        if not self.retry_number:
            object.__setattr__(self, "retry_number", self.attempt)


@dataclass(frozen=True)
class SentRequest:
    """A request as it was sent, as the state keeps it: secrets put back as their
    `${env:NAME}` references and credentials masked before it gets here
    (reconciler/sent_request.py)."""

    method: str
    url: str
    headers: dict[str, str]
    body: str | None

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "headers": self.headers, "body": self.body}


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did, and what becomes of its delivery."""

    delivery_id: str
    number: int
    started_at: float
    duration_ms: float
    outcome: AttemptOutcome
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_excerpt: str = ""
    error: str | None = None
    next_due: float | None = None  # for outcome == "retry" (and "deferred")
    # deferred to its rate-limit slot (next_due), which the delivery keeps: when it
    # is claimed again, it goes then without taking another slot
    keeps_slot: bool = False
    pause_webhook: str | None = None  # a reason to pause the webhook (HTTP 410)
    sent: bool = True  # False when nothing went out (cancelled, render error)
    # For the webhook's circuit breaker: set when the attempt failed as an endpoint
    # that is down fails, was a probe, or succeeded after failures; None otherwise
    # (the healthy case costs the store nothing).
    breaker: BreakerReport | None = None
    # What was sent (None when nothing went out, or no request was built).
    request: SentRequest | None = None


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: float
    duration_ms: float
    outcome: str
    status: int | None
    response_headers: dict[str, str]
    response_excerpt: str
    error: str | None
    request: SentRequest | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 3),
            "outcome": self.outcome,
            "status": self.status,
            "request": self.request.as_json() if self.request is not None else None,
            "response_headers": self.response_headers,
            "response_excerpt": self.response_excerpt,
            "error": self.error,
        }


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery; its event is (organization, event_id): a delivery always
    belongs to the organization of its event."""

    id: str
    event_id: str
    event_type: str
    organization: str
    webhook: str
    status: str
    attempts: int
    due_at: float | None
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "organization": self.organization,
            "webhook": self.webhook,
            "status": self.status,
            "attempts": self.attempts,
            "due_at": self.due_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    @property
    def event_key(self) -> EventKey:
        return EventKey(self.organization, self.event_id)


@dataclass(frozen=True)
class WebhookQueue:
    """One live webhook and its deliveries on their way, as the state holds them now."""

    organization: str
    webhook: str
    enabled: bool
    paused_reason: str | None
    in_flight: int
    pending_due: int  # pending, due now or earlier
    pending_later: int  # pending, due later (a retry's backoff, a rate limit)
    oldest_due_at: float | None  # the due time of its longest-waiting due delivery

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization, self.webhook)


@dataclass(frozen=True)
class WebhookAggregates(WebhookQueue):
    """WebhookQueue, with its attempts of a recent window and its latest outcomes.

    The window's attempts are those started in (since, now] that were made or
    failed (delivered, retry, failed): cancellations are not the endpoint's doing.
    """

    attempts: int = 0
    delivered: int = 0
    p95_ms: float | None = None  # nearest rank: the ceil(0.95 n)-th shortest duration
    last_success_at: float | None = None  # when its latest delivered delivery was recorded
    last_failure_at: float | None = None  # when its latest failed attempt started
    last_failure_status: int | None = None
    last_failure_error: str | None = None


@functools.lru_cache(maxsize=1024)
def webhook_timeout(spec: str | None) -> float:
    """The request timeout of the webhook whose live definition is `spec` (parsed
    once per version of a definition)."""
    timeout = json.loads(spec).get("timeout") if spec else None
    return parse_duration(timeout) if timeout else DEFAULT_TIMEOUT


def lease_of(spec: str | None, shortest: float) -> float:
    """How long a claim leases a delivery of the webhook whose live definition is
    `spec`: its timeout plus LEASE_MARGIN, or `shortest` when that is longer."""
    return max(shortest, webhook_timeout(spec) + LEASE_MARGIN)


def rate_interval(spec: str | None) -> float | None:
    """Seconds between two requests to the webhook whose live definition is `spec`,
    by its rate_limit; None when it has none. A definition without one is told
    apart by a substring test, so most claims cost no JSON parsing."""
    if spec is None or '"rate_limit"' not in spec:
        return None
    data = json.loads(spec)
    text = data.get("rate_limit")
    if not text or data.get("enabled") is False:  # a disabled webhook sends nothing
        return None
    rate = parse_rate(text)
    return 1.0 / rate if rate > 0 else None


def slot_groups(claims: Sequence[Claim]) -> dict[tuple[str, str], tuple[float, int]]:
    """The rate-limited webhooks among `claims`, sorted (rows are locked in this order,
    so two dispatchers never wait on each other in a cycle): (organization, webhook)
    -> (interval, how many of the claims need a new slot)."""
    groups: dict[tuple[str, str], tuple[float, int]] = {}
    for claim in claims:
        interval = None if claim.paused_reason else rate_interval(claim.spec)
        if interval is None:
            continue
        key = (claim.organization, claim.webhook)
        fresh = groups.get(key, (interval, 0))[1] + (claim.rate_slot is None)
        groups[key] = (interval, fresh)
    return dict(sorted(groups.items()))


def with_slots(
    claims: Sequence[Claim],
    groups: dict[tuple[str, str], tuple[float, int]],
    taken: dict[tuple[str, str], tuple[float, float]],
) -> list[Claim]:
    """`claims` with their slots: `taken` is, per webhook of `groups`, the next free
    slot after this batch took its own and the time it is held until. A claim that
    kept a slot from before keeps it; the others get the batch's, 1/rate apart."""
    firsts = {key: taken[key][0] - interval * fresh for key, (interval, fresh) in groups.items()}
    out: list[Claim] = []
    for claim in claims:
        key = (claim.organization, claim.webhook)
        if key not in groups:
            out.append(claim)
            continue
        held_until = taken[key][1]
        slot = claim.rate_slot
        if slot is None:
            slot = firsts[key]
            firsts[key] += groups[key][0]
        out.append(replace(claim, rate_slot=slot, held_until=held_until))
    return out


# A webhook's pause holds its pending deliveries; its resume (or an apply, which
# lifts a pause too) makes them pending again, due at once. In a backend's
# placeholder `{p}`: (reason, now, organization, webhook) and (now, now,
# organization, webhook).
HOLD_PENDING = (
    "UPDATE deliveries SET status = 'held', due_at = NULL, rate_slot = NULL, "
    "last_error = {p}, updated_at = {p} WHERE organization = {p} AND webhook = {p} "
    "AND status = 'pending'"
)
# Retry now: a pending delivery due at once (a kept rate-limit slot dropped, so the
# claim takes a fresh one), in a backend's placeholder `{p}`: (now, now, ids...).
RETRY_NOW = (
    "UPDATE deliveries SET due_at = {p}, updated_at = {p}, rate_slot = NULL "
    "WHERE status = 'pending' AND id {ids} RETURNING id"
)
RELEASE_HELD = (
    "UPDATE deliveries SET status = 'pending', due_at = {p}, last_error = NULL, "
    "updated_at = {p} WHERE organization = {p} AND webhook = {p} AND status = 'held'"
)


def headers_json(headers: dict[str, str]) -> str:
    return json.dumps(headers, sort_keys=True)


# A delivery as listed, from deliveries d joined with its event e (both backends).
DELIVERY_COLUMNS = (
    "d.id, d.event_id, e.type, d.organization, d.webhook, d.status, d.attempts, d.due_at, "
    "d.created_at, d.updated_at, d.last_status, d.last_error"
)
# A delivery's event: the same id in another organization is another event.
EVENT_OF_DELIVERY = "e.organization = d.organization AND e.id = d.event_id"


def deliveries_query(
    placeholder: str,
    any_of: Callable[[Sequence[str]], tuple[str, list[Any]]],
    *,
    status: str | None,
    organization: str | None,
    webhook: str | None,
    event: EventKey | None,
    since: float | None,
    limit: int,
    organizations: Sequence[str] | None,
    until: float | None = None,
    status_code: int | None = None,
) -> tuple[str, list[Any]]:
    """QueueStore.deliveries as one query and its arguments, in a backend's dialect:
    its `placeholder` (? or %s) and `any_of`, its test of a column against a list
    (the SQL after the column, and its arguments)."""
    p = placeholder
    query = (
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
        "WHERE 1 = 1"
    )
    args: list[Any] = []
    for column, value in (
        ("d.status", status),
        ("d.organization", organization),
        ("d.webhook", webhook),
        ("d.last_status", status_code),
    ):
        if value is not None:
            query += f" AND {column} = {p}"
            args.append(value)
    if event is not None:
        query += f" AND d.organization = {p} AND d.event_id = {p}"
        args += [event.organization, event.id]
    if since is not None:
        query += f" AND d.updated_at >= {p}"
        args.append(since)
    if until is not None:
        query += f" AND d.updated_at < {p}"
        args.append(until)
    if organizations is not None:
        test, more = any_of(organizations)
        query += f" AND d.organization {test}"
        args += more
    query += f" ORDER BY d.created_at DESC, d.id LIMIT {p}"
    args.append(limit)
    return query, args


ATTEMPT_COLUMNS = (
    "delivery_id, number, started_at, duration_ms, status, response_headers, "
    "response_excerpt, error, outcome, request_method, request_url, request_headers, "
    "request_body"
)
# An attempt as read back (deliveries show), the request's four columns last.
ATTEMPT_READ = (
    "number, started_at, duration_ms, outcome, status, response_headers, response_excerpt, "
    "error, request_method, request_url, request_headers, request_body"
)


def attempt_row(r: AttemptResult) -> list[Any]:
    """One attempt as stored, in ATTEMPT_COLUMNS' order (started_at and duration_ms
    third and fourth)."""
    sent = r.request
    return [
        r.delivery_id,
        r.number,
        r.started_at,
        r.duration_ms,
        r.status,
        headers_json(r.response_headers),
        clean_text(r.response_excerpt),
        clean_text(r.error),
        r.outcome,
        sent.method if sent else None,
        sent.url if sent else None,
        json.dumps(sent.headers) if sent else None,  # in the order sent
        clean_text(sent.body) if sent else None,
    ]


def attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    """An AttemptRecord from a row of ATTEMPT_READ."""
    number, started, duration, outcome, status, headers, excerpt, error = row[:8]
    method, url, sent_headers, body = row[8:]
    request = None
    if method is not None:
        request = SentRequest(method, url, json.loads(sent_headers or "{}"), body)
    return AttemptRecord(
        number,
        started,
        duration,
        outcome,
        status,
        json.loads(headers or "{}"),
        excerpt or "",
        error,
        request,
    )


def refuse_nul(events: Sequence[EventRecord]) -> None:
    """Neither store can keep a NUL character in text (PostgreSQL refuses it, SQLite's
    JSON functions would cut the text short), and intake refuses it at the door."""
    for event in events:
        if any("\x00" in text for text in (event.id, event.name, event.description)):
            raise ValueError(f"event {event.key}: text must not contain NUL characters")


def clean_text(text: str | None) -> str | None:
    """An attempt's error or excerpt as it can be stored: any NUL as U+FFFD, so that
    recording an attempt never fails over what a receiver sent."""
    return text.replace("\x00", "\ufffd") if text else text


class QueueStore(Protocol):
    """What the dispatcher needs of a store; SqliteStore and PostgresStore have it.

    Each backend restates these signatures, as a protocol's implementations do:
    mypy holds each to this one (store/backend.py), so the copies cannot drift."""

    url: str

    def add_event(self, event: EventRecord, now: float, webhook: str | None = None) -> IntakeResult:
        """Store the event and one delivery per matching enabled webhook (`webhook`:
        that one alone, if it matches): pending, or held for a paused webhook."""
        ...

    def add_events(self, events: Sequence[EventRecord], now: float) -> list[IntakeResult]: ...

    def add_events_and_claim(
        self, events: Sequence[EventRecord], now: float, owner: str, limit: int, lease: float
    ) -> tuple[list[IntakeResult], list[Claim]]: ...

    def claim(
        self, owner: str, limit: int, now: float, lease: float, event: EventKey | None = None
    ) -> list[Claim]: ...

    def finish(self, results: Sequence[AttemptResult], owner: str, now: float) -> int: ...

    def finish_and_claim(
        self, results: Sequence[AttemptResult], owner: str, now: float, limit: int, lease: float
    ) -> list[Claim]: ...

    def release(self, owner: str, now: float) -> int: ...

    def renew(self, owner: str, leases: Sequence[tuple[str, float]], now: float) -> list[str]:
        """Extend the leases `owner` still holds: each (delivery id, seconds) to `now`
        plus those seconds, if the delivery is still in flight under `owner` (checked
        under the row's lock, so never one another dispatcher took over). Returns the
        ids renewed; the others are no longer `owner`'s to send."""
        ...

    def hold(self, organization: str, webhook: str, until: float) -> None:
        """A receiver asked for a pause (Retry-After): no dispatcher sends to this
        webhook before `until`, and its rate-limit slots start after it."""
        ...

    def holds(self, now: float) -> dict[tuple[str, str], float]:
        """The webhooks held past `now`: (organization, webhook) -> until."""
        ...

    def release_dead(self, alive: Callable[[str], bool], now: float) -> int: ...

    def deliveries(
        self,
        *,
        status: str | None = None,
        organization: str | None = None,
        webhook: str | None = None,
        event: EventKey | None = None,
        since: float | None = None,
        limit: int = 100,
        organizations: Sequence[str] | None = None,
        until: float | None = None,
        status_code: int | None = None,
    ) -> list[DeliveryRecord]:
        """Newest first, by any of these filters: `since` and `until` bound the
        delivery's last change (updated_at in [since, until)), `status_code` its last
        attempt's HTTP status, `organizations` an API token's scope."""
        ...

    def delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]] | None: ...

    def event(self, key: EventKey) -> EventRecord | None: ...

    def replay(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        """Queue finished deliveries of live webhooks again, due at once; returns those
        queued. A delivery of a deleted webhook is kept as history, never sent again."""
        ...

    def retry_now(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        """Make pending deliveries (waiting out a retry's backoff, a rate limit or a
        Retry-After) due at `now`, keeping their attempts and webhook-id; returns
        those made due. Any other status is left as it is (held: until its webhook
        is resumed; finished: `replay`)."""
        ...

    def queue_counts(self) -> dict[str, int]: ...

    def oldest_due(self, now: float) -> float | None: ...

    def webhook_queue(
        self, organizations: Sequence[str] | None, now: float
    ) -> list[WebhookQueue]: ...

    def webhook_health(
        self, organizations: Sequence[str] | None, now: float, since: float
    ) -> list[WebhookAggregates]: ...

    def env_access(self) -> EnvAccess:
        """Which `${env:}` variables each organization's definitions may read now."""
        ...

    def breakers(self, organizations: Sequence[str] | None = None) -> list[BreakerRecord]:
        """The webhooks' breakers that are not plainly healthy (open, half-open, or
        closed with failures counted), optionally only these organizations'."""
        ...

    def take_probe(
        self, organization: str, webhook: str, owner: str, now: float, lease: float
    ) -> tuple[bool, BreakerRecord | None]:
        """Take the webhook's probe for `owner` if its turn has come (open and due, or
        a probe whose lease ran out), atomically: of dispatchers asking at once, one
        gets it. Returns whether this one did, and the breaker as it is now."""
        ...

    def close(self) -> None: ...
