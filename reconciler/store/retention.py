"""Retention: which records go, and what stays of them, for both stores.

A delivery that is delivered, failed or cancelled goes, with its attempts, once it
finished (its last update) longer ago than its organization's retention age; its
event goes with the last of its deliveries (an event that queued none goes once it
was received that long ago). Pending and in-flight deliveries never go, nor their
events. The audit log of applies is never touched.

Before a batch's rows go, the same transaction adds them to one row per webhook and
day (the day the delivery finished, UTC): deliveries by outcome, attempts, retries,
and a histogram of the attempts' durations over fixed logarithmic buckets. Buckets
merge by addition, so a day folded in many batches, by several dispatchers over
many runs, holds exactly the histogram of all its attempts, and a percentile read
from it is the same whatever the batches were: the upper bound of the bucket the
nearest rank falls in, within one bucket (19%) above the exact value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

FINISHED = ("delivered", "failed", "cancelled")
DEFAULT_BATCH = 200  # deliveries per transaction: a few milliseconds of the write lock
RUNS_KEPT = 100  # retention_runs rows kept: the latest runs, for `retention status`
# Attempt durations: bucket i holds durations in (B(i-1), B(i)] ms, B(i) = 2^(i/4),
# so 1 ms to about 18 minutes in 121 buckets, each 19% wider than the one before;
# bucket 0 holds everything up to 1 ms, and the last one everything longer.
BUCKETS_PER_DOUBLING = 4
LAST_BUCKET = 120
SENT_OUTCOMES = ("delivered", "retry", "failed")  # attempts that reached the endpoint


def bucket_of(duration_ms: float) -> int:
    if duration_ms <= 1.0:
        return 0
    index = math.ceil(math.log2(duration_ms) * BUCKETS_PER_DOUBLING - 1e-9)
    return min(max(index, 0), LAST_BUCKET)


def bucket_bound(index: int) -> float:
    """The upper bound of bucket `index`, in milliseconds."""
    return float(2.0 ** (index / BUCKETS_PER_DOUBLING))


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The nearest-rank percentile (the ceil(fraction * n)-th shortest duration) as
    the upper bound of its bucket; None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_bound(index)
    return bucket_bound(max(histogram))  # pragma: no cover - rank <= total


def histogram_text(histogram: Mapping[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(histogram.items()) if v}, sort_keys=False)


def histogram_from_text(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    return {int(k): int(v) for k, v in json.loads(text).items()}


def day_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


@dataclass
class DayTotals:
    """One webhook's day, as retention keeps it."""

    delivered: int = 0
    failed: int = 0
    cancelled: int = 0
    attempts: int = 0  # attempts that reached the endpoint (delivered, retried, failed)
    retried: int = 0
    durations: dict[int, int] = field(default_factory=dict)  # bucket -> attempts

    def add(self, other: DayTotals) -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.attempts += other.attempts
        self.retried += other.retried
        for index, n in other.durations.items():
            self.durations[index] = self.durations.get(index, 0) + n

    def row(self) -> tuple[int, int, int, int, int, str]:
        return (
            self.delivered,
            self.failed,
            self.cancelled,
            self.attempts,
            self.retried,
            histogram_text(self.durations),
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DayTotals:
        delivered, failed, cancelled, attempts, retried, durations = row
        return cls(
            int(delivered),
            int(failed),
            int(cancelled),
            int(attempts),
            int(retried),
            histogram_from_text(durations),
        )


DayKey = tuple[str, str, str]  # (organization, webhook, day)


@dataclass(frozen=True)
class WebhookDay:
    """One webhook's day, for reading: what `webhook_days` returns."""

    organization: str
    webhook: str
    day: str
    totals: DayTotals

    def as_json(self) -> dict[str, Any]:
        t = self.totals
        return {
            "organization": self.organization,
            "webhook": self.webhook,
            "day": self.day,
            "delivered": t.delivered,
            "failed": t.failed,
            "cancelled": t.cancelled,
            "attempts": t.attempts,
            "retried": t.retried,
            "p50_ms": percentile(t.durations, 0.50),
            "p95_ms": percentile(t.durations, 0.95),
            "p99_ms": percentile(t.durations, 0.99),
        }


def fold(
    deliveries: Iterable[tuple[str, str, str, str, float]],
    attempts: Iterable[tuple[str, float, str]],
) -> dict[DayKey, DayTotals]:
    """A batch's rows as day totals. deliveries: (id, organization, webhook, status,
    updated_at); attempts: (delivery_id, duration_ms, outcome), of those deliveries."""
    days: dict[DayKey, DayTotals] = {}
    key_of: dict[str, DayKey] = {}
    for delivery_id, organization, webhook, status, updated_at in deliveries:
        key = key_of[delivery_id] = (organization, webhook, day_of(updated_at))
        totals = days.setdefault(key, DayTotals())
        if status == "delivered":
            totals.delivered += 1
        elif status == "failed":
            totals.failed += 1
        else:
            totals.cancelled += 1
    for delivery_id, duration_ms, outcome in attempts:
        if outcome not in SENT_OUTCOMES:
            continue
        totals = days[key_of[delivery_id]]
        totals.attempts += 1
        totals.retried += outcome == "retry"
        index = bucket_of(float(duration_ms))
        totals.durations[index] = totals.durations.get(index, 0) + 1
    return days


@dataclass(frozen=True)
class Cutoffs:
    """Per organization, the time before which a finished record goes (seconds since
    the epoch): `default` for every organization not in `organizations`."""

    default: float
    organizations: Mapping[str, float] = field(default_factory=dict)

    def of(self, organization: str) -> float:
        return self.organizations.get(organization, self.default)


@dataclass
class Removed:
    """What one retention run removed."""

    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    breakers: int = 0  # circuit breakers of webhooks no longer live
    rate_slots: int = 0  # rate-limit rows of webhooks no longer live
    bytes_released: int = 0  # file bytes given back (SQLite)

    def add(self, other: Removed) -> None:
        self.deliveries += other.deliveries
        self.attempts += other.attempts
        self.events += other.events
        self.breakers += other.breakers
        self.rate_slots += other.rate_slots
        self.bytes_released += other.bytes_released


@dataclass(frozen=True)
class RetentionRun:
    owner: str
    started_at: float
    finished_at: float
    removed: Removed

    def as_json(self) -> dict[str, Any]:
        r = self.removed
        return {
            "owner": self.owner,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "deliveries": r.deliveries,
            "attempts": r.attempts,
            "events": r.events,
            "breakers": r.breakers,
            "rate_slots": r.rate_slots,
            "bytes_released": r.bytes_released,
        }


RUN_COLUMNS = (
    "owner, started_at, finished_at, deliveries, attempts, events, breakers, rate_slots, "
    "bytes_released"
)


def run_row(run: RetentionRun) -> tuple[Any, ...]:
    r = run.removed
    return (
        run.owner,
        run.started_at,
        run.finished_at,
        r.deliveries,
        r.attempts,
        r.events,
        r.breakers,
        r.rate_slots,
        r.bytes_released,
    )


def run_from_row(row: Sequence[Any]) -> RetentionRun:
    owner, started, finished, *counts = row
    return RetentionRun(owner, float(started), float(finished), Removed(*map(int, counts)))


@dataclass(frozen=True)
class TableSize:
    name: str
    rows: int
    bytes: int | None  # the table and its indexes; None: not measured (see state_size)


@dataclass(frozen=True)
class StateSize:
    """How big the state is, and how old its oldest records are."""

    tables: list[TableSize]
    files: dict[str, int]  # SQLite: the database file and its WAL, in bytes
    # When the longest-finished delivery finished: retention keeping up holds its
    # age near the retention age.
    oldest_finished: float | None
    last_run: RetentionRun | None
    notes: list[str] = field(default_factory=list)  # e.g. a file without auto-vacuum

    @property
    def bytes_per_delivery(self) -> float | None:
        """The queue's bytes (events, deliveries, attempts) per delivery kept."""
        by_name = {t.name: t for t in self.tables}
        kept = by_name["deliveries"].rows if "deliveries" in by_name else 0
        sizes = [by_name[n].bytes for n in ("events", "deliveries", "attempts") if n in by_name]
        if not kept or any(size is None for size in sizes):
            return None
        return sum(size or 0 for size in sizes) / kept

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values()) if self.files else sum(t.bytes or 0 for t in self.tables)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "tables": [{"name": t.name, "rows": t.rows, "bytes": t.bytes} for t in self.tables],
            "files": self.files,
            "total_bytes": self.total_bytes,
            "bytes_per_delivery": self.bytes_per_delivery,
            "oldest_finished_age_seconds": _age(self.oldest_finished, now),
            "last_run": self.last_run.as_json() if self.last_run else None,
            "notes": self.notes,
        }


