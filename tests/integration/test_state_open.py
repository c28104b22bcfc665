"""Opening the live state: which commands make one, and one clear line, exit 1, for
whatever is not a state (nothing there, an empty file, a corrupt one) or cannot be
written (a full disk), on SQLite and PostgreSQL.

Commands run in-process through click's CliRunner (serve as a real process): an
exception that escapes the CLI is a traceback for the user, and fails the test.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

import reconciler.cli.state as state_commands
from reconciler.cli import cli
from reconciler.errors import StateError
from reconciler.store import open_store
from reconciler.store.postgres import shown_url, split_url
from reconciler.store.queue import EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    EXAMPLES,
    assert_no_traceback,
    cli_env,
    make_state,
    run_cli,
    snapshot,
    sqlite_url,
)
from tests.support.store_contract import put, record

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# Every command that opens a state and must not make one. Run in the project folder,
# which holds webhooks.d (the repository's examples).
READERS: dict[str, list[str]] = {
    "plan": ["plan", "webhooks.d"],
    "apply --plan": ["apply", "--plan", "saved-plan.json", "--auto-approve", "--actor", "t"],
    "history": ["history"],
    "export": ["export", "out.d"],
    "deliveries list": ["deliveries", "list"],
    "deliveries show": ["deliveries", "show", "msg_x"],
    "deliveries replay": ["deliveries", "replay", "msg_x"],
    "fire": ["fire", "new_rule_violation", "--org", "acme", "--name", "n"],
    "fire --dry-run": ["fire", "new_rule_violation", "--org", "acme", "--name", "n", "--dry-run"],
    "tokens create": ["tokens", "create", "--role", "admin", "--org", "acme"],
    "tokens list": ["tokens", "list"],
    "tokens revoke": ["tokens", "revoke", "tok_x"],
    "serve": ["serve", "--port", "0"],
    "serve --processes 2": ["serve", "--port", "0", "--processes", "2"],
}
# The commands that make a state where there is none.
MAKERS: dict[str, list[str]] = {
    "apply": ["apply", "webhooks.d", "--auto-approve", "--actor", "t"],
    "migrate": ["migrate"],
}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def one_error_line(self) -> str:
        assert self.code == 1, self.stdout + self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: ")
        return lines[0]


def run(project: Path, args: list[str], state: str) -> Outcome:
    """One command as the user runs it: exit code, stdout, stderr; never a traceback."""
    if args[0] == "serve":  # a real process: on a state that is there it would serve
        done = run_cli([*args, "--state", state], project, cli_env())
        return Outcome(done.returncode, done.stdout, done.stderr)
    cwd = Path.cwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(cli, [*args, "--state", state], env={"RECONCILER_STATE": None})
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"a traceback: {result.exception!r}") from result.exception
    assert_no_traceback(result.output)
    return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "webhooks.d")
    # A saved plan for `apply --plan`, made against a state of its own.
    other = make_state(sqlite_url(tmp_path / "other.db"))
    planned = run(tmp_path, ["plan", "webhooks.d", "--out", "saved-plan.json"], other)
    assert planned.code == 0, planned.stderr
    return tmp_path


# -- nothing there ----------------------------------------------------------------------


@dataclass
class Absent:
    """The URL of a state that is not there, and how to tell that nothing was made."""

    url: str
    reason: str  # as the error line gives it
    raw: str  # for raw SQL: a path (SQLite) or a URL (PostgreSQL)

    def made_nothing(self) -> bool:
        if self.url.startswith("sqlite:"):
            return not Path(self.raw).parent.exists()
        conninfo, schema, _ = split_url(self.raw)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            return row.fetchone() is None


@pytest.fixture(params=BACKENDS)
def absent(request: pytest.FixtureRequest, tmp_path: Path) -> Absent:
    if request.param == "sqlite":
        path = tmp_path / "typo" / "state.db"
        return Absent(sqlite_url(path), "no such file", str(path))
    url: str = request.getfixturevalue("postgres_url")
    schema = split_url(url)[1]
    return Absent(url, f"the schema {schema} does not exist", url)


@pytest.mark.parametrize("command", sorted(READERS))
def test_a_command_that_makes_no_state_refuses_one_that_is_not_there(
    project: Path, absent: Absent, command: str
) -> None:
    line = run(project, READERS[command], absent.url).one_error_line()
    shown = shown_url(absent.url) if absent.url.startswith("postgres") else absent.url
    assert line.startswith(f"error: no state at {shown}: {absent.reason} (only `reconciler apply`")
    assert "postgres@" not in line
    assert absent.made_nothing()  # no folder, file or schema


@pytest.mark.parametrize("command", sorted(MAKERS))
def test_apply_and_migrate_make_the_state_where_none_is(
    project: Path, absent: Absent, command: str
) -> None:
    made = run(project, MAKERS[command], absent.url)
    assert made.code == 0, made.stderr
    assert not absent.made_nothing()
    listed = run(project, ["history"], absent.url)  # a state now, for every command
    assert listed.code == 0, listed.stderr
    planned = run(project, ["plan", "webhooks.d", "--format", "json"], absent.url)
    assert planned.code == 0, planned.stderr


@pytest.mark.parametrize("command", sorted(READERS))
def test_a_database_without_reconciler_tables_is_no_state_and_gets_none(
    project: Path, command: str
) -> None:
    # Another program's SQLite file.
    path = project / "other-program.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    before = path.read_bytes()
    line = run(project, READERS[command], sqlite_url(path)).one_error_line()
    assert line.startswith(f"error: no state at {sqlite_url(path)}: the file holds no reconciler")
    assert path.read_bytes() == before


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["plan", "history", "tokens create", "fire", "serve"])
def test_a_schema_without_reconciler_tables_is_no_state_and_gets_none(
    project: Path, postgres_url: str, command: str
) -> None:
    conninfo, schema, _ = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".notes (text TEXT)')
    line = run(project, READERS[command], postgres_url).one_error_line()
    assert line.startswith(
        f"error: no state at {shown_url(postgres_url)}: the schema {schema} holds no reconciler "
        "tables"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        assert [row[0] for row in tables.fetchall()] == ["notes"]


# -- an empty file ------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(READERS))
def test_an_empty_file_is_refused_by_every_command_that_makes_no_state(
    project: Path, command: str
) -> None:
    path = project / "state.db"
    path.touch()
    line = run(project, READERS[command], sqlite_url(path)).one_error_line()
    assert line == (
        f"error: {sqlite_url(path)} is empty (0 bytes): not a reconciler state; "
        "remove it to start a new state"
    )
    assert path.stat().st_size == 0


@pytest.mark.parametrize("command", sorted(MAKERS))
def test_apply_and_migrate_start_a_new_state_in_an_empty_file(project: Path, command: str) -> None:
    path = project / "state.db"
    path.touch()
    made = run(project, MAKERS[command], sqlite_url(path))
    assert made.code == 0, made.stderr
    assert run(project, ["history"], sqlite_url(path)).code == 0


def test_a_folder_is_not_a_state(project: Path) -> None:
    (project / "state.db").mkdir()
    for args in (READERS["plan"], MAKERS["apply"], MAKERS["migrate"]):
        line = run(project, args, sqlite_url(project / "state.db")).one_error_line()
        assert (
            line == f"error: {sqlite_url(project / 'state.db')} is a folder, not a reconciler state"
        )


# -- a corrupt file -------------------------------------------------------------------------


def _applied_state(folder: Path) -> bytes:
    """The bytes of a state file that the examples were applied to."""
    path = folder / "source.db"
    assert run(folder, MAKERS["apply"], sqlite_url(path)).code == 0
    return path.read_bytes()


CORRUPTIONS = {
    "random bytes": (lambda good: random.Random(7).randbytes(20_000), "file is not a database"),
    "a text file": (lambda good: b"webhooks: none\n" * 100, "file is not a database"),
    "truncated": (lambda good: good[: len(good) // 3], "database disk image is malformed"),
    "the first page only": (lambda good: good[:4096], "database disk image is malformed"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("command", sorted({**READERS, **MAKERS}))
def test_a_corrupt_state_is_one_line_for_every_command(
    project: Path, command: str, corruption: str
) -> None:
    make, reason = CORRUPTIONS[corruption]
    path = project / "state.db"
    path.write_bytes(make(_applied_state(project)))
    before = path.read_bytes()
    line = run(project, {**READERS, **MAKERS}[command], sqlite_url(path)).one_error_line()
    assert line == f"error: {sqlite_url(path)} is not a reconciler state: {reason}"
    assert path.read_bytes() == before  # left as it was, for recovery


def _damaged_queue(project: Path) -> Path:
    """A state that opens, whose deliveries' pages are damaged: found on reading them."""
    path = project / "state.db"
    assert run(project, MAKERS["apply"], sqlite_url(path)).code == 0
    intact = path.stat().st_size
    store = SqliteStore(path)
    try:
        events = [
            EventRecord(f"e{i}", "new_rule_violation", "acme", "n" * 200, "d" * 500, "t")
            for i in range(1000)
        ]
        store.add_events(events, time.time())
    finally:
        store.close()  # the last connection: the WAL goes into the file
    data = bytearray(path.read_bytes())
    noise = random.Random(11)
    for offset in range(intact, len(data), 4096):  # every page the queue added
        data[offset + 8 : offset + 4096] = noise.randbytes(4096 - 8)
    path.write_bytes(bytes(data))
    return path


