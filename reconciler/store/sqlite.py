"""The embedded default: one SQLite file, in WAL mode.

Every unit of work is one transaction. Writers take SQLite's write lock with
BEGIN IMMEDIATE, so an apply and a running dispatcher can share the file; the
apply lock is a row in `locks` naming its holder, so a waiting apply can say
who it waits for.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from reconciler.envaccess import EnvAccess
from reconciler.errors import LockTimeout, StaleState, StateError
from reconciler.store.base import (
    SHARED_ENV_KEY,
    AuditEntry,
    AuditRecord,
    LiveWebhook,
    StateInfo,
    Write,
    audit_rows,
    shared_env_from_text,
    shared_env_text,
)
from reconciler.store.migrations import MIGRATIONS
from reconciler.store.sqlite_queue import SqliteQueue
from reconciler.store.tokens import TOKEN_COLUMNS, TokenRecord, token_from_row

LOCK_LEASE_SECONDS = 3600.0
_POLL_SECONDS = 0.1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's write
MIN_SQLITE = (3, 38, 0)  # the JSON operators -> and ->> (the queue's batch statements)


class SqliteStore(SqliteQueue):
    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._clock = clock
        self._sleep = sleep
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            need = ".".join(map(str, MIN_SQLITE))
            raise StateError(
                f"cannot open the state at {path}: SQLite {sqlite3.sqlite_version} is too old "
                f"(this Python's sqlite3 module; {need} or newer is needed)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot open the state at {path}: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state at {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._synchronous = "FULL"
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateError(f"cannot open the state at {path}: {exc}") from None

    # -- transactions -------------------------------------------------------

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. durable=False skips the flush to disk at commit:
        still safe when the process is killed (the WAL is in the OS's hands), and
        used only where losing the write to a power cut costs a duplicate delivery,
        never an accepted event: claims and attempt records."""
        level = "FULL" if durable else "NORMAL"
        if level != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level
        self._begin()
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write transaction in short
        steps. SQLite's own busy handler sleeps 1, 2, 5, 10, 15... ms between tries,
        far longer than these transactions last: two dispatchers on one file spent
        most of their time asleep in it."""
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            pause, deadline = 0.0001, None
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                        raise
                now = self._clock()
                deadline = deadline or now + BUSY_TIMEOUT
                if now >= deadline:
                    raise sqlite3.OperationalError(
                        f"the state is locked by another process for over {BUSY_TIMEOUT:g}s"
                    )
                self._sleep(pause)
                pause = min(pause * 2, 0.002)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, _now()))
            if db.execute("SELECT 1 FROM meta WHERE key = 'lineage'").fetchone() is None:
                db.execute("INSERT INTO meta VALUES ('lineage', ?)", (str(uuid.uuid4()),))
                db.execute("INSERT INTO meta VALUES ('serial', '0')")

    def migrations(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM schema_migrations")]

    # -- reading ------------------------------------------------------------

    def state(self) -> StateInfo:
        rows = dict(self._db.execute("SELECT key, value FROM meta"))
        return StateInfo(rows["lineage"], int(rows["serial"]))

    def webhooks(self, organization: str | None = None) -> list[LiveWebhook]:
        query = (
            "SELECT organization, name, spec, applied_spec, paused_reason, updated_at FROM webhooks"
        )
        args: tuple[str, ...] = ()
        if organization is not None:
            query += " WHERE organization = ?"
            args = (organization,)
        query += " ORDER BY organization, name"
        return [LiveWebhook(*row) for row in self._db.execute(query, args)]

    def shared_env(self) -> dict[str, str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (SHARED_ENV_KEY,)).fetchone()
        return shared_env_from_text(row[0] if row else None)

    def env_access(self) -> EnvAccess:
        rows = self._db.execute("SELECT DISTINCT organization FROM webhooks")
        return EnvAccess(frozenset(row[0] for row in rows), self.shared_env())

    def history(
        self, organization: str | None = None, name: str | None = None, limit: int | None = None
    ) -> Iterator[AuditEntry]:
        query = "SELECT * FROM audit_log WHERE 1=1"
        args: list[object] = []
        if organization is not None:
            query += " AND organization = ?"
            args.append(organization)
        if name is not None:
            query += " AND name = ?"
            args.append(name)
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        for row in self._db.execute(query, args).fetchall():
            (id_, at, serial, action, org, nm, before, after, actor, commit, checksum, note) = row
            record = AuditRecord(
                action,
                org,
                nm,
                json.loads(before) if before else None,
                json.loads(after) if after else None,
                actor,
                commit,
                checksum,
                note,
            )
            yield AuditEntry(id_, at, serial, record)

    # -- writing ------------------------------------------------------------

    def commit(
        self,
        writes: Sequence[Write],
        audit: Sequence[AuditRecord],
        expected_serial: int,
        shared_env: Mapping[str, str] | None = None,
    ) -> int:
        now = _now()
        with self._write() as db:
            serial = int(db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0])
            if serial != expected_serial:
                raise StaleState(
                    f"the live state changed since the plan was made (serial {expected_serial}, "
                    f"now {serial}); plan again"
                )
            serial += 1
            puts = [
                (w.organization, w.name, w.spec, w.spec, now, now)
                for w in writes
                if w.kind == "put"
            ]
            deletes = [(w.organization, w.name) for w in writes if w.kind == "delete"]
            self._apply_puts(db, puts)
            self._apply_deletes(db, deletes)
            if shared_env is not None:
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (SHARED_ENV_KEY, shared_env_text(shared_env)),
                )
            self._append_audit(db, audit, serial, now)
            db.execute("UPDATE meta SET value = ? WHERE key = 'serial'", (str(serial),))
        return serial

    def _apply_puts(self, db: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        db.executemany(
            "INSERT INTO webhooks (organization, name, spec, applied_spec, paused_reason, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, NULL, ?, ?) "
            "ON CONFLICT (organization, name) DO UPDATE SET spec = excluded.spec, "
            "applied_spec = excluded.applied_spec, paused_reason = NULL, "
            "updated_at = excluded.updated_at",
            rows,
        )

    def _apply_deletes(self, db: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
        db.executemany("DELETE FROM webhooks WHERE organization = ? AND name = ?", rows)
        self._cancel_in(db, rows, "cancelled: the webhook was deleted by apply", time.time())

    def _append_audit(
        self, db: sqlite3.Connection, audit: Sequence[AuditRecord], serial: int, now: str
    ) -> None:
        db.executemany(
            "INSERT INTO audit_log (at, serial, action, organization, name, before, after, "
            "actor, git_commit, plan_checksum, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            audit_rows(audit, serial, now),
        )

    def pause(self, organization: str, name: str, reason: str, actor: str) -> None:
        with self._write() as db:
            self._pause(db, organization, name, reason, actor)

    def _pause(
        self, db: sqlite3.Connection, organization: str, name: str, reason: str, actor: str
    ) -> None:
        now = _now()
        changed = db.execute(
            "UPDATE webhooks SET paused_reason = ?, updated_at = ? "
            "WHERE organization = ? AND name = ? AND paused_reason IS NULL",
            (reason, now, organization, name),
        ).rowcount
        if not changed:
            return
        serial = int(db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0])
        serial += 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'serial'", (str(serial),))
        record = AuditRecord("pause", organization, name, None, None, actor, note=reason)
        self._append_audit(db, [record], serial, now)

    # -- the apply lock -----------------------------------------------------

    @contextmanager
    def lock(self, holder: str, timeout: float) -> Iterator[None]:
        token = str(uuid.uuid4())
        deadline = self._clock() + timeout
        while True:
            current = self._try_lock(holder, token)
            if current is None:
                break
            if self._clock() >= deadline:
                who, pid, host, since = current
                raise LockTimeout(
                    f"the state is locked by {who} (pid {pid} on {host}, since {since}); "
                    f"waited {timeout:g}s"
                )
            self._sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            with self._write() as db:
                db.execute("DELETE FROM locks WHERE name = 'apply' AND token = ?", (token,))

    def _try_lock(self, holder: str, token: str) -> tuple[str, int, str, str] | None:
        """Take the lock and return None, or return who holds it."""
        host = socket.gethostname()
        with self._write() as db:
            row = db.execute(
                "SELECT holder, pid, host, acquired_at, expires_at FROM locks WHERE name = 'apply'"
            ).fetchone()
            if row is not None and not _abandoned(row, host):
                return row[0], row[1], row[2], row[3]
            db.execute(
                "INSERT OR REPLACE INTO locks (name, holder, pid, host, token, acquired_at, "
                "expires_at) VALUES ('apply', ?, ?, ?, ?, ?, ?)",
                (holder, os.getpid(), host, token, _now(), time.time() + LOCK_LEASE_SECONDS),
            )
        return None

    # -- API tokens -----------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.name,
                    token.role,
                    json.dumps(list(token.organizations)),
                    int(token.all_organizations),
                    token.token_hash,
                    token.created_at,
                    token.expires_at,
                    token.revoked_at,
                ),
            )

    def tokens(self) -> list[TokenRecord]:
        rows = self._db.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ).fetchall()
        return [token_from_row(row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        with self._write() as db:
            changed = db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            ).rowcount
        return bool(changed)

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = self._db.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return token_from_row(row) if row is not None else None

    def close(self) -> None:
        self._db.close()


def _abandoned(row: tuple[str, int, str, str, float], host: str) -> bool:
    """A lock whose lease ran out, or whose holder process on this host is gone."""
    _, pid, lock_host, _, expires_at = row
    if expires_at < time.time():
        return True
    if lock_host != host:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
