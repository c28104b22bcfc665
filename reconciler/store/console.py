"""What the web console reads and keeps in the state: its sessions, and the
read-only queries of its pages, as both backends run them.

Sessions are rows, so several `serve` processes behind one balancer share them;
the row holds the SHA-256 of the session id (the cookie's value), never the id
itself, nor the API token it was opened with (only that token's id).

Every listing is keyset-paged: the page after a cursor is a range scan of an
index from the cursor on, never an OFFSET that walks every row before it.
The SQL is built here once, with each backend's placeholder (? or %s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.store.base import AUDIT_COLUMNS, AuditEntry, LiveWebhook
from reconciler.store.queue import DELIVERY_COLUMNS, EVENT_OF_DELIVERY, DeliveryRecord

SESSION_COLUMNS = "id_hash, token_id, csrf_secret, created_at, idle_expires_at, expires_at"

# A backend's test of a column against a list: the SQL after the column, and its
# arguments (as queue.deliveries_query takes it).
AnyOf = Callable[[Sequence[str]], tuple[str, list[Any]]]


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str  # hex SHA-256 of the session id the cookie holds
    token_id: str  # the API token it was opened with (its id, never its secret)
    csrf_secret: str  # what every POST of the session must carry
    created_at: float
    idle_expires_at: float  # moved on by use, never past expires_at
    expires_at: float  # the absolute limit

    def usable(self, now: float) -> bool:
        return now < self.idle_expires_at and now < self.expires_at


@dataclass(frozen=True)
class WebhookFilter:
    """The webhooks page's query: organizations (None: all), an event type, a state
    (enabled, disabled, paused), and the key after which the page starts."""

    organizations: Sequence[str] | None
    event: str | None = None
    state: str | None = None
    after: tuple[str, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class DeliveryFilter:
    """The deliveries page's query; `before` is the (created_at, id) of the last row
    of the page before (newest first)."""

    organizations: Sequence[str] | None
    status: str | None = None
    webhook: str | None = None
    event_type: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class HistoryFilter:
    """The history page's query; times are ISO 8601 text, as the audit log keeps
    them; `before` is the id of the last entry of the page before."""

    organizations: Sequence[str] | None
    actor: str | None = None
    action: str | None = None
    webhook: str | None = None
    since: str | None = None
    until: str | None = None
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True)
class WebhookOutcomes:
    """A webhook's finished deliveries since a moment, and its latest one ever."""

    delivered: int
    failed: int
    last_status: str | None  # delivered | failed
    last_at: float | None

    @property
    def success_rate(self) -> float | None:
        total = self.delivered + self.failed
        return None if total == 0 else self.delivered / total


@dataclass(frozen=True)
class AttemptPoint:
    """One attempt, as the activity chart counts it."""

    organization: str
    started_at: float
    outcome: str
    duration_ms: float


class ConsoleStore(Protocol):
    """What the web console needs of a store beyond the API's reads."""

    def add_session(self, session: SessionRecord) -> None: ...

    def session(self, id_hash: str) -> SessionRecord | None: ...

    def touch_session(self, id_hash: str, idle_expires_at: float) -> None: ...

    def delete_session(self, id_hash: str) -> None: ...

    def delete_expired_sessions(self, now: float) -> int:
        """Remove sessions past either limit; returns how many."""
        ...

    def webhook_page(self, query: WebhookFilter) -> list[LiveWebhook]:
        """Live webhooks by (organization, name), after `query.after`."""
        ...

    def webhook_outcomes(
        self, keys: Sequence[tuple[str, str]], since: float
    ) -> dict[tuple[str, str], WebhookOutcomes]: ...

    def delivery_page(self, query: DeliveryFilter) -> list[DeliveryRecord]:
        """Deliveries newest first by (created_at, id), before `query.before`."""
        ...

    def history_page(self, query: HistoryFilter) -> list[AuditEntry]:
        """Audit entries newest first, before `query.before`."""
        ...

    def attempt_points(
        self, organizations: Sequence[str] | None, start: float, end: float
    ) -> list[AttemptPoint]:
        """The attempts started in [start, end) of `organizations` (None: all)."""
        ...


# -- the SQL, in a backend's dialect --------------------------------------------------


def webhook_page_query(
    p: str, any_of: AnyOf, event_of_spec: str, enabled_of_spec: str, query: WebhookFilter
) -> tuple[str, list[Any]]:
    """`event_of_spec` and `enabled_of_spec`: the backend's SQL reading the event
    type (text) and `enabled` (text 'false' when disabled) from the spec column."""
    sql = (
        "SELECT organization, name, spec, applied_spec, paused_reason, updated_at "
        "FROM webhooks WHERE 1 = 1"
    )
    args: list[Any] = []
    if query.organizations is not None:
        test, more = any_of(query.organizations)
        sql += f" AND organization {test}"
        args += more
    if query.event is not None:
        sql += f" AND {event_of_spec} = {p}"
        args.append(query.event)
    if query.state == "paused":
        sql += " AND paused_reason IS NOT NULL"
    elif query.state == "disabled":
        sql += f" AND paused_reason IS NULL AND COALESCE({enabled_of_spec}, 'true') = 'false'"
    elif query.state == "enabled":
        sql += f" AND paused_reason IS NULL AND COALESCE({enabled_of_spec}, 'true') <> 'false'"
    if query.after is not None:
        sql += f" AND (organization > {p} OR (organization = {p} AND name > {p}))"
        args += [query.after[0], query.after[0], query.after[1]]
    sql += f" ORDER BY organization, name LIMIT {p}"
    args.append(query.limit)
    return sql, args


