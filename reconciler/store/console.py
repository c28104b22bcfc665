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
from reconciler.store.retention import LAST_BUCKET, bucket_bound

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
    (enabled, disabled, paused, breaker-open), and the key after which the page
    starts."""

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
    """A webhook's finished deliveries since a moment, its latest one ever, and
    the deliveries held for it now (while it is paused)."""

    delivered: int
    failed: int
    last_status: str | None  # delivered | failed
    last_at: float | None
    held: int = 0

    @property
    def success_rate(self) -> float | None:
        total = self.delivered + self.failed
        return None if total == 0 else self.delivered / total


@dataclass(frozen=True)
class MinuteCount:
    """How many attempts of an outcome started in one minute (Unix time // 60)
    with a duration in one of retention's buckets (retention.bucket_of)."""

    minute: int
    outcome: str
    bucket: int
    count: int


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

    def delivery_page(self, query: DeliveryFilter) -> DeliveryPage:
        """Deliveries newest first by (created_at, id), before `query.before`."""
        ...

    def history_page(self, query: HistoryFilter) -> list[AuditEntry]:
        """Audit entries newest first, before `query.before`."""
        ...

    def attempt_minutes(
        self, organizations: Sequence[str] | None, start: float, end: float
    ) -> list[MinuteCount]:
        """The attempts started in [start, end) of `organizations` (None: all),
        counted by minute, outcome and duration bucket in the database."""
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
    elif query.state == "breaker-open":  # open or half-open: held back, probing
        sql += (
            " AND EXISTS (SELECT 1 FROM webhook_breakers b WHERE b.organization = "
            "webhooks.organization AND b.webhook = webhooks.name AND b.state <> 'closed')"
        )
    if query.after is not None:
        sql += f" AND (organization > {p} OR (organization = {p} AND name > {p}))"
        args += [query.after[0], query.after[0], query.after[1]]
    sql += f" ORDER BY organization, name LIMIT {p}"
    args.append(query.limit)
    return sql, args


def outcomes_query(p: str, keys: Sequence[tuple[str, str]], since: float) -> tuple[str, list[Any]]:
    """Each webhook's finished deliveries since a moment and its latest one, by
    status, and its held deliveries, in one statement (one round trip, one small
    plan for a page of webhooks): a row a webhook, each column a lookup of an
    index (deliveries_delivered, deliveries_failed; deliveries_fair, led by
    status, for the held)."""
    values = ", ".join(f"({index}, {p}, {p})" for index in range(len(keys)))
    columns = []
    for status in ("delivered", "failed"):
        of = (
            f"FROM deliveries d WHERE d.organization = k.o AND d.webhook = k.w "
            f"AND d.status = '{status}'"
        )
        columns += [
            f"(SELECT count(*) {of} AND d.updated_at >= {p})",
            f"(SELECT max(d.updated_at) {of})",
        ]
    columns.append(
        "(SELECT count(*) FROM deliveries d WHERE d.status = 'held' "
        "AND d.organization = k.o AND d.webhook = k.w)"
    )
    sql = f"WITH k (i, o, w) AS (VALUES {values}) SELECT k.i, {', '.join(columns)} FROM k"
    args: list[Any] = [part for key in keys for part in key]
    return sql, [*args, since, since]


def outcomes_of(
    keys: Sequence[tuple[str, str]], rows: Sequence[Any]
) -> dict[tuple[str, str], WebhookOutcomes]:
    """outcomes_query's rows, by webhook."""
    found = {}
    for index, delivered, last_delivered, failed, last_failed, held in rows:
        candidates = [
            (float(at), status)
            for status, at in (("delivered", last_delivered), ("failed", last_failed))
            if at is not None
        ]
        latest = max(candidates, default=None)
        found[keys[int(index)]] = WebhookOutcomes(
            int(delivered),
            int(failed),
            latest[1] if latest else None,
            latest[0] if latest else None,
            int(held),
        )
    return found


# A token's organizations up to this many are read as one short walk of
# deliveries_newest_by_org each, merged; more walk deliveries_newest, filtered.
UNION_LIMIT = 16
# A page filtered by what no index orders (a status, an event type, many
# organizations) looks through at most this many of the newest deliveries from its
# cursor; short of a full page, it says where it stopped, and the next page goes on
# from there. However rare the match, a page reads a bounded number of rows.
SEARCH_ROWS = 2_000


@dataclass(frozen=True)
class DeliveryPage:
    records: list[DeliveryRecord]
    # Set when the search of SEARCH_ROWS rows ended before the page was full: the
    # key to go on from (the next page's `before`); the rows past it are not read yet.
    searched_to: tuple[float, str] | None = None
    searched: int = 0  # the rows a search looks through (SEARCH_ROWS), when it stopped


@dataclass(frozen=True)
class _Walk:
    """One walk of an index, newest first. With filters no index of the walk orders,
    `bound` finds the oldest key of the SEARCH_ROWS newest rows of the walk (an
    OFFSET within that bounded window, read from the index alone), and `matches`
    walks no further than it."""

    bound: tuple[str, list[Any]] | None
    matches: Callable[[Sequence[Any] | None], tuple[str, list[Any]]]


def delivery_walks(p: str, any_of: AnyOf, query: DeliveryFilter) -> list[_Walk]:
    """Newest first by (created_at, id), from the cursor on, as index walks whose
    results merge_delivery_walks puts together: for one organization a walk of
    deliveries_newest_by_org (deliveries_by_webhook with a webhook); for a few, one
    such walk each; for many or all, a walk of deliveries_newest. Never a sort of
    every delivery of an organization or a status."""
    orgs = query.organizations
    if orgs is not None and 1 < len(orgs) <= UNION_LIMIT:
        return [_delivery_walk(p, any_of, query, [org]) for org in orgs]
    return [_delivery_walk(p, any_of, query, orgs)]


def merge_delivery_walks(
    query: DeliveryFilter,
    results: Sequence[tuple[list[DeliveryRecord], Sequence[Any] | None]],
) -> DeliveryPage:
    """The walks' matches, each with the bound it searched to (None: it was not
    bounded, or fewer than SEARCH_ROWS rows were left), as one page."""
    stopped = [
        (float(bound[0]), str(bound[1]))
        for records, bound in results
        if bound is not None and len(records) < query.limit
    ]
    resume = max(stopped) if stopped else None
    merged = sorted(
        (r for records, _ in results for r in records),
        key=lambda r: (r.created_at, r.id),
        reverse=True,
    )
    if resume is not None:  # what is older comes on the next page, once
        merged = [r for r in merged if (r.created_at, r.id) >= resume]
    if len(merged) >= query.limit:
        return DeliveryPage(merged[: query.limit])
    return DeliveryPage(merged, resume, SEARCH_ROWS if resume is not None else 0)


def _delivery_walk(
    p: str, any_of: AnyOf, query: DeliveryFilter, orgs: Sequence[str] | None
) -> _Walk:
    where = ""
    args: list[Any] = []
    if orgs is not None and len(orgs) == 1:
        where += f" AND d.organization = {p}"
        args.append(orgs[0])
        if query.webhook is not None:  # deliveries_by_webhook, in order
            where += f" AND d.webhook = {p}"
            args.append(query.webhook)
    if query.since is not None:
        where += f" AND d.created_at >= {p}"
        args.append(query.since)
    if query.until is not None:
        where += f" AND d.created_at < {p}"
        args.append(query.until)
    if query.before is not None:  # a row value: one range of the index
        where += f" AND (d.created_at, d.id) < ({p}, {p})"
        args += [query.before[0], query.before[1]]
    order = "ORDER BY d.created_at DESC, d.id DESC"
    # What no index of the walk orders, tested on each row it passes; `|| ''` keeps
    # each a filter, so that no index of a status or a webhook drives the query.
    rest = ""
    more: list[Any] = []
    if orgs is not None and len(orgs) > 1:
        test, listed = any_of(orgs)
        rest += f" AND d.organization || '' {test}"
        more += listed
    for column, value in (
        ("d.status || ''", query.status),
        ("d.webhook || ''", None if orgs is not None and len(orgs) == 1 else query.webhook),
        ("e.type", query.event_type),
    ):
        if value is not None:
            rest += f" AND {column} = {p}"
            more.append(value)
    select = f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY}"

    def matches(bound: Sequence[Any] | None) -> tuple[str, list[Any]]:
        sql = f"{select} WHERE 1 = 1{where}{rest}"
        extra: list[Any] = []
        if bound is not None:
            sql += f" AND (d.created_at, d.id) >= ({p}, {p})"
            extra = [bound[0], bound[1]]
        return f"{sql} {order} LIMIT {p}", [*args, *more, *extra, query.limit]

    if not rest:
        return _Walk(None, matches)
    bound = (
        f"SELECT d.created_at, d.id FROM deliveries d WHERE 1 = 1{where} {order} "
        f"LIMIT 1 OFFSET {SEARCH_ROWS - 1}"
    )
    return _Walk((bound, list(args)), matches)


