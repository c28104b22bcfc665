"""The embedded default: one SQLite file, in WAL mode.

Every unit of work is one transaction. Writers take SQLite's write lock with
BEGIN IMMEDIATE, so an apply and a running dispatcher can share the file; the
apply lock is a row in `locks` naming its holder, so a waiting apply can say
who it waits for.

SQLite's errors stop at this module's boundary: a full disk, a failing write or
a corrupt page leaves every public method as a StateError naming the state and
the cause, after the transaction it broke was rolled back whole.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from reconciler.envaccess import EnvAccess
from reconciler.errors import LockTimeout, NoState, StaleState, StateError
from reconciler.store.base import (
    SHARED_ENV_KEY,
    AuditEntry,
    AuditRecord,
    LiveWebhook,
    ResumeOutcome,
    StateInfo,
    Write,
    audit_entry_from_row,
    audit_rows,
    history_query,
    no_state,
    resume_note,
    shared_env_from_text,
    shared_env_text,
)
from reconciler.store.liveness import gone_here
from reconciler.store.queue import HOLD_PENDING, RELEASE_HELD, held_reason
from reconciler.store.sqlite_console import SqliteConsole
from reconciler.store.sqlite_migrations import MIGRATIONS
from reconciler.store.sqlite_queue import SqliteQueue
from reconciler.store.sqlite_retention import WAL_LIMIT, SqliteRetention
from reconciler.store.tokens import TOKEN_COLUMNS, TokenRecord, token_from_row

LOCK_LEASE_SECONDS = 3600.0
_POLL_SECONDS = 0.1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's write
MIN_SQLITE = (3, 38, 0)  # the JSON operators -> and ->> (the queue's batch statements)


def _translatable(exc: sqlite3.Error) -> bool:
    """Errors of the database and the disk under it, as opposed to a bug in a
    statement (ProgrammingError, IntegrityError...), which keeps its traceback."""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or (
        type(exc) is sqlite3.DatabaseError
    )


def state_error(exc: sqlite3.Error, url: str, doing: str) -> StateError:
    """SQLite's error as the one line the user reads; `doing` is open, read or write."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StateError(f"{url} is not a reconciler state: {exc}")
    if code == sqlite3.SQLITE_FULL:
        return StateError(f"could not write the state at {url}: the disk is full ({exc})")
    return StateError(f"could not {doing} the state at {url}: {exc}")


_C = TypeVar("_C", bound=type)


