"""Prometheus metrics of one dispatcher process, in the text exposition format.

Labels are organizations, event types and outcomes: never URLs, headers or
anything else that could hold a secret.

Who reads them decides what is rendered: the counters labelled by organization
are shown for the reader's organizations only (another organization's series,
and so its name, never appear), and the series of the whole installation (the
queue, deferred sends, attempt durations: every organization's traffic mixed)
only to a reader with every organization, the operator.

The per-webhook gauges (breaker state, backlog, oldest due age) are read from the
state at each scrape, in one query for the reader's organizations only.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reconciler.store.queue import STATUSES, AttemptResult, Claim

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# An attempt's outcome, as counted: a retry that will be tried again is "retried".
_COUNTED = {
    "delivered": "delivered",
    "retry": "retried",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class QueueGauges:
    """The queue as the shared state holds it, every organization's deliveries."""

    counts: dict[str, int]
    oldest_due_age: float  # seconds the longest-waiting due delivery has waited (0: none)


@dataclass(frozen=True)
class WebhookGauges:
    """One webhook's endpoint, as the shared state holds it when scraped."""

    organization: str
    webhook: str
    breaker: str  # closed, open or half-open (reconciler.health.breaker_states)
    backlog: int  # deliveries pending, due now or later
    oldest_due_age: float  # seconds its oldest due delivery has waited (0: none)


BREAKER_STATES = ("closed", "open", "half-open")


@dataclass
class Metrics:
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliveries: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    deferred: int = 0
    _buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    _latency_sum: float = 0.0
    _latency_count: int = 0

    def event_received(self, organization: str, event_type: str) -> None:
        self.events[(organization, event_type)] += 1

    def attempt(self, claim: Claim, result: AttemptResult) -> None:
        if result.outcome == "deferred":
            self.deferred += 1
            return
        outcome = _COUNTED[result.outcome]
        self.deliveries[(outcome, claim.organization, claim.event.type)] += 1
        if result.sent:
            seconds = result.duration_ms / 1000
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def render(
        self,
        sees: Callable[[str], bool],
        queue: QueueGauges | None,
        webhooks: Sequence[WebhookGauges] = (),
    ) -> str:
        """The series of the organizations `sees` accepts, the `webhooks`' among them;
        with `queue` (read for a reader with every organization), the installation's
        series too."""
        lines = [
            "# HELP reconciler_events_received_total Events accepted at intake (not repeats).",
            "# TYPE reconciler_events_received_total counter",
        ]
        for (org, event), n in sorted(self.events.items()):
            if sees(org):
                lines.append(
                    f'reconciler_events_received_total{{organization="{_esc(org)}",'
                    f'event="{_esc(event)}"}} {n}'
                )
        lines += [
            "# HELP reconciler_deliveries_total Attempts by outcome: delivered, retried "
            "(will be tried again), failed (for good), cancelled.",
            "# TYPE reconciler_deliveries_total counter",
        ]
        for (outcome, org, event), n in sorted(self.deliveries.items()):
            if sees(org):
                lines.append(
                    f'reconciler_deliveries_total{{outcome="{outcome}",'
                    f'organization="{_esc(org)}",event="{_esc(event)}"}} {n}'
                )
        lines += _webhooks([w for w in webhooks if sees(w.organization)])
        if queue is not None:
            lines += self._installation(queue)
        return "\n".join(lines) + "\n"

    def _installation(self, queue: QueueGauges) -> list[str]:
        lines = [
            "# HELP reconciler_deliveries_deferred_total Sends put off by a rate limit, "
            "a receiver's Retry-After or an open circuit breaker.",
            "# TYPE reconciler_deliveries_deferred_total counter",
            f"reconciler_deliveries_deferred_total {self.deferred}",
            "# HELP reconciler_queue_deliveries Deliveries in the queue by status.",
            "# TYPE reconciler_queue_deliveries gauge",
        ]
        for status in STATUSES:
            lines.append(
                f'reconciler_queue_deliveries{{status="{status}"}} {queue.counts.get(status, 0)}'
            )
        lines += [
            "# HELP reconciler_queue_oldest_due_seconds How long the oldest due delivery "
            "has waited past its due time (0 when none is due).",
            "# TYPE reconciler_queue_oldest_due_seconds gauge",
            f"reconciler_queue_oldest_due_seconds {queue.oldest_due_age:.3f}",
            "# HELP reconciler_attempt_duration_seconds Time from sending a request to its "
            "answer (or failure).",
            "# TYPE reconciler_attempt_duration_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, self._buckets, strict=False):
            cumulative += count
            lines.append(
                f'reconciler_attempt_duration_seconds_bucket{{le="{bound:g}"}} {cumulative}'
            )
        lines.append(
            f'reconciler_attempt_duration_seconds_bucket{{le="+Inf"}} {self._latency_count}'
        )
        lines.append(f"reconciler_attempt_duration_seconds_sum {self._latency_sum:.6f}")
        lines.append(f"reconciler_attempt_duration_seconds_count {self._latency_count}")
        return lines


def _webhooks(webhooks: Sequence[WebhookGauges]) -> list[str]:
    breaker = [
        "# HELP reconciler_webhook_breaker_state The webhook's circuit breaker: 1 for the "
        "state it is in (closed, open, half-open), 0 for the others.",
        "# TYPE reconciler_webhook_breaker_state gauge",
    ]
    backlog = [
        "# HELP reconciler_webhook_backlog Deliveries of the webhook waiting to be sent, "
        "due now or later.",
        "# TYPE reconciler_webhook_backlog gauge",
    ]
    oldest = [
        "# HELP reconciler_webhook_oldest_due_seconds How long the webhook's oldest due "
        "delivery has waited past its due time (0 when none is due).",
        "# TYPE reconciler_webhook_oldest_due_seconds gauge",
    ]
    for w in webhooks:
        labels = f'organization="{_esc(w.organization)}",webhook="{_esc(w.webhook)}"'
        for state in BREAKER_STATES:
            breaker.append(
                f'reconciler_webhook_breaker_state{{{labels},state="{state}"}} '
                f"{int(w.breaker == state)}"
            )
        backlog.append(f"reconciler_webhook_backlog{{{labels}}} {w.backlog}")
        oldest.append(f"reconciler_webhook_oldest_due_seconds{{{labels}}} {w.oldest_due_age:.3f}")
    return breaker + backlog + oldest


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
