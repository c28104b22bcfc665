"""Retention on PostgreSQL: batched deletes (docs/benchmarks.md says why not
partitions), each batch one short transaction; autovacuum, tuned by migration 0011,
makes the space of deleted rows reusable (where the server's autovacuum is off,
retention runs VACUUM itself after each run that removed rows).

One dispatcher prunes at a time: a session advisory lock, taken with
pg_try_advisory_lock on a connection held for the run; another dispatcher that
finds it taken skips its turn. A dispatcher that dies loses its session and so
the lock. The batch's rows are locked FOR UPDATE SKIP LOCKED as well, so a replay
racing with retention either finds its delivery gone or keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from reconciler.store.retention import (
    BODIES_FROM,
    DEFAULT_BATCH,
    DROP_BODIES,
    FINISHED_WHERE,
    NEXT_BODIES,
    NO_DELIVERIES_WHERE,
    ORGANIZATIONS_SQL,
    RUN_COLUMNS,
    RUNS_KEPT,
    SIZED_TABLES,
    Cutoffs,
    DayKey,
    DayTotals,
    Removed,
    RetentionRun,
    StateSize,
    TableSize,
    WebhookDay,
    fold,
    run_from_row,
    run_row,
)

EXACT_COUNT_BELOW = 1_000_000  # rows: above, a table's row count is the planner's estimate


class PostgresRetention:
    schema: str
    _tx: Callable[..., AbstractContextManager[Any]]
    _session: Callable[[], AbstractContextManager[Any]]  # a pooled connection, autocommit
    _keys: dict[str, int]

    def prune(
        self,
        cutoffs: Cutoffs,
        clock: Callable[[], float],
        owner: str,
        *,
        batch: int = DEFAULT_BATCH,
        between: Callable[[], None] = lambda: None,
        lease: float = 0.0,  # unused: the advisory lock lasts as long as the session
    ) -> RetentionRun | None:
        """See SqliteRetention.prune."""
        started = clock()
        with self._session() as conn:
            with self._tx(conn=conn) as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self._keys["retention"],))
                if not cur.fetchone()[0]:
                    return None
            try:
                removed = self._prune_all(conn, cutoffs, batch, between)
                if removed.deliveries or removed.events:
                    _vacuum_unless_autovacuum(conn)
                run = RetentionRun(owner, started, clock(), removed)
                with self._tx(conn=conn) as cur:
                    cur.execute(
                        f"INSERT INTO retention_runs ({RUN_COLUMNS}) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        run_row(run),
                    )
                    cur.execute(
                        "DELETE FROM retention_runs "
                        "WHERE id <= (SELECT max(id) FROM retention_runs) - %s",
                        (RUNS_KEPT,),
                    )
            finally:
                with self._tx(conn=conn) as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (self._keys["retention"],))
        return run

    def _prune_all(
        self, conn: Any, cutoffs: Cutoffs, batch: int, between: Callable[[], None]
    ) -> Removed:
        removed = Removed()
        while cutoffs.bodies is not None:
            with self._tx(conn=conn) as cur:
                cur.execute("SELECT value FROM meta WHERE key = %s", (BODIES_FROM,))
                row = cur.fetchone()
                start = float(row[0]) if row else 0.0
                cur.execute(NEXT_BODIES.format(p="%s"), (start, cutoffs.bodies, batch))
                found = cur.fetchall()
                cur.execute(DROP_BODIES.format(ids="= ANY(%s)"), ([r[0] for r in found],))
                done = found[-1][1] if len(found) == batch else cutoffs.bodies
                cur.execute(
                    "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (BODIES_FROM, repr(max(start, done))),
                )
            between()
            if len(found) < batch:
                break
        for organization in self._organizations(conn, "deliveries", FINISHED_WHERE):
            cutoff = cutoffs.of(organization)
            while True:
                with self._tx(conn=conn) as cur:
                    got = _prune_deliveries(cur, organization, cutoff, batch)
                removed.add(got)
                between()
                if got.deliveries < batch:
                    break
        for organization in self._organizations(conn, "events", NO_DELIVERIES_WHERE):
            cutoff = cutoffs.of(organization)
            while True:
                with self._tx(conn=conn) as cur:
                    cur.execute(
                        "DELETE FROM events WHERE (organization, id) IN (SELECT organization, id "
                        f"FROM events WHERE organization = %s AND {NO_DELIVERIES_WHERE} "
                        "AND received_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                        (organization, cutoff, batch),
                    )
                    events = cur.rowcount
                removed.events += events
                between()
                if events < batch:
                    break
        with self._tx(conn=conn) as cur:
            counts = []
            for table in ("webhook_breakers", "rate_limit_slots"):
                cur.execute(
                    f"DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM webhooks w "
                    "WHERE w.organization = t.organization AND w.name = t.webhook)"
                )
                counts.append(cur.rowcount)
            removed.breakers, removed.rate_slots = counts
        return removed

    def _organizations(self, conn: Any, table: str, where: str) -> list[str]:
        with self._tx(conn=conn) as cur:
            cur.execute(ORGANIZATIONS_SQL.format(table=table, where=where))
            return [row[0] for row in cur.fetchall()]

    def checkpoint(self) -> bool:
        """SQLite's WAL has no counterpart here: the server checkpoints itself."""
        return True

    # -- reading --------------------------------------------------------------

    def webhook_days(
        self, organizations: Sequence[str] | None = None, since: str | None = None
    ) -> list[WebhookDay]:
        query = (
            "SELECT organization, webhook, day, delivered, failed, cancelled, attempts, "
            "retried, durations FROM webhook_days WHERE day >= %s"
        )
        args: list[Any] = [since or ""]
        if organizations is not None:
            query += " AND organization = ANY(%s)"
            args.append(list(organizations))
        query += " ORDER BY organization, webhook, day"
        with self._tx() as cur:
            cur.execute(query, args)
            rows = cur.fetchall()
        return [
            WebhookDay(org, hook, day, DayTotals.from_row(rest)) for org, hook, day, *rest in rows
        ]

    def retention_runs(self, limit: int = 10) -> list[RetentionRun]:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {RUN_COLUMNS} FROM retention_runs ORDER BY id DESC LIMIT %s", (limit,)
            )
            return [run_from_row(row) for row in cur.fetchall()]

    def state_size(self, detailed: bool = True) -> StateSize:
        """Sizes come from the catalog here, at no cost: `detailed` changes nothing."""
        with self._tx() as cur:
            cur.execute(
                "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname = ANY(%s)",
                (self.schema, list(SIZED_TABLES)),
            )
            found = {name: (estimate, size) for name, estimate, size in cur.fetchall()}
            tables = []
            for table in SIZED_TABLES:
                estimate, size = found.get(table, (0, 0))
                rows = estimate
                if estimate < EXACT_COUNT_BELOW:
                    cur.execute(f"SELECT count(*) FROM {table}")
                    rows = cur.fetchone()[0]
                tables.append(TableSize(table, int(rows), int(size)))
        oldest: list[float] = []
        with self._session() as conn:
            for organization in self._organizations(conn, "deliveries", FINISHED_WHERE):
                with self._tx(conn=conn) as cur:
                    cur.execute(
                        "SELECT min(updated_at) FROM deliveries "
                        f"WHERE organization = %s AND {FINISHED_WHERE}",
                        (organization,),
                    )
                    oldest.append(cur.fetchone()[0])
        runs = self.retention_runs(1)
        return StateSize(tables, {}, min(oldest) if oldest else None, runs[0] if runs else None)


