"""A circuit breaker per webhook: the rules both stores keep, as pure functions.

A webhook whose endpoint is down (timeouts, connection errors, 5xx) for
`THRESHOLD` attempts in a row has its breaker opened: its deliveries wait in
the queue without spending attempts, and one probe, a real delivery, goes out
at a growing interval (5 s, doubling up to 10 min). Any HTTP answer that is not
a 5xx (a 2xx, a 4xx, a 429) shows the endpoint is up: it closes the breaker and
the backlog drains. Rendering errors and refused targets say nothing about the
endpoint and leave the breaker as it is.

The breaker lives in the state (table `webhook_breakers`), so every dispatcher
sharing it agrees; one dispatcher at a time takes the probe, by an atomic update
(`take_probe`). Only state changes reach the audit log (`breaker-open`,
`breaker-close`); each failed probe is counted on the breaker's row instead, so a
webhook that is down for days does not fill the append-only log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from reconciler.store.base import AuditRecord

BreakerState = Literal["closed", "open", "half-open"]
Health = Literal["down", "up", "release"]

# Down-failures in a row that open the breaker: two full waves of the default
# max_in_flight (10), so a dead endpoint trips it within about two of its timeouts,
# while one that fails a share of its requests (bursts of a few 5xx, resets) does not:
# at 40% failures, 20 in a row has odds of about 1 in 10^8.
THRESHOLD = 20
FIRST_PROBE = 5.0  # seconds from opening to the first probe
MAX_PROBE = 600.0  # the interval doubles after each failed probe, up to this
ACTOR = "dispatcher"

BREAKER_COLUMNS = (
    "organization, webhook, state, consecutive_failures, failing_since, opened_at, "
    "next_probe_at, probe_interval, probe_owner, probe_expires, probes_failed, last_failure, "
    "updated_at"
)


@dataclass(frozen=True)
class BreakerRecord:
    """One webhook's breaker, as the state holds it (times: seconds since the epoch)."""

    organization: str
    webhook: str
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    failing_since: float | None = None  # the first failure of the current run of them
    opened_at: float | None = None
    next_probe_at: float | None = None
    probe_interval: float = 0.0
    probe_owner: str | None = None  # the dispatcher whose probe is out (half-open)
    probe_expires: float | None = None  # after this, another may take the probe
    probes_failed: int = 0  # since it opened
    last_failure: str | None = None
    updated_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization, self.webhook)

    @property
    def healthy(self) -> bool:
        return self.state == "closed" and self.consecutive_failures == 0

    def row(self) -> tuple[Any, ...]:
        """In BREAKER_COLUMNS' order."""
        return (
            self.organization,
            self.webhook,
            self.state,
            self.consecutive_failures,
            self.failing_since,
            self.opened_at,
            self.next_probe_at,
            self.probe_interval,
            self.probe_owner,
            self.probe_expires,
            self.probes_failed,
            self.last_failure,
            self.updated_at,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "organization": self.organization,
            "webhook": self.webhook,
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "failing_since": self.failing_since,
            "opened_at": self.opened_at,
            "next_probe_at": self.next_probe_at,
            "probes_failed": self.probes_failed,
            "last_failure": self.last_failure,
        }


def breaker_from_row(row: tuple[Any, ...] | list[Any]) -> BreakerRecord:
    return BreakerRecord(*row)


@dataclass(frozen=True)
class BreakerReport:
    """What one attempt says about its webhook's endpoint, for the breaker.

    down: a timeout, a connection error or a 5xx; up: any other HTTP answer;
    release: a probe that was not sent after all (a rendering error, a rate limit),
    so another may be sent at once."""

    organization: str
    webhook: str
    health: Health
    reason: str | None = None
    probe: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization, self.webhook)


def fold_all(
    current: dict[tuple[str, str], BreakerRecord],
    reports: Sequence[BreakerReport],
    now: float,
) -> tuple[list[tuple[Any, ...]], list[AuditRecord]]:
    """Fold `reports` into `current` (the breakers they name, as read under lock), in
    order; returns the rows of the breakers that changed and the audit records of their
    state changes, for the store to write in the same transaction."""
    before = dict(current)
    audit: list[AuditRecord] = []
    for report in reports:
        current[report.key], entry = fold(current[report.key], report, now)
        if entry is not None:
            audit.append(entry)
    changed = [record.row() for key, record in current.items() if record != before[key]]
    return changed, audit


def fold(
    record: BreakerRecord, report: BreakerReport, now: float
) -> tuple[BreakerRecord, AuditRecord | None]:
    """The breaker after `report`, and the audit record of its state change, if any."""
    if report.health == "release":
        if record.state != "half-open":
            return record, None
        released = replace(
            record, state="open", probe_owner=None, probe_expires=None, updated_at=now
        )
        return released, None
    if report.health == "up":
        if record.state == "closed":
            if record.consecutive_failures == 0:
                return record, None
            return replace(record, consecutive_failures=0, failing_since=None, updated_at=now), None
        closed = BreakerRecord(
            record.organization, record.webhook, last_failure=record.last_failure, updated_at=now
        )
        down_for = _duration(now - (record.failing_since or record.opened_at or now))
        note = (
            f"circuit breaker closed: the endpoint answered again after {down_for} "
            f"({record.consecutive_failures} failures in a row, "
            f"{record.probes_failed} failed probes); the waiting deliveries go out"
        )
        return closed, _audit("breaker-close", record, note)
    failures = record.consecutive_failures + 1
    record = replace(
        record,
        consecutive_failures=failures,
        failing_since=record.failing_since if record.failing_since is not None else now,
        last_failure=report.reason,
        updated_at=now,
    )
    if record.state == "closed":
        if failures < THRESHOLD:
            return record, None
        opened = replace(
            record,
            state="open",
            opened_at=now,
            probe_interval=FIRST_PROBE,
            next_probe_at=now + FIRST_PROBE,
            probes_failed=0,
        )
        note = (
            f"circuit breaker opened after {failures} failures in a row "
            f"(last: {report.reason}); deliveries wait, a probe goes out every "
            f"{_duration(FIRST_PROBE)} at first, up to every {_duration(MAX_PROBE)}"
        )
        return opened, _audit("breaker-open", record, note)
    if record.state == "half-open" and report.probe:
        interval = min(max(record.probe_interval, FIRST_PROBE) * 2, MAX_PROBE)
        return replace(
            record,
            state="open",
            probe_interval=interval,
            next_probe_at=now + interval,
            probe_owner=None,
            probe_expires=None,
            probes_failed=record.probes_failed + 1,
        ), None
    return record, None  # an attempt already out when it opened


def may_probe(record: BreakerRecord, now: float) -> bool:
    """Whether a dispatcher may take the probe now (the condition `take_probe`
    applies atomically in the store)."""
    if record.state == "open":
        return record.next_probe_at is None or record.next_probe_at <= now
    if record.state == "half-open":
        return record.probe_expires is None or record.probe_expires <= now
    return False


def _audit(action: str, record: BreakerRecord, note: str) -> AuditRecord:
    return AuditRecord(action, record.organization, record.webhook, None, None, ACTOR, note=note)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(int(seconds), size)
            return f"{whole}{unit}" if not rest or unit == "m" else f"{seconds / size:.1f}{unit}"
    return f"{seconds:g}s"


def audit_time(now: float) -> str:
    """An audit log entry's time (as the stores write it) from the dispatcher's clock."""
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )
