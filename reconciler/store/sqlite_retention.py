"""Retention on SQLite: small batches, each one short write transaction, and the
pages they free given back to the file system.

One dispatcher prunes at a time: a lease row (`locks`, name 'retention') taken in a
write transaction, renewed after each batch, released at the end; a holder whose
process died on this host, or whose lease ran out, is taken over. Each batch is
BEGIN IMMEDIATE on its own, so intake waits for at most one batch (a few
milliseconds), never for a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.store.liveness import gone_here
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

RETENTION_LEASE = 600.0  # seconds a pruner's lease lasts without a batch renewing it
VACUUM_STEP = 256  # pages given back per transaction (1 MiB of 4 KiB pages)
WAL_LIMIT = 64 * 1024 * 1024  # journal_size_limit: the WAL file is cut back to this


class SqliteRetention:
    path: Path
    url: str
    _db: sqlite3.Connection
    _write: Callable[..., AbstractContextManager[sqlite3.Connection]]

    # -- pruning --------------------------------------------------------------

    def prune(
        self,
        cutoffs: Cutoffs,
        clock: Callable[[], float],
        owner: str,
        *,
        batch: int = DEFAULT_BATCH,
        between: Callable[[], None] = lambda: None,
        lease: float = RETENTION_LEASE,
    ) -> RetentionRun | None:
        """Remove what is finished and older than its organization's cutoff, in
        batches of `batch` deliveries, calling `between` after each (the caller's
        pause, so that intake gets the lock). None when another pruner holds the
        lease: it is doing this very work."""
        started = clock()
        token = str(uuid.uuid4())
        if not self._take_lease(owner, token, started, lease):
            return None
        removed = Removed()
        try:
            self._prune_all(cutoffs, clock, token, lease, batch, between, removed)
        except _LeaseLost:
            pass  # another pruner took over a lease this one let run out; it goes on
        except BaseException:
            with contextlib.suppress(Exception):
                self._end_lease(token)
            raise
        removed.bytes_released = self._give_back(between)
        run = RetentionRun(owner, started, clock(), removed)
        with self._write() as db:
            db.execute(
                f"INSERT INTO retention_runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                run_row(run),
            )
            db.execute(
                "DELETE FROM retention_runs WHERE id <= (SELECT max(id) FROM retention_runs) - ?",
                (RUNS_KEPT,),
            )
            db.execute("DELETE FROM locks WHERE name = 'retention' AND token = ?", (token,))
        self.checkpoint()  # what the run wrote to the WAL goes to the file, the WAL to 0
        return run

    def _prune_all(
        self,
        cutoffs: Cutoffs,
        clock: Callable[[], float],
        token: str,
        lease: float,
        batch: int,
        between: Callable[[], None],
        removed: Removed,
    ) -> None:
        while cutoffs.bodies is not None:
            with self._write() as db:
                _renew(db, token, clock() + lease)
                row = db.execute("SELECT value FROM meta WHERE key = ?", (BODIES_FROM,)).fetchone()
                start = float(row[0]) if row else 0.0
                found = db.execute(
                    NEXT_BODIES.format(p="?"), (start, cutoffs.bodies, batch)
                ).fetchall()
                db.execute(
                    DROP_BODIES.format(ids="IN (SELECT value FROM json_each(?))"),
                    (json.dumps([r[0] for r in found]),),
                )
                done = found[-1][1] if len(found) == batch else cutoffs.bodies
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (BODIES_FROM, repr(max(start, done))),
                )
            between()
            if len(found) < batch:
                break
        for organization in self._organizations("deliveries", FINISHED_WHERE):
            cutoff = cutoffs.of(organization)
            while True:
                with self._write() as db:
                    _renew(db, token, clock() + lease)
                    got = _prune_deliveries(db, organization, cutoff, batch)
                removed.add(got)
                between()
                if got.deliveries < batch:
                    break
        for organization in self._organizations("events", NO_DELIVERIES_WHERE):
            cutoff = cutoffs.of(organization)
            while True:
                with self._write() as db:
                    _renew(db, token, clock() + lease)
                    events = _prune_lone_events(db, organization, cutoff, batch)
                removed.events += events
                between()
                if events < batch:
                    break
        with self._write() as db:
            _renew(db, token, clock() + lease)
            removed.breakers, removed.rate_slots = _prune_orphans(db)

    def _end_lease(self, token: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM locks WHERE name = 'retention' AND token = ?", (token,))

    def _take_lease(self, owner: str, token: str, now: float, lease: float) -> bool:
        host = socket.gethostname()
        with self._write() as db:
            row = db.execute(
                "SELECT pid, host, expires_at FROM locks WHERE name = 'retention'"
            ).fetchone()
            if row is not None and not _lease_abandoned(row, host, now):
                return False
            db.execute(
                "INSERT OR REPLACE INTO locks (name, holder, pid, host, token, acquired_at, "
                "expires_at) VALUES ('retention', ?, ?, ?, ?, ?, ?)",
                (owner, os.getpid(), host, token, _iso(now), now + lease),
            )
        return True

    def _organizations(self, table: str, where: str) -> list[str]:
        query = ORGANIZATIONS_SQL.format(table=table, where=where)
        return [row[0] for row in self._db.execute(query).fetchall()]

    def _give_back(self, between: Callable[[], None]) -> int:
        """Release the free pages to the file system, VACUUM_STEP at a time (a file
        without incremental auto-vacuum keeps them for reuse: nothing to do)."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        released = 0
        while True:
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            if free == 0:
                break
            with self._write(durable=False) as db:
                for _ in range(min(free, VACUUM_STEP)):
                    # Each step of this pragma frees one page; the sqlite3 module
                    # steps a statement once per execute.
                    db.execute("PRAGMA incremental_vacuum(1)")
            released += min(free, VACUUM_STEP) * page_size
            between()
        return released

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and cut it to nothing, if no reader and no
        writer is in the way right now; never waits for them (a waiting checkpoint
        holds off every writer). False when it had to leave the WAL as it was."""
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:
            return False
        finally:
            self._db.execute("PRAGMA busy_timeout=30000")
        return not busy

    # -- reading --------------------------------------------------------------

    def webhook_days(
        self, organizations: Sequence[str] | None = None, since: str | None = None
    ) -> list[WebhookDay]:
        query = (
            "SELECT organization, webhook, day, delivered, failed, cancelled, attempts, "
            "retried, durations FROM webhook_days WHERE day >= ?"
        )
        args: list[Any] = [since or ""]
        if organizations is not None:
            query += " AND organization IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(organizations)))
        query += " ORDER BY organization, webhook, day"
        return [
            WebhookDay(org, hook, day, DayTotals.from_row(rest))
            for org, hook, day, *rest in self._db.execute(query, args).fetchall()
        ]

    def retention_runs(self, limit: int = 10) -> list[RetentionRun]:
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM retention_runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [run_from_row(row) for row in rows]

    def state_size(self, detailed: bool = True) -> StateSize:
        """detailed=False leaves out the bytes per table: SQLite finds them by reading
        every page of the file (the dispatcher's task, every minute, makes do with
        the files' sizes; `retention status` reads them)."""
        sizes: dict[str, int] = {}
        if detailed:
            index_of = dict(
                self._db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")
            )
            for name, size in self._db.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
            ).fetchall():
                table = index_of.get(name, name)
                sizes[table] = sizes.get(table, 0) + int(size)
        tables = [
            TableSize(
                table,
                int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]),
                sizes.get(table, 0) if detailed else None,
            )
            for table in SIZED_TABLES
        ]
        files = {"database": _size(self.path), "wal": _size(Path(f"{self.path}-wal"))}
        notes = []
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            notes.append(
                "this file was made without incremental auto-vacuum: pages retention frees "
                "are reused, not given back; rebuild it once with every dispatcher stopped: "
                f"sqlite3 {self.path} 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;'"
            )
        oldest = [
            self._db.execute(
                "SELECT min(updated_at) FROM deliveries "
                f"WHERE organization = ? AND {FINISHED_WHERE}",
                (organization,),
            ).fetchone()[0]
            for organization in self._organizations("deliveries", FINISHED_WHERE)
        ]
        runs = self.retention_runs(1)
        return StateSize(
            tables,
            files,
            min(oldest) if oldest else None,
            runs[0] if runs else None,
            notes,
        )