def _errors_translated(cls: _C) -> _C:
    """Wrap every public method (the queue's too) so that SQLite's errors leave the
    store as StateError: a page found corrupt halfway through a read is one line,
    like a file that is not a database at all."""
    for name in dir(cls):
        method = inspect.getattr_static(cls, name)
        if not name.startswith("_") and inspect.isfunction(method):
            setattr(cls, name, _translating(method))
    return cls


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: SqliteStore, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                if not _translatable(exc):
                    raise
                raise state_error(exc, self.url, "read") from exc

        return generator

    @functools.wraps(method)
    def call(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if not _translatable(exc):
                raise
            raise state_error(exc, self.url, "read") from exc

    return call


@_errors_translated
class SqliteStore(SqliteQueue, SqliteRetention, SqliteConsole):
    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Open the state in the file at path. create=False (every command but those
        that make a state): the file must be there and hold reconciler's tables;
        nothing is created, not even the folder."""
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
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot open the state at {path}: {exc.strerror}") from None
        self._check_file(create)
        try:
            self._db = sqlite3.connect(
                path if create else f"file:{quote(str(path))}?mode=rw",  # rw: never creates
                isolation_level=None,
                timeout=BUSY_TIMEOUT,
                check_same_thread=False,
                uri=not create,
            )
        except sqlite3.Error as exc:
            raise state_error(exc, self.url, "open") from None
        try:
            # The first read, before any write: a file that is not a database (or
            # not one of ours, where nothing may be made) is refused as it is.
            if not self._has_tables():
                if not create:
                    raise no_state(self.url, "the file holds no reconciler tables")
                # Before the first table: only then does the setting take at once.
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            # A checkpoint that empties the WAL cuts the file back to this.
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            self._db.execute("PRAGMA synchronous=FULL")
            self._synchronous = "FULL"
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            if not _translatable(exc):
                raise
            raise state_error(exc, self.url, "open") from None
        except BaseException:
            self._db.close()
            raise

    def _check_file(self, create: bool) -> None:
        """Refuse what is at the path but cannot be a state, and, unless this opening
        may make a state, a file that is not there or empty (SQLite would take either
        as a new, empty database)."""
        try:
            found = self.path.stat()
        except FileNotFoundError:
            if create:
                return
            raise no_state(self.url, "no such file") from None
        except OSError as exc:
            raise StateError(f"could not open the state at {self.url}: {exc.strerror}") from None
        if stat.S_ISDIR(found.st_mode):
            raise NoState(f"{self.url} is a folder, not a reconciler state")
        if found.st_size == 0 and not create:
            raise NoState(
                f"{self.url} is empty (0 bytes): not a reconciler state; "
                "remove it to start a new state"
            )

    def _has_tables(self) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        return row is not None

    # -- transactions -------------------------------------------------------

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. durable=False skips the flush to disk at commit:
        still safe when the process is killed (the WAL is in the OS's hands), and
        used only where losing the write to a power cut costs a duplicate delivery,
        never an accepted event: claims and attempt records.

        Whatever fails, in the body or at COMMIT (a full disk fails there too), the
        transaction is rolled back whole and the cause is what is raised: SQLite
        may have rolled it back itself already, and a ROLLBACK then would fail
        and hide it."""
        try:
            level = "FULL" if durable else "NORMAL"
            if level != self._synchronous:
                self._db.execute(f"PRAGMA synchronous={level}")
                self._synchronous = level
            self._begin()
        except sqlite3.Error as exc:
            if not _translatable(exc):
                raise
            raise state_error(exc, self.url, "write") from exc
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and _translatable(exc):
                raise state_error(exc, self.url, "write") from exc
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            # A connection SQLite cannot roll back has nothing committed either.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

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
                    raise LockTimeout(
                        f"could not write the state at {self.url}: it is locked by another "
                        f"process for over {BUSY_TIMEOUT:g}s"
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

    def last_commit(self, organization: str | None = None) -> AuditEntry | None:
        return next(self.history(organization, limit=1, with_commit=True), None)

    def history(
        self,
        organization: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        *,
        with_commit: bool = False,
    ) -> Iterator[AuditEntry]:
        query, args = history_query("?", organization, name, limit, with_commit)
        for row in self._db.execute(query, args).fetchall():
            yield audit_entry_from_row(row)

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

    def _apply_puts(self, db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
        db.executemany(
            "INSERT INTO webhooks (organization, name, spec, applied_spec, paused_reason, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, NULL, ?, ?) "
            "ON CONFLICT (organization, name) DO UPDATE SET spec = excluded.spec, "
            "applied_spec = excluded.applied_spec, paused_reason = NULL, "
            "updated_at = excluded.updated_at",
            rows,
        )
        # An apply lifts a pause as `webhooks resume` does: what was held goes.
        now = time.time()
        db.executemany(RELEASE_HELD.format(p="?"), [(now, now, row[0], row[1]) for row in rows])

    def _apply_deletes(self, db: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
        db.executemany("DELETE FROM webhooks WHERE organization = ? AND name = ?", rows)
        self._cancel_in(db, rows, "cancelled: the webhook was deleted by apply", time.time())

    def _append_audit(
        self, db: sqlite3.Connection, audit: Sequence[AuditRecord], serial: int, now: str
    ) -> None:
        if not audit:
            return
        db.executemany(
            "INSERT INTO audit_log (at, serial, action, organization, name, before, after, "
            "actor, git_commit, plan_checksum, note, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        # What waits for it is held, not failed or sent, until it is resumed.
        db.execute(
            HOLD_PENDING.format(p="?"),
            (held_reason(reason, now), time.time(), organization, name),
        )
        # Resumed later, it starts with a closed circuit breaker.
        record = AuditRecord("pause", organization, name, None, None, actor, note=reason)
        self._breaker_reset_audited(db, record, now)

    def _breaker_reset_audited(self, db: sqlite3.Connection, record: AuditRecord, now: str) -> None:
        """The webhook's circuit breaker started afresh, and `record` in the audit log
        under the next serial: what pause and resume both end with."""
        db.execute(
            "DELETE FROM webhook_breakers WHERE organization = ? AND webhook = ?",
            (record.organization, record.name),
        )
        serial = int(db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0])
        serial += 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'serial'", (str(serial),))
        self._append_audit(db, [record], serial, now)

    def resume(self, organization: str, name: str, actor: str) -> ResumeOutcome:
        now = _now()
        with self._write() as db:
            row = db.execute(
                "SELECT paused_reason FROM webhooks WHERE organization = ? AND name = ?",
                (organization, name),
            ).fetchone()
            if row is None:
                return "no such webhook"
            if row[0] is None:
                return "not paused"
            db.execute(
                "UPDATE webhooks SET paused_reason = NULL, updated_at = ? "
                "WHERE organization = ? AND name = ?",
                (now, organization, name),
            )
            released = db.execute(
                RELEASE_HELD.format(p="?"), (time.time(), time.time(), organization, name)
            ).rowcount
            record = AuditRecord(
                "resume",
                organization,
                name,
                None,
                None,
                actor,
                note=resume_note(row[0], released),
            )
            self._breaker_reset_audited(db, record, now)
        return "resumed"

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
        except BaseException:
            # What failed is what is reported: a release that fails too (the same full
            # disk) leaves a row that the next apply sees as abandoned once we exit.
            with contextlib.suppress(StateError):
                self._release(token)
            raise
        self._release(token)

    def _release(self, token: str) -> None:
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
    return gone_here(pid, lock_host, host)
