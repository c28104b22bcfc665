"""SqliteStore: the store contract on a real file, plus what only SQLite has."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.errors import LockTimeout, StaleState, StateError
from reconciler.store import DEFAULT_STATE, open_store, state_url
from reconciler.store import sqlite_migrations as migrations_module
from reconciler.store.queue import EventRecord
from reconciler.store.sqlite import SqliteStore
from reconciler.store.sqlite_migrations import MIGRATIONS
from tests.support import previous_schema
from tests.support.helpers_state import SUBPROCESS_TIMEOUT, FakeClock, sqlite_url
from tests.support.store_contract import StoreContract, put, record


class SqliteFactory:
    """Opens connections to one state file; closes them all at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = sqlite_url(path)
        self.opened: list[SqliteStore] = []

    def __call__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> SqliteStore:
        kwargs: dict[str, object] = {}
        if clock is not None:
            kwargs["clock"] = clock
        if sleep is not None:
            kwargs["sleep"] = sleep
        store = SqliteStore(self.path, **kwargs)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[SqliteFactory]:
    made = SqliteFactory(tmp_path / "state" / "state.db")
    yield made
    made.close()


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, factory: SqliteFactory) -> SqliteFactory:
        return factory


@pytest.fixture
def store(factory: SqliteFactory) -> SqliteStore:
    return factory()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- the file -----------------------------------------------------------------------


def test_the_state_file_and_its_folder_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    store = SqliteStore(path)
    store.close()
    assert path.is_file()


def test_journal_mode_is_wal(store: SqliteStore, factory: SqliteFactory) -> None:
    conn = raw(factory.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_migrations_are_recorded_by_name(store: SqliteStore, factory: SqliteFactory) -> None:
    names = [name for name, _statements in MIGRATIONS]
    assert store.migrations() == names
    conn = raw(factory.path)
    try:
        rows = conn.execute("SELECT name, applied_at FROM schema_migrations").fetchall()
    finally:
        conn.close()
    assert [name for name, _ in rows] == names
    assert all(applied_at for _, applied_at in rows)


def test_reopening_does_not_rerun_migrations(factory: SqliteFactory) -> None:
    first = factory()
    first.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
    conn = raw(factory.path)
    try:
        recorded = conn.execute("SELECT * FROM schema_migrations").fetchall()
    finally:
        conn.close()
    state = first.state()
    first.close()

    again = factory()
    assert again.state() == state
    assert [w.key for w in again.webhooks()] == [("acme", "a")]
    assert len(list(again.history())) == 1
    conn = raw(factory.path)
    try:
        assert conn.execute("SELECT * FROM schema_migrations").fetchall() == recorded
    finally:
        conn.close()


def test_a_new_migration_runs_once_and_only_it(
    factory: SqliteFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory().close()
    extended = [
        *MIGRATIONS,
        ("9999_test_column", ["ALTER TABLE webhooks ADD COLUMN test_column TEXT"]),
    ]
    monkeypatch.setattr(migrations_module, "MIGRATIONS", extended)
    monkeypatch.setattr("reconciler.store.sqlite.MIGRATIONS", extended)
    # Re-running 0001 would fail (CREATE TABLE without IF NOT EXISTS); re-running
    # 9999 would fail too (duplicate column): opening twice shows neither happens.
    assert factory().migrations() == [name for name, _ in extended]
    assert factory().migrations() == [name for name, _ in extended]


def test_a_state_of_the_schema_before_per_organization_events_keeps_every_row(
    factory: SqliteFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [name for name, _ in MIGRATIONS]
    before = MIGRATIONS[: names.index(previous_schema.MIGRATION)]
    with monkeypatch.context() as patch:
        patch.setattr("reconciler.store.sqlite.MIGRATIONS", before)
        old = factory()
        old.commit([put("acme", "a"), put("acme", "b"), put("globex", "a")], [], 0)
        assert old.migrations() == [name for name, _ in before]
    conn = raw(factory.path)
    try:
        for statement in previous_schema.ROWS:
            conn.execute(statement)
        largest_attempt = conn.execute("SELECT max(id) FROM attempts").fetchone()[0]
    finally:
        conn.close()

    store = factory()

    assert store.migrations() == names
    previous_schema.check_migrated(store)
    conn = raw(factory.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # attempt ids go on after the old ones
        ids = [row[0] for row in conn.execute("SELECT id FROM attempts ORDER BY id")]
        assert ids[:3] == [1, 2, 3] and ids[3] > largest_attempt
        conn.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            # a delivery names its event by organization and id
            conn.execute(
                "INSERT INTO deliveries (id, event_id, organization, webhook, status, "
                "created_at, updated_at) VALUES ('msg_x', 'g-1', 'acme', 'a', 'pending', 0, 0)"
            )
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert not [name for name in tables if name.endswith("_0005")]
    finally:
        conn.close()


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database file, not at all" * 100)
    with pytest.raises(StateError, match="is not a reconciler state: file is not a database"):
        SqliteStore(path)


def test_a_state_path_below_a_regular_file_is_a_state_error(tmp_path: Path) -> None:
    # e.g. RECONCILER_STATE=sqlite:///state.db/state.db after a typo: one clear
    # line from the CLI, not a traceback (FileExistsError from mkdir).
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StateError):
        SqliteStore(tmp_path / "afile" / "state.db")


# -- open_store and the state URL ----------------------------------------------------


def test_open_store_opens_sqlite_urls(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path / "s.db"), create=True)
    try:
        assert isinstance(store, SqliteStore)
        assert store.url == sqlite_url(tmp_path / "s.db")
        assert store.state().serial == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://user:pw@127.0.0.1:1/reconciler", "cannot open the state"),
        ("mysql://db.example.com/x", "unknown state URL scheme 'mysql'"),
        ("state.db", "unknown state URL scheme"),
    ],
)
def test_open_store_refuses_other_urls(url: str, message: str) -> None:
    with pytest.raises(StateError, match=message) as raised:
        open_store(url)
    assert "pw" not in str(raised.value)