def _age(when: float | None, now: float) -> float | None:
    return None if when is None else max(0.0, now - when)


# The tables whose size is shown: the queue's, what retention keeps, and the rest.
SIZED_TABLES = (
    "events",
    "deliveries",
    "attempts",
    "webhook_days",
    "retention_runs",
    "audit_log",
    "webhooks",
    "webhook_breakers",
    "rate_limit_slots",
    "api_tokens",
)

# The organizations with rows in a partial index, one probe each (a skip scan),
# however many rows each has: `{table}`, `{where}` filled in by the store.
ORGANIZATIONS_SQL = """
WITH RECURSIVE o(org) AS (
    SELECT (SELECT min(organization) FROM {table} WHERE {where})
    UNION ALL
    SELECT (SELECT min(organization) FROM {table} WHERE {where} AND organization > o.org)
    FROM o WHERE o.org IS NOT NULL
)
SELECT org FROM o WHERE org IS NOT NULL
"""
FINISHED_WHERE = "status IN ('delivered', 'failed', 'cancelled')"
NO_DELIVERIES_WHERE = "deliveries = 0"


class RetentionStore(Protocol):
    """Retention's part of a backend: pruning in batches under a turn of its own,
    the state's size, the WAL's checkpoint and the record of the latest runs."""

    def prune(
        self,
        cutoffs: Cutoffs,
        clock: Callable[[], float],
        owner: str,
        *,
        batch: int = ...,
        between: Callable[[], None] = ...,
    ) -> RetentionRun | None: ...

    def state_size(self, detailed: bool = ...) -> StateSize: ...

    def checkpoint(self) -> bool: ...

    def delete_expired_sessions(self, now: float) -> int:
        """The web console's sessions past their expiry go (store/console.py)."""
        ...

    def retention_runs(self, limit: int = ...) -> list[RetentionRun]: ...

    def close(self) -> None: ...
