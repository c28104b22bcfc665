"""The PostgreSQL backend: one state for CI and for dispatchers on many machines.

Selected by a state URL `postgresql://user@host:port/db` (optionally
`?schema=NAME`, to keep several states in one database, and `&pool_size=N`).
psycopg 3 with a connection pool; applies serialize on an advisory lock, and
migrations run under another, so processes starting at once migrate once.

Every connection has deadlines (CONNECTION_DEFAULTS, SESSION_DEFAULTS), so a
stalled server or a half-open link fails a call instead of holding it, and its
locked rows, for hours; a transaction left idle (a link that stalled mid-claim)
ends within the shortest delivery lease (queue.LEASE_MARGIN). The URL's own query
parameters of the same names override them. The pool checks a connection
before handing it out and replaces a dead one.

This class follows sqlite.py method for method, and postgres_queue.py follows
sqlite_queue.py: the same statements in each database's dialect, locking and
driver (psycopg's cursor and %s, FOR UPDATE and advisory locks; sqlite3's
connection, ? and BEGIN IMMEDIATE). What does not depend on the dialect is
shared (store/base.py, queue.py, breakers.py, tokens.py, health_sql.py); the
parallel statements stay, and one contract suite holds both to one behaviour.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from reconciler.envaccess import EnvAccess
from reconciler.errors import LockTimeout, StaleState, StateError
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
from reconciler.store.postgres_console import PostgresConsole
from reconciler.store.postgres_migrations import MIGRATIONS
from reconciler.store.postgres_queue import PostgresQueue
from reconciler.store.postgres_retention import PostgresRetention
from reconciler.store.queue import HOLD_PENDING, RELEASE_HELD, held_reason
from reconciler.store.tokens import TOKEN_COLUMNS, TokenRecord, token_from_row

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the install
    raise StateError(
        "the PostgreSQL backend needs psycopg: pip install 'webhook-reconciler[postgres]'"
    ) from exc

_POLL_SECONDS = 0.1
DEFAULT_POOL_SIZE = 5
# How long a call waits for a connection from the pool (psycopg_pool's default is
# 30 s): as long as one connection attempt may take, so a server that refuses or
# drops every connection fails the call within it.
POOL_WAIT = 10.0
# libpq's connection parameters, unless the URL sets them: a connection attempt,
# an unanswered link (keepalives: probed after 10 s idle, every 5 s, dead after 3
# misses) and unacknowledged data (tcp_user_timeout, in ms) all end within 30 s.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
# Server settings of each session, unless the URL's query sets them: no statement
# runs longer than 30 s, and no transaction stays open idle (its rows locked) longer
# than 10 s, the shortest delivery lease: the dispatcher never leaves a transaction
# idle, so only a stalled link or a wedged client does, and the rows it locked are
# free again before a lease of theirs could have run out.
SESSION_DEFAULTS = {
    "statement_timeout": "30s",
    "idle_in_transaction_session_timeout": "10s",
}

# The server, its disk, a trigger or a permission refused what a transaction did
# (psycopg has rolled it back whole): one line for the user. Any other error of a
# statement (a syntax error, a constraint) is a bug and keeps its traceback.
_REFUSALS = (
    psycopg.OperationalError,  # the connection, a full disk (DiskFull), resources
    psycopg.InternalError,  # e.g. a read-only transaction, a server's internal error
    psycopg.errors.RaiseException,  # a trigger's RAISE EXCEPTION
    psycopg.errors.InsufficientPrivilege,
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def split_url(url: str) -> tuple[str, str, int]:
    """(conninfo without our parameters, schema, pool size). The conninfo carries
    the deadlines of CONNECTION_DEFAULTS and SESSION_DEFAULTS (as `options`), each
    unless the URL sets it."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    schema = params.pop("schema", "public")
    pool_size = int(params.pop("pool_size", DEFAULT_POOL_SIZE))
    if not schema.replace("_", "").isalnum():
        raise StateError(f"schema {schema!r}: use letters, digits and _")
    for name, value in CONNECTION_DEFAULTS.items():
        params.setdefault(name, value)
    options = params.get("options", "")
    for name, default in SESSION_DEFAULTS.items():
        value = params.pop(name, default)
        if not value or any(c.isspace() or c == "\\" for c in value):
            raise StateError(f"{name} {value!r}: give a duration such as 30s, 0 for none")
        if name not in options:  # the URL's own options set it
            options = f"{options} -c {name}={value}".strip()
    params["options"] = options
    conninfo = urlunsplit(parts._replace(query=urlencode(params, quote_via=quote)))
    return conninfo, schema, pool_size