def _prune_deliveries(
    db: sqlite3.Connection, organization: str, cutoff: float, limit: int
) -> Removed:
    rows = db.execute(
        "SELECT id, organization, webhook, status, updated_at, event_id FROM deliveries "
        f"WHERE organization = ? AND {FINISHED_WHERE} AND updated_at < ? "
        "ORDER BY updated_at LIMIT ?",
        (organization, cutoff, limit),
    ).fetchall()
    if not rows:
        return Removed()
    ids = json.dumps([row[0] for row in rows])
    attempts = db.execute(
        "SELECT delivery_id, duration_ms, outcome FROM attempts "
        "WHERE delivery_id IN (SELECT value FROM json_each(?))",
        (ids,),
    ).fetchall()
    _add_days(db, fold((row[:5] for row in rows), attempts))
    removed = Removed()
    removed.attempts = db.execute(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(?))", (ids,)
    ).rowcount
    removed.deliveries = db.execute(
        "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))", (ids,)
    ).rowcount
    removed.events = db.execute(
        "DELETE FROM events WHERE organization = ? AND id IN (SELECT value FROM json_each(?)) "
        "AND NOT EXISTS (SELECT 1 FROM deliveries d "
        "WHERE d.organization = events.organization AND d.event_id = events.id)",
        (organization, json.dumps(sorted({row[5] for row in rows}))),
    ).rowcount
    return removed