def test_damage_found_while_reading_is_one_line(project: Path) -> None:
    path = _damaged_queue(project)
    assert run(project, ["history"], sqlite_url(path)).code == 0  # what is intact still reads
    for args in (["deliveries", "list"], ["deliveries", "replay", "--failed"]):
        line = run(project, args, sqlite_url(path)).one_error_line()
        assert line == (
            f"error: {sqlite_url(path)} is not a reconciler state: database disk image is malformed"
        )
    store = open_store(sqlite_url(path))
    try:
        with pytest.raises(StateError, match="is not a reconciler state: database disk image"):
            store.deliveries(limit=10_000)
    finally:
        store.close()


# -- a write that fails: a full disk ----------------------------------------------------------


def _grow(project: Path) -> None:
    """Edit every definition so that applying them needs more room in the state."""
    for path in (project / "webhooks.d").rglob("*.yaml"):
        if path.name == "shared-env.yaml":  # the shared list of variables, no definition
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["description"] = "a long description " * 2000
        path.write_text(yaml.safe_dump(data), encoding="utf-8")


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's states cannot grow by a page: SQLite's SQLITE_FULL, as on a full disk."""

    def capped(url: str, **options: Any) -> Any:
        store = open_store(url, **options)
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]
        return store

    monkeypatch.setattr(state_commands, "open_store", capped)


def _snapshot(url: str) -> Any:
    store = open_store(url)
    try:
        return snapshot(store)
    finally:
        store.close()


def test_apply_on_a_full_disk_says_so_and_changes_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(project / "state.db")
    assert run(project, MAKERS["apply"], url).code == 0
    before = _snapshot(url)
    _grow(project)
    _full_disk(monkeypatch)

    line = run(project, MAKERS["apply"], url).one_error_line()
    assert line == (
        f"error: could not write the state at {url}: the disk is full (database or disk is full)"
    )
    monkeypatch.undo()
    assert _snapshot(url) == before  # not a webhook, audit record or serial of it
    # and the lock was released: the next apply, with room, goes through at once
    again = run(project, [*MAKERS["apply"], "--lock-timeout", "0"], url)
    assert again.code == 0, again.stderr
    assert "Applied: 0 created, 5 updated, 0 deleted (state serial 2" in again.stdout


class _FailingCommit:
    """A connection whose COMMIT fails as it does when the disk fills up while SQLite
    writes the transaction out (in WAL mode, the usual moment): the transaction is
    still open afterwards, and must be rolled back by the store."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._real = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_commit_that_fails_is_rolled_back_whole_and_names_the_cause(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    try:
        store.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
        before = snapshot(store)
        store._db = _FailingCommit(store._db)  # type: ignore[assignment]
        with pytest.raises(StateError) as raised:
            store.commit([put("acme", "b")], [record("create", "acme", "b")], 1)
        assert str(raised.value) == (
            f"could not write the state at {store.url}: the disk is full (database or disk is full)"
        )
        assert snapshot(store) == before
        # the connection is usable: the failed transaction is not left open
        assert store.commit([put("acme", "b")], [record("create", "acme", "b")], 1) == 2
    finally:
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (
            "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'",
            "could not write the state at {url}: the disk is full (could not extend file)",
        ),
        ("RAISE EXCEPTION 'audit storage refused'", "the state at {url} failed: audit storage"),
    ],
)
def test_apply_whose_write_fails_in_postgres_changes_nothing(
    project: Path, postgres_url: str, raised: str, message: str
) -> None:
    assert run(project, MAKERS["apply"], postgres_url).code == 0
    before = _snapshot(postgres_url)
    conninfo, schema, _ = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
            f"$$ BEGIN {raised}; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".audit_log '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()'
        )
    _grow(project)

    line = run(project, MAKERS["apply"], postgres_url).one_error_line()
    assert line.startswith("error: " + message.format(url=shown_url(postgres_url)))
    assert _snapshot(postgres_url) == before  # the webhooks written first are gone too

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP TRIGGER refuse ON "{schema}".audit_log')
    again = run(project, [*MAKERS["apply"], "--lock-timeout", "0"], postgres_url)
    assert again.code == 0, again.stderr