def shown_url(url: str) -> str:
    """The URL without its user and password, fit for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(PostgresQueue, PostgresRetention, PostgresConsole):
    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Open the state in the URL's schema. create=False (every command but those
        that make a state): the schema must be there and hold reconciler's tables;
        nothing is created."""
        self.url = shown_url(url)
        self._clock = clock
        self._sleep = sleep
        conninfo, self.schema, pool_size = split_url(url)
        self._keys = {
            name: zlib.crc32(f"reconciler:{self.schema}:{name}".encode())
            for name in ("apply", "migrate", "retention")
        }
        # Per-webhook claim locks take two 32-bit keys: this state's, and the webhook's.
        self._claim_key = zlib.crc32(f"reconciler:{self.schema}:claim".encode()) - 2**31
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                if create:
                    _create_schema(conn, self.schema)
                else:
                    _check_there(conn, self.schema, self.url)
        except psycopg.Error as exc:
            raise StateError(f"cannot open the state at {self.url}: {_reason(exc)}") from None
        options = conninfo_to_dict(conninfo).get("options", "")
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(pool_size, 2),
            kwargs={"options": f"{options} -c search_path={self.schema}".strip()},
            # A connection the server or the network ended is replaced, not handed out.
            check=ConnectionPool.check_connection,
            timeout=POOL_WAIT,
            open=True,
            name="reconciler",
        )
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    # -- transactions -------------------------------------------------------

    @contextmanager
    def _tx(
        self, durable: bool = True, conn: psycopg.Connection[Any] | None = None
    ) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction. durable=False: commit without waiting for the flush to
        disk; only for claims and attempt records (a lost one costs a duplicate).
        On `conn` (from _session) rather than a connection of the pool's choosing."""
        held = self._pool.connection() if conn is None else contextlib.nullcontext(conn)
        try:
            with held as conn, conn.transaction(), conn.cursor() as cur:
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield cur
        except psycopg.errors.DiskFull as exc:
            raise StateError(
                f"could not write the state at {self.url}: the disk is full ({_reason(exc)})"
            ) from None
        except _REFUSALS as exc:
            raise StateError(f"the state at {self.url} failed: {_reason(exc)}") from None

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """One connection of the pool for a while, in autocommit (each _tx on it is
        its own transaction): what a session-level advisory lock is held on."""
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    def _migrate(self) -> None:
        with self._tx() as cur:
            # A migration may rewrite a large table, and another process's may hold
            # the lock meanwhile: neither is cut short by the statement deadline.
            cur.execute("SET LOCAL statement_timeout = 0")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._keys["migrate"],))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            cur.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (name, _now()))
            cur.execute("SELECT 1 FROM meta WHERE key = 'lineage'")
            if cur.fetchone() is None:
                cur.execute("INSERT INTO meta VALUES ('lineage', %s)", (str(uuid.uuid4()),))
                cur.execute("INSERT INTO meta VALUES ('serial', '0')")

    def migrations(self) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT name FROM schema_migrations ORDER BY name")
            return [row[0] for row in cur.fetchall()]

    # -- reading ------------------------------------------------------------

    def state(self) -> StateInfo:
        with self._tx() as cur:
            cur.execute("SELECT key, value FROM meta")
            rows = dict(cur.fetchall())
        return StateInfo(rows["lineage"], int(rows["serial"]))

    def webhooks(self, organization: str | None = None) -> list[LiveWebhook]:
        query = (
            "SELECT organization, name, spec, applied_spec, paused_reason, updated_at FROM webhooks"
        )
        args: tuple[str, ...] = ()
        if organization is not None:
            query += " WHERE organization = %s"
            args = (organization,)
        query += " ORDER BY organization, name"
        with self._tx() as cur:
            cur.execute(query, args)
            return [LiveWebhook(*row) for row in cur.fetchall()]

    def shared_env(self) -> dict[str, str]:
        with self._tx() as cur:
            cur.execute("SELECT value FROM meta WHERE key = %s", (SHARED_ENV_KEY,))
            row = cur.fetchone()
        return shared_env_from_text(row[0] if row else None)

    def env_access(self) -> EnvAccess:
        with self._tx() as cur:
            cur.execute("SELECT DISTINCT organization FROM webhooks")
            organizations = [row[0] for row in cur.fetchall()]
            cur.execute("SELECT value FROM meta WHERE key = %s", (SHARED_ENV_KEY,))
            row = cur.fetchone()
        return EnvAccess(frozenset(organizations), shared_env_from_text(row[0] if row else None))

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
        query, args = history_query("%s", organization, name, limit, with_commit)
        with self._tx() as cur:
            cur.execute(query, args)
            rows = cur.fetchall()
        for row in rows:
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
        with self._tx() as cur:
            cur.execute("SELECT value FROM meta WHERE key = 'serial' FOR UPDATE")
            serial = int(cur.fetchone()[0])  # type: ignore[index]
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
            if puts:
                cur.executemany(
                    "INSERT INTO webhooks (organization, name, spec, applied_spec, paused_reason, "
                    "created_at, updated_at) VALUES (%s, %s, %s, %s, NULL, %s, %s) "
                    "ON CONFLICT (organization, name) DO UPDATE SET spec = excluded.spec, "
                    "applied_spec = excluded.applied_spec, paused_reason = NULL, "
                    "updated_at = excluded.updated_at",
                    puts,
                )
                # An apply lifts a pause as `webhooks resume` does: what was held goes.
                moment = time.time()
                cur.executemany(
                    RELEASE_HELD.format(p="%s"),
                    [(moment, moment, put[0], put[1]) for put in puts],
                )
            if deletes:
                cur.executemany(
                    "DELETE FROM webhooks WHERE organization = %s AND name = %s", deletes
                )
                self._cancel_in(
                    cur, deletes, "cancelled: the webhook was deleted by apply", time.time()
                )
            if shared_env is not None:
                cur.execute(
                    "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (SHARED_ENV_KEY, shared_env_text(shared_env)),
                )
            self._append_audit(cur, audit, serial, now)
            cur.execute("UPDATE meta SET value = %s WHERE key = 'serial'", (str(serial),))
        return serial

    def _append_audit(
        self, cur: psycopg.Cursor[Any], audit: Sequence[AuditRecord], serial: int, now: str
    ) -> None:
        if not audit:
            return
        cur.executemany(
            "INSERT INTO audit_log (at, serial, action, organization, name, before, after, "
            "actor, git_commit, plan_checksum, note, source) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            audit_rows(audit, serial, now),
        )

    def pause(self, organization: str, name: str, reason: str, actor: str) -> None:
        with self._tx() as cur:
            self._pause(cur, organization, name, reason, actor)

    def _pause(
        self, cur: psycopg.Cursor[Any], organization: str, name: str, reason: str, actor: str
    ) -> None:
        now = _now()
        cur.execute(
            "UPDATE webhooks SET paused_reason = %s, updated_at = %s "
            "WHERE organization = %s AND name = %s AND paused_reason IS NULL",
            (reason, now, organization, name),
        )
        if not cur.rowcount:
            return
        # What waits for it is held, not failed or sent, until it is resumed.
        cur.execute(
            HOLD_PENDING.format(p="%s"),
            (held_reason(reason, now), time.time(), organization, name),
        )
        # Resumed later, it starts with a closed circuit breaker.
        record = AuditRecord("pause", organization, name, None, None, actor, note=reason)
        self._breaker_reset_audited(cur, record, now)

    def _breaker_reset_audited(self, cur: Any, record: AuditRecord, now: str) -> None:
        """The webhook's circuit breaker started afresh, and `record` in the audit log
        under the next serial: what pause and resume both end with."""
        cur.execute(
            "DELETE FROM webhook_breakers WHERE organization = %s AND webhook = %s",
            (record.organization, record.name),
        )
        cur.execute("SELECT value FROM meta WHERE key = 'serial' FOR UPDATE")
        serial = int(cur.fetchone()[0]) + 1
        cur.execute("UPDATE meta SET value = %s WHERE key = 'serial'", (str(serial),))
        self._append_audit(cur, [record], serial, now)

    def resume(self, organization: str, name: str, actor: str) -> ResumeOutcome:
        now = _now()
        with self._tx() as cur:
            cur.execute(
                "SELECT paused_reason FROM webhooks WHERE organization = %s AND name = %s "
                "FOR UPDATE",
                (organization, name),
            )
            row = cur.fetchone()
            if row is None:
                return "no such webhook"
            if row[0] is None:
                return "not paused"
            cur.execute(
                "UPDATE webhooks SET paused_reason = NULL, updated_at = %s "
                "WHERE organization = %s AND name = %s",
                (now, organization, name),
            )
            cur.execute(RELEASE_HELD.format(p="%s"), (time.time(), time.time(), organization, name))
            record = AuditRecord(
                "resume",
                organization,
                name,
                None,
                None,
                actor,
                note=resume_note(row[0], cur.rowcount),
            )
            self._breaker_reset_audited(cur, record, now)
        return "resumed"

    # -- the apply lock -----------------------------------------------------

    @contextmanager
    def lock(self, holder: str, timeout: float) -> Iterator[None]:
        """A session advisory lock: released by PostgreSQL itself if the holder dies."""
        token = str(uuid.uuid4())
        deadline = self._clock() + timeout
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                while not self._try_lock(conn):
                    if self._clock() >= deadline:
                        row = conn.execute(
                            "SELECT holder, pid, host, acquired_at FROM locks WHERE name = 'apply'"
                        ).fetchone()
                        who, pid, host, since = row or ("another process", "?", "?", "?")
                        raise LockTimeout(
                            f"the state is locked by {who} (pid {pid} on {host}, since {since}); "
                            f"waited {timeout:g}s"
                        )
                    self._sleep(_POLL_SECONDS)
                conn.execute(
                    "INSERT INTO locks (name, holder, pid, host, token, acquired_at, expires_at) "
                    "VALUES ('apply', %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                    "holder = excluded.holder, pid = excluded.pid, host = excluded.host, "
                    "token = excluded.token, acquired_at = excluded.acquired_at, "
                    "expires_at = excluded.expires_at",
                    (holder, os.getpid(), socket.gethostname(), token, _now(), time.time()),
                )
                try:
                    yield
                finally:
                    conn.execute("DELETE FROM locks WHERE name = 'apply' AND token = %s", (token,))
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self._keys["apply"],))
            finally:
                conn.autocommit = False

    def _try_lock(self, conn: psycopg.Connection[Any]) -> bool:
        key = self._keys["apply"]
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
            return True
        row = conn.execute("SELECT pid, host FROM locks WHERE name = 'apply'").fetchone()
        if row is None or not gone_here(*row):
            return False
        # The holder died on this host; its session is going or gone. Wait for the
        # server to drop it, and end it if it lingers.
        conn.execute("SET lock_timeout = '5s'")
        try:
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            except psycopg.errors.LockNotAvailable:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objid = %s AND granted",
                    (key,),
                )
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.execute("RESET lock_timeout")
        return True

    # -- API tokens -----------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token.id,
                    token.name,
                    token.role,
                    json.dumps(list(token.organizations)),
                    token.all_organizations,
                    token.token_hash,
                    token.created_at,
                    token.expires_at,
                    token.revoked_at,
                ),
            )

    def tokens(self) -> list[TokenRecord]:
        with self._tx() as cur:
            cur.execute(f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id")
            return [token_from_row(row) for row in cur.fetchall()]

    def revoke_token(self, token_id: str, now: float) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE api_tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, token_id),
            )
            return bool(cur.rowcount)

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = %s",
                (token_hash,),
            )
            row = cur.fetchone()
        return token_from_row(row) if row is not None else None

    def close(self) -> None:
        self._pool.close()


def _create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """CREATE SCHEMA IF NOT EXISTS, safe when another session creates it at the same
    moment: PostgreSQL's IF NOT EXISTS sees only committed schemas, so the loser of
    that race fails on the catalog's unique index although the schema now exists."""
    # Made by the other session: it exists, which is all that is needed.
    with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def _check_there(conn: psycopg.Connection[Any], schema: str, url: str) -> None:
    """A state is a schema holding reconciler's tables; raise NoState otherwise."""
    found = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
        "EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s "
        "AND tablename = 'schema_migrations')",
        (schema, schema),
    ).fetchone()
    schema_there, tables_there = found or (False, False)
    if not schema_there:
        raise no_state(url, f"the schema {schema} does not exist")
    if not tables_there:
        raise no_state(url, f"the schema {schema} holds no reconciler tables")


def _reason(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