def _prune_lone_events(db: sqlite3.Connection, organization: str, cutoff: float, limit: int) -> int:
    """Events that queued no delivery (no webhook matched), received before cutoff."""
    return db.execute(
        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
        f"WHERE organization = ? AND {NO_DELIVERIES_WHERE} AND received_at < ? LIMIT ?)",
        (organization, cutoff, limit),
    ).rowcount


def _prune_orphans(db: sqlite3.Connection) -> tuple[int, int]:
    """The circuit breakers and rate-limit rows of webhooks that are no longer live."""
    counts = []
    for table in ("webhook_breakers", "rate_limit_slots"):
        counts.append(
            db.execute(
                f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM webhooks w "
                f"WHERE w.organization = {table}.organization AND w.name = {table}.webhook)"
            ).rowcount
        )
    return counts[0], counts[1]


def _add_days(db: sqlite3.Connection, days: dict[DayKey, DayTotals]) -> None:
    for key, totals in sorted(days.items()):
        row = db.execute(
            "SELECT delivered, failed, cancelled, attempts, retried, durations FROM webhook_days "
            "WHERE organization = ? AND webhook = ? AND day = ?",
            key,
        ).fetchone()
        merged = DayTotals.from_row(row) if row is not None else DayTotals()
        merged.add(totals)
        db.execute(
            "INSERT OR REPLACE INTO webhook_days (organization, webhook, day, delivered, failed, "
            "cancelled, attempts, retried, durations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, *merged.row()),
        )


class _LeaseLost(Exception):
    """This pruner's lease ran out and another took it: the batch is rolled back."""


def _renew(db: sqlite3.Connection, token: str, expires_at: float) -> None:
    renewed = db.execute(
        "UPDATE locks SET expires_at = ? WHERE name = 'retention' AND token = ?",
        (expires_at, token),
    ).rowcount
    if not renewed:
        raise _LeaseLost


def _lease_abandoned(row: tuple[int, str, float], host: str, now: float) -> bool:
    pid, lock_host, expires_at = row
    if expires_at < now:
        return True
    return pid != os.getpid() and gone_here(pid, lock_host, host)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