def outcomes_queries(p: str) -> tuple[str, str]:
    """A webhook's counts by status since a moment, and its latest finished delivery:
    both range scans of the partial indexes deliveries_delivered/_failed."""
    counts = (
        f"SELECT status, count(*) FROM deliveries WHERE organization = {p} AND webhook = {p} "
        f"AND status IN ('delivered', 'failed') AND updated_at >= {p} GROUP BY status"
    )
    latest = (
        "SELECT status, updated_at FROM ("
        f"SELECT status, updated_at FROM deliveries WHERE organization = {p} AND webhook = {p} "
        "AND status = 'delivered' ORDER BY updated_at DESC LIMIT 1) a UNION ALL "
        "SELECT status, updated_at FROM ("
        f"SELECT status, updated_at FROM deliveries WHERE organization = {p} AND webhook = {p} "
        "AND status = 'failed' ORDER BY updated_at DESC LIMIT 1) b"
    )
    return counts, latest


def outcomes_of(counts: Sequence[Any], latest: Sequence[Any]) -> WebhookOutcomes:
    by_status = {str(status): int(n) for status, n in counts}
    last = max(latest, key=lambda row: float(row[1]), default=None)
    return WebhookOutcomes(
        by_status.get("delivered", 0),
        by_status.get("failed", 0),
        str(last[0]) if last else None,
        float(last[1]) if last else None,
    )


def delivery_page_query(p: str, any_of: AnyOf, query: DeliveryFilter) -> tuple[str, list[Any]]:
    """Newest first by (created_at, id): index deliveries_newest (or
    deliveries_newest_by_org for one organization) walked from the cursor on."""
    sql = (
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
        "WHERE 1 = 1"
    )
    args: list[Any] = []
    if query.organizations is not None:
        if len(query.organizations) == 1:
            sql += f" AND d.organization = {p}"
            args.append(query.organizations[0])
        else:
            test, more = any_of(query.organizations)
            sql += f" AND d.organization {test}"
            args += more
    for column, value in (
        ("d.status", query.status),
        ("d.webhook", query.webhook),
        ("e.type", query.event_type),
    ):
        if value is not None:
            sql += f" AND {column} = {p}"
            args.append(value)
    if query.since is not None:
        sql += f" AND d.created_at >= {p}"
        args.append(query.since)
    if query.until is not None:
        sql += f" AND d.created_at < {p}"
        args.append(query.until)
    if query.before is not None:
        sql += f" AND (d.created_at < {p} OR (d.created_at = {p} AND d.id < {p}))"
        args += [query.before[0], query.before[0], query.before[1]]
    sql += f" ORDER BY d.created_at DESC, d.id DESC LIMIT {p}"
    args.append(query.limit)
    return sql, args


def history_page_query(p: str, any_of: AnyOf, query: HistoryFilter) -> tuple[str, list[Any]]:
    """Newest first by id (the primary key), from the cursor on."""
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"
    args: list[Any] = []
    if query.organizations is not None:
        test, more = any_of(query.organizations)
        sql += f" AND organization {test}"
        args += more
    for column, value in (
        ("actor", query.actor),
        ("action", query.action),
        ("name", query.webhook),
    ):
        if value is not None:
            sql += f" AND {column} = {p}"
            args.append(value)
    if query.since is not None:
        sql += f" AND at >= {p}"
        args.append(query.since)
    if query.until is not None:
        sql += f" AND at < {p}"
        args.append(query.until)
    if query.before is not None:
        sql += f" AND id < {p}"
        args.append(query.before)
    sql += f" ORDER BY id DESC LIMIT {p}"
    args.append(query.limit)
    return sql, args


def attempt_points_query(
    p: str, any_of: AnyOf, organizations: Sequence[str] | None, start: float, end: float
) -> tuple[str, list[Any]]:
    """A range of attempts_by_time, each joined to its delivery by its primary key."""
    sql = (
        "SELECT d.organization, a.started_at, a.outcome, a.duration_ms FROM attempts a "
        f"JOIN deliveries d ON d.id = a.delivery_id WHERE a.started_at >= {p} "
        f"AND a.started_at < {p}"
    )
    args: list[Any] = [start, end]
    if organizations is not None:
        test, more = any_of(organizations)
        sql += f" AND d.organization {test}"
        args += more
    return sql, args


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    id_hash, token_id, csrf, created, idle, expires = row
    return SessionRecord(id_hash, token_id, csrf, float(created), float(idle), float(expires))
