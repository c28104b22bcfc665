"""Endpoint health: how each webhook's endpoint is doing, for on-call and partner admins.

One view, three readers: `reconciler webhooks status`, `GET /v1/webhooks/status` and
the per-webhook gauges of /metrics. The numbers come from the state in one query
(store.webhook_health / webhook_queue); the circuit breaker's state of each webhook
from breaker_states(), the one place it is read.

Failure reasons are attempt errors, which may quote a URL; they are shown masked by
the rule every other output uses (secrets.mask_text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.render import utc
from reconciler.secrets import mask_text
from reconciler.store.queue import QueueStore, WebhookAggregates

WINDOW = 3600.0  # the window of the success rate and the p95: the last hour

Breaker = Literal["closed", "open", "half-open"]
BREAKER_STATES: tuple[Breaker, ...] = ("closed", "open", "half-open")

WebhookKey = tuple[str, str]  # (organization, webhook)


def breaker_states(store: QueueStore, keys: Iterable[WebhookKey]) -> dict[WebhookKey, Breaker]:
    """The circuit breaker's state of each webhook in `keys`: closed (sending), open
    (held back after repeated failures) or half-open (a probe is out).

    The one place the status command, the API and the metrics read it from, in one
    query for the organizations of `keys`: a webhook without a row is closed.
    """
    wanted = list(keys)
    organizations = sorted({organization for organization, _ in wanted})
    kept = {b.key: b.state for b in store.breakers(organizations)} if organizations else {}
    return {key: kept.get(key, "closed") for key in wanted}


@dataclass(frozen=True)
class WebhookHealth:
    """One webhook's endpoint as on-call sees it (times: Unix seconds, UTC)."""

    organization: str
    webhook: str
    enabled: bool
    paused_reason: str | None  # masked
    breaker: Breaker
    in_flight: int
    pending_due: int
    pending_later: int
    oldest_due_at: float | None
    oldest_due_age: float  # seconds its oldest due delivery has waited (0: none due)
    attempts: int  # in the window
    success_rate: float | None  # delivered / attempts in the window; None without attempts
    p95_ms: float | None
    last_success_at: float | None
    last_failure_at: float | None
    last_failure_reason: str | None  # masked

    @property
    def state(self) -> Literal["enabled", "disabled", "paused"]:
        if self.paused_reason is not None:
            return "paused"
        return "enabled" if self.enabled else "disabled"

    @property
    def backlog(self) -> int:
        return self.pending_due + self.pending_later

    def as_json(self) -> dict[str, Any]:
        return {
            "organization": self.organization,
            "webhook": self.webhook,
            "state": self.state,
            "enabled": self.enabled,
            "paused_reason": self.paused_reason,
            "breaker": self.breaker,
            "in_flight": self.in_flight,
            "backlog": self.backlog,
            "pending_due": self.pending_due,
            "pending_later": self.pending_later,
            "oldest_due_at": _iso(self.oldest_due_at),
            "oldest_due_age_seconds": round(self.oldest_due_age, 3),
            "attempts": self.attempts,
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 3),
            "last_success_at": _iso(self.last_success_at),
            "last_failure_at": _iso(self.last_failure_at),
            "last_failure_reason": self.last_failure_reason,
        }


@dataclass(frozen=True)
class HealthReport:
    """Every webhook asked for, as of `now`; rates and p95 over (now - window, now]."""

    now: float
    window: float
    webhooks: list[WebhookHealth]

    def as_json(self) -> dict[str, Any]:
        return {
            "as_of": _iso(self.now),
            "window_seconds": self.window,
            "webhooks": [w.as_json() for w in self.webhooks],
        }


def endpoint_health(
    store: QueueStore,
    organizations: Sequence[str] | None,
    now: float,
    window: float = WINDOW,
) -> HealthReport:
    """The health of each live webhook of `organizations` (None: every organization)."""
    rows = store.webhook_health(organizations, now, now - window)
    breakers = breaker_states(store, [row.key for row in rows])
    return HealthReport(now, window, [_health(row, breakers[row.key], now) for row in rows])


def _health(row: WebhookAggregates, breaker: Breaker, now: float) -> WebhookHealth:
    return WebhookHealth(
        organization=row.organization,
        webhook=row.webhook,
        enabled=row.enabled,
        paused_reason=None if row.paused_reason is None else mask_text(row.paused_reason),
        breaker=breaker,
        in_flight=row.in_flight,
        pending_due=row.pending_due,
        pending_later=row.pending_later,
        oldest_due_at=row.oldest_due_at,
        oldest_due_age=oldest_due_age(row.oldest_due_at, now),
        attempts=row.attempts,
        success_rate=row.delivered / row.attempts if row.attempts else None,
        p95_ms=row.p95_ms,
        last_success_at=row.last_success_at,
        last_failure_at=row.last_failure_at,
        last_failure_reason=failure_reason(row.last_failure_status, row.last_failure_error)
        if row.last_failure_at is not None
        else None,
    )


def oldest_due_age(oldest_due_at: float | None, now: float) -> float:
    return max(0.0, now - oldest_due_at) if oldest_due_at is not None else 0.0


def failure_reason(status: int | None, error: str | None) -> str:
    """An attempt's failure in one masked line: its error, else its HTTP status."""
    if error:
        return mask_text(" ".join(error.split()))
    return f"HTTP {status}" if status is not None else "failed"


def _iso(moment: float | None) -> str | None:
    return None if moment is None else utc(moment)