def _vacuum_unless_autovacuum(conn: Any) -> None:
    """On a server whose autovacuum is off, VACUUM the queue's tables after a run, so
    that the space of the rows it removed is reused (with autovacuum on, migration
    0011's settings have it come after 2% of a table changed). VACUUM takes no lock
    that intake or the workers wait for; it runs outside a transaction, without the
    session's statement deadline (a large table may take longer)."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('autovacuum')")
        if cur.fetchone()[0] == "on":
            return
        cur.execute("SET statement_timeout = 0")
        try:
            cur.execute("VACUUM (ANALYZE) events, deliveries, attempts")
        finally:
            cur.execute("RESET statement_timeout")


def _prune_deliveries(cur: Any, organization: str, cutoff: float, limit: int) -> Removed:
    cur.execute(
        "SELECT id, organization, webhook, status, updated_at, event_id FROM deliveries "
        f"WHERE organization = %s AND {FINISHED_WHERE} AND updated_at < %s "
        "ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (organization, cutoff, limit),
    )
    rows = cur.fetchall()
    if not rows:
        return Removed()
    ids = [row[0] for row in rows]
    cur.execute(
        "SELECT delivery_id, duration_ms, outcome FROM attempts WHERE delivery_id = ANY(%s)",
        (ids,),
    )
    _add_days(cur, fold((row[:5] for row in rows), cur.fetchall()))
    removed = Removed()
    cur.execute("DELETE FROM attempts WHERE delivery_id = ANY(%s)", (ids,))
    removed.attempts = cur.rowcount
    cur.execute("DELETE FROM deliveries WHERE id = ANY(%s)", (ids,))
    removed.deliveries = cur.rowcount
    cur.execute(
        "DELETE FROM events e WHERE e.organization = %s AND e.id = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM deliveries d "
        "WHERE d.organization = e.organization AND d.event_id = e.id)",
        (organization, sorted({row[5] for row in rows})),
    )
    removed.events = cur.rowcount
    return removed


def _add_days(cur: Any, days: dict[DayKey, DayTotals]) -> None:
    for key, totals in sorted(days.items()):
        cur.execute(
            "SELECT delivered, failed, cancelled, attempts, retried, durations FROM webhook_days "
            "WHERE organization = %s AND webhook = %s AND day = %s FOR UPDATE",
            key,
        )
        row = cur.fetchone()
        merged = DayTotals.from_row(row) if row is not None else DayTotals()
        merged.add(totals)
        cur.execute(
            "INSERT INTO webhook_days (organization, webhook, day, delivered, failed, cancelled, "
            "attempts, retried, durations) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (organization, webhook, day) DO UPDATE SET "
            "delivered = excluded.delivered, failed = excluded.failed, "
            "cancelled = excluded.cancelled, attempts = excluded.attempts, "
            "retried = excluded.retried, durations = excluded.durations",
            (*key, *merged.row()),
        )