def test_state_url_prefers_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RECONCILER_STATE", raising=False)
    assert state_url(None) == DEFAULT_STATE
    monkeypatch.setenv("RECONCILER_STATE", "sqlite:///from-env.db")
    assert state_url(None) == "sqlite:///from-env.db"
    assert state_url("sqlite:///explicit.db") == "sqlite:///explicit.db"


# -- the audit log is append-only in the database itself -----------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory'",
        "UPDATE audit_log SET after = NULL WHERE action = 'create'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE id = 1",
    ],
)
def test_triggers_refuse_raw_updates_and_deletes_of_the_audit_log(
    store: SqliteStore, factory: SqliteFactory, statement: str
) -> None:
    store.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
    before = list(store.history())
    conn = raw(factory.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    finally:
        conn.close()
    assert list(store.history()) == before


def test_raw_inserts_into_the_audit_log_are_allowed(
    store: SqliteStore, factory: SqliteFactory
) -> None:
    conn = raw(factory.path)
    try:
        conn.execute(
            "INSERT INTO audit_log (at, serial, action, organization, name, actor) "
            "VALUES ('2024-01-01T00:00:00Z', 0, 'note', 'acme', 'a', 'ops')"
        )
    finally:
        conn.close()
    assert [e.record.action for e in store.history()] == ["note"]


# -- two connections on one file -----------------------------------------------------


def test_a_reader_in_a_transaction_does_not_block_a_commit(
    store: SqliteStore, factory: SqliteFactory
) -> None:
    store.commit([put("acme", "a")], [], 0)
    reader = raw(factory.path)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 1
        # WAL: the writer commits while the reader's snapshot stays as it was
        store.commit([put("acme", "b"), put("acme", "c")], [], 1)
        assert reader.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 1
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM webhooks").fetchone()[0] == 3
    finally:
        reader.close()


def test_an_apply_and_a_dispatcher_share_the_file(factory: SqliteFactory) -> None:
    apply_side = factory()
    dispatcher = factory()
    apply_side.commit([put("acme", "a"), put("acme", "b")], [], 0)
    with apply_side.lock("alice (apply)", 0):
        serial = apply_side.state().serial
        # the dispatcher reads and writes while the apply holds its lock
        assert len(dispatcher.webhooks("acme")) == 2
        dispatcher.pause("acme", "b", "HTTP 410", actor="dispatcher")
        with pytest.raises(StaleState):
            apply_side.commit([put("acme", "a", url="https://x.example.com/")], [], serial)
        # planning again under the same lock sees the pause and can commit
        assert apply_side.webhooks("acme")[1].paused_reason == "HTTP 410"
        apply_side.commit([put("acme", "b")], [], apply_side.state().serial)
    assert dispatcher.webhooks("acme")[1].paused_reason is None
    assert dispatcher.state().serial == 3
    assert [e.record.action for e in dispatcher.history()] == ["pause"]


# -- the lock row ---------------------------------------------------------------------


def _plant_lock(path: Path, *, pid: int, host: str, expires_at: float) -> None:
    conn = raw(path)
    try:
        conn.execute(
            "INSERT INTO locks (name, holder, pid, host, token, acquired_at, expires_at) "
            "VALUES ('apply', 'zed (apply)', ?, ?, 'planted', '2024-01-01T00:00:00Z', ?)",
            (pid, host, expires_at),
        )
    finally:
        conn.close()


def test_the_lock_row_names_holder_pid_and_host(store: SqliteStore, factory: SqliteFactory) -> None:
    with store.lock("alice (apply)", 0):
        conn = raw(factory.path)
        try:
            row = conn.execute("SELECT holder, pid, host FROM locks").fetchone()
        finally:
            conn.close()
    assert row == ("alice (apply)", os.getpid(), socket.gethostname())
    conn = raw(factory.path)
    try:
        assert conn.execute("SELECT count(*) FROM locks").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_lock_held_on_another_host_is_not_taken_over(
    store: SqliteStore, factory: SqliteFactory
) -> None:
    _plant_lock(factory.path, pid=1, host="build-7.example", expires_at=time.time() + 600)
    clock = FakeClock()
    waiting = factory(clock=clock, sleep=clock.sleep)
    with pytest.raises(LockTimeout) as raised, waiting.lock("bob (apply)", 1):
        pytest.fail("took a lock held elsewhere")
    assert "zed (apply)" in str(raised.value)
    assert "build-7.example" in str(raised.value)


def test_a_lock_whose_lease_ran_out_is_taken_over(
    store: SqliteStore, factory: SqliteFactory
) -> None:
    _plant_lock(factory.path, pid=os.getpid(), host="build-7.example", expires_at=1.0)
    with store.lock("bob (apply)", 0):
        pass


def test_a_dead_pid_on_this_host_is_taken_over(store: SqliteStore, factory: SqliteFactory) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    _plant_lock(
        factory.path,
        pid=int(gone.stdout),
        host=socket.gethostname(),
        expires_at=time.time() + 600,
    )
    with store.lock("bob (apply)", 0):
        pass


def test_a_live_pid_on_this_host_is_not_taken_over(
    store: SqliteStore, factory: SqliteFactory
) -> None:
    _plant_lock(
        factory.path, pid=os.getpid(), host=socket.gethostname(), expires_at=time.time() + 600
    )
    with pytest.raises(LockTimeout, match="zed"), store.lock("bob (apply)", 0):
        pytest.fail("took a live lock")


# -- another process writing at the same time --------------------------------------------


def _event(event_id: str) -> EventRecord:
    return EventRecord(event_id, "new_rule_violation", "acme", "rule", "", "2026-11-29T21:22:42Z")


def test_a_write_waits_for_another_processs_transaction_in_short_steps(tmp_path: Path) -> None:
    # SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more between tries: two
    # dispatchers on one file spent most of their time asleep. The store waits in
    # steps of 0.1 ms doubling to 2 ms instead.
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 8:
            other.execute("COMMIT")  # the other process's write ends

    store = SqliteStore(path, sleep=sleep)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert store.add_event(_event("evt-1"), 0.0).event_id == "evt-1"
    finally:
        store.close()
        other.close()
    assert pauses == [0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.002, 0.002, 0.002]


def test_a_write_locked_out_for_the_busy_timeout_fails_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)
    clock = FakeClock(0.0)
    store = SqliteStore(path, clock=clock, sleep=lambda seconds: clock.sleep(5.0))
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateError, match="locked by another process for over 30s"):
            store.add_event(_event("evt-1"), 0.0)
        other.execute("COMMIT")
        assert store.deliveries() == []
        assert store.add_event(_event("evt-2"), 0.0).event_id == "evt-2"  # usable afterwards
    finally:
        store.close()
        other.close()


def test_a_python_with_too_old_an_sqlite_gets_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 37, 2))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.37.2")
    with pytest.raises(StateError, match=r"SQLite 3\.37\.2 is too old .*3\.38\.0 or newer"):
        SqliteStore(tmp_path / "state.db")
    assert not (tmp_path / "state.db").exists()
