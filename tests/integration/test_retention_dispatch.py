"""Retention as the dispatcher runs it, as the CLI shows it, and SQLite's file
giving its space back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.dispatch.app import create_app
from reconciler.dispatch.retention import (
    DEFAULT_RETENTION,
    Retention,
    RetentionSettings,
    parse_age,
    parse_overrides,
)
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.store.retention import Cutoffs
from reconciler.store.sqlite import SqliteStore
from tests.contract.test_queue_contract import commit, event, result
from tests.support.helpers_state import FakeClock, bearer, cli_env, run_cli
from tests.support.store_contract import put

DAY = 86_400.0
OLD = 1_700_000_000.0
NEW = OLD + 40 * DAY


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    made = SqliteStore(path)
    commit(made, put("acme", "a"), put("globex", "a"))
    yield made
    made.close()


def deliver_old(store: SqliteStore, count: int, organization: str = "acme", **fields: str) -> None:
    """`count` events, each delivered at OLD."""
    store.add_events([event(f"e{n}", organization, **fields) for n in range(count)], OLD)
    while claims := store.claim("w", 1000, OLD, 90.0):
        store.finish([result(c, "delivered", started_at=OLD) for c in claims], "w", OLD)


def file_bytes(path: Path) -> int:
    return path.stat().st_size


# -- SQLite gives space back -------------------------------------------------------------


def test_the_sqlite_file_shrinks_after_retention(store: SqliteStore, path: Path) -> None:
    deliver_old(store, 3000, description="x" * 400)
    assert store.checkpoint()
    before = file_bytes(path)

    run = store.prune(Cutoffs(OLD + DAY), FakeClock(NEW), "me", batch=500)

    assert run is not None and run.removed.deliveries == 3000
    assert run.removed.bytes_released > 0
    after = file_bytes(path)
    assert after < before / 4, (before, after)
    assert file_bytes(Path(f"{path}-wal")) == 0  # checkpointed and cut back
    assert store._db.execute("PRAGMA freelist_count").fetchone()[0] == 0


def test_a_new_state_has_incremental_auto_vacuum_and_a_bounded_wal(store: SqliteStore) -> None:
    assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert store._db.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 * 2**20
    assert store.state_size().notes == []


def test_a_file_made_without_auto_vacuum_says_how_to_rebuild_it(path: Path) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA auto_vacuum = NONE")
        raw.execute("VACUUM")
    store = SqliteStore(path)
    try:
        (note,) = store.state_size().notes
        assert "PRAGMA auto_vacuum = INCREMENTAL; VACUUM;" in note
        commit(store, put("acme", "a"))
        deliver_old(store, 50)
        run = store.prune(Cutoffs(OLD + DAY), FakeClock(NEW), "me")
        assert run is not None and run.removed.deliveries == 50
        assert run.removed.bytes_released == 0  # the free pages stay, for reuse
    finally:
        store.close()


def test_a_checkpoint_never_waits_for_a_reader(store: SqliteStore, path: Path) -> None:
    deliver_old(store, 20)
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM deliveries").fetchone()  # holds a snapshot
        store.add_event(event("later"), NEW)  # a write the reader does not see
        assert store.checkpoint() is False  # gave up at once, did not wait
        reader.execute("COMMIT")
        assert store.checkpoint() is True
    finally:
        reader.close()


# -- the dispatcher's task ---------------------------------------------------------------


def test_the_task_prunes_with_its_settings_and_measures_the_state(
    store: SqliteStore, path: Path
) -> None:
    deliver_old(store, 3)
    deliver_old(store, 2, organization="globex")
    clock = FakeClock(NEW)
    settings = RetentionSettings(30 * DAY, {"globex": 60 * DAY}, pause=0.5)
    task = Retention(lambda: SqliteStore(path), settings, "me", clock=clock, sleep=clock.sleep)
    try:
        run = task.run_once()
    finally:
        task.close()

    assert run is not None and run.removed.deliveries == 3
    assert clock.sleeps and set(clock.sleeps) == {0.5}  # its pause between batches
    assert store.deliveries(organization="acme") == []
    assert len(store.deliveries(organization="globex")) == 2
    assert task.size is not None and task.size.last_run == run
    rows = {t.name: t.rows for t in task.size.tables}
    assert rows["deliveries"] == 2


def test_kept_forever_prunes_nothing_but_still_measures(store: SqliteStore, path: Path) -> None:
    deliver_old(store, 3)
    task = Retention(lambda: SqliteStore(path), RetentionSettings(None), "me", clock=lambda: NEW)
    try:
        assert task.run_once() is None
    finally:
        task.close()
    assert len(store.deliveries()) == 3
    assert task.size is not None and task.size.last_run is None


def test_a_stopping_dispatcher_ends_retention_after_the_batch_under_way(
    store: SqliteStore, path: Path
) -> None:
    deliver_old(store, 30)
    holder: list[Retention] = []

    def sleep(_: float) -> None:
        holder[0].stop()  # the dispatcher stops during the first pause

    settings = RetentionSettings(DAY, batch=10)
    task = Retention(lambda: SqliteStore(path), settings, "me", clock=lambda: NEW, sleep=sleep)
    holder.append(task)

    async def run() -> None:
        await asyncio.wait_for(task.run_forever(asyncio.Event()), 30)

    try:
        asyncio.run(run())
    finally:
        task.close()
    assert len(store.deliveries(limit=1000)) == 20  # one batch of ten went
    assert store.retention_runs() == []  # the run was cut short: not recorded
    again = store.prune(Cutoffs(NEW), FakeClock(NEW), "next")  # and the lease is free
    assert again is not None and again.removed.deliveries == 20


def test_metrics_show_the_state_size_and_the_last_run_to_the_operator(
    store: SqliteStore, path: Path
) -> None:
    deliver_old(store, 4)
    task = Retention(lambda: SqliteStore(path), RetentionSettings(), "me", clock=lambda: NEW)
    task.run_once()
    operator = bearer(store, role="metrics", all_organizations=True)
    acme = bearer(store, "acme", role="auditor")

    async def scrape() -> tuple[str, str]:
        sender = Sender(httpx.AsyncHTTPTransport())
        dispatcher = Dispatcher(store, sender, clock=lambda: NEW, env={}, retention=task)
        transport = httpx.ASGITransport(app=create_app(dispatcher))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                every = await http.get("/metrics", headers=operator)
                mine = await http.get("/metrics", headers=acme)
                return every.text, mine.text
        finally:
            await sender.aclose()
            dispatcher.db.close()
            task.close()

    every, mine = asyncio.run(scrape())
    assert 'reconciler_state_rows{table="deliveries"} 0' in every
    assert 'reconciler_state_rows{table="webhook_days"} 1' in every
    assert 'reconciler_state_file_bytes{file="database"} ' in every
    assert "reconciler_state_table_bytes" not in every  # SQLite: not read every minute
    assert 'reconciler_retention_last_run_removed{kind="deliveries"} 4' in every
    assert f"reconciler_retention_last_run_timestamp_seconds {NEW:.3f}" in every
    assert "reconciler_state_" not in mine  # the installation's, not one organization's


# -- options ---------------------------------------------------------------------------


def test_ages_and_overrides_are_parsed() -> None:
    assert parse_age("30d") == DEFAULT_RETENTION
    assert parse_age("12h") == 12 * 3600
    assert parse_age("forever") is None
    assert parse_overrides(("acme=90d", "globex=forever initech=1w")) == {
        "acme": 90 * DAY,
        "globex": None,
        "initech": 7 * DAY,
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (("acme",), "'acme': use ORGANIZATION=AGE, e.g. acme=90d"),
        (("acme=",), "'acme=': use ORGANIZATION=AGE, e.g. acme=90d"),
        (("Acme!=9d",), "'Acme!=9d': 'Acme!' is not an organization name"),
        (("acme=9d", "acme=3d"), "'acme=3d': acme is given twice"),
        (("acme=soon",), "'acme=soon': not a retention age: 'soon'"),
    ],
)
def test_a_bad_override_names_itself(items: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_overrides(items)


def test_serve_refuses_a_bad_retention_option_naming_it(tmp_path: Path) -> None:
    for args, expected in (
        (["--retention", "3x"], "Invalid value for --retention: not a retention age: '3x'"),
        (["--retention-for", "acme"], "Invalid value for --retention-for: 'acme': use"),
        (["--retention-interval", "0s"], "Invalid value for --retention-interval"),
    ):
        done = run_cli(["serve", "--port", "0", *args], tmp_path)
        assert done.returncode == 2
        assert expected in done.stderr


# -- the CLI ---------------------------------------------------------------------------


def test_retention_run_and_status_on_the_command_line(
    store: SqliteStore, path: Path, tmp_path: Path
) -> None:
    deliver_old(store, 5)  # finished in 2023: far over 30 days ago
    state = ["--state", f"sqlite:///{path}"]

    ran = run_cli(["retention", "run", *state, "--retention-for", "globex=forever"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "removed 5 deliveries, 5 attempts, 5 events" in ran.stdout

    shown = run_cli(["retention", "status", *state, "--format", "json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    rows = {t["name"]: t["rows"] for t in data["tables"]}
    assert (rows["deliveries"], rows["events"], rows["webhook_days"]) == (0, 0, 1)
    assert data["runs"][0]["deliveries"] == 5
    assert set(data["files"]) == {"database", "wal"}
    assert data["notes"] == []
    assert data["bytes_per_delivery"] is None  # none kept

    text = run_cli(["retention", "status", *state], tmp_path, cli_env())
    assert text.returncode == 0
    assert "deliveries" in text.stdout and "last retention runs:" in text.stdout