def history_page_query(p: str, any_of: AnyOf, query: HistoryFilter) -> tuple[str, list[Any]]:
    """Newest first by id (the primary key), from the cursor on."""
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"
    args: list[Any] = []
    if query.organizations is not None and len(query.organizations) == 1:
        sql += f" AND organization = {p}"  # audit_log_by_webhook: its entries, sorted
        args.append(query.organizations[0])
    elif query.organizations is not None:  # a filter on the walk of the primary key
        test, more = any_of(query.organizations)
        sql += f" AND organization || '' {test}"
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


def _bucket_sql(column: str, lo: int, hi: int) -> str:
    """retention.bucket_of(column) as SQL both databases run: a binary search over
    the buckets' bounds, seven comparisons a row."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    return (
        f"CASE WHEN {column} <= {bucket_bound(mid)!r} THEN {_bucket_sql(column, lo, mid)} "
        f"ELSE {_bucket_sql(column, mid + 1, hi)} END"
    )


BUCKET_SQL = _bucket_sql("a.duration_ms", 0, LAST_BUCKET)
SHORT_RANGE = 3600.0  # seconds of attempts read by time whatever the organizations


def attempt_minutes_query(
    p: str,
    any_of: AnyOf,
    minute_of: str,
    organizations: Sequence[str] | None,
    start: float,
    end: float,
) -> tuple[str, list[Any]]:
    """A range of attempts_by_time, each joined to its delivery by its primary key
    for its organization (unless every organization is asked), grouped in the
    database; `minute_of`: the backend's
    SQL for the whole minutes in `a.started_at`."""
    joined = "" if organizations is None else " JOIN deliveries d ON d.id = a.delivery_id"
    sql = (
        f"SELECT {minute_of} AS minute, a.outcome, {BUCKET_SQL} AS bucket, count(*) "
        f"FROM attempts a{joined} WHERE a.started_at >= {p} AND a.started_at < {p}"
    )
    args: list[Any] = [start, end]
    if organizations is not None:
        test, more = any_of(organizations)
        # A short range is read by time (attempts_by_time), whatever the
        # organizations; a long one for a few organizations by their deliveries
        # (deliveries_by_webhook, then attempts_by_delivery): `|| ''` keeps the
        # planner off the organization's index for the short one.
        column = "d.organization || ''" if end - start <= SHORT_RANGE else "d.organization"
        sql += f" AND {column} {test}"
        args += more
    sql += " GROUP BY 1, 2, 3"
    return sql, args


def minute_count(row: Sequence[Any]) -> MinuteCount:
    minute, outcome, bucket, count = row
    return MinuteCount(int(minute), str(outcome), int(bucket), int(count))


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    id_hash, token_id, csrf, created, idle, expires = row
    return SessionRecord(id_hash, token_id, csrf, float(created), float(idle), float(expires))
