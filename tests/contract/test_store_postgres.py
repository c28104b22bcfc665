"""PostgresStore: the store contract against the real server, plus what only
PostgreSQL has (advisory locks, concurrent migrations, SKIP LOCKED claims)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from reconciler.errors import StateError
from reconciler.store import open_store
from reconciler.store.postgres import PostgresStore, shown_url, split_url
from reconciler.store.postgres_migrations import MIGRATIONS
from reconciler.store.queue import LEASE_MARGIN, EventRecord
from tests.support import previous_schema
from tests.support.helpers_state import REPO, SUBPROCESS_TIMEOUT
from tests.support.store_contract import StoreContract, put, record

pytestmark = pytest.mark.postgres


class PostgresFactory:
    """Opens connections to one state (a schema of its own); closes them at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[PostgresStore] = []

    def __call__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> PostgresStore:
        kwargs: dict[str, object] = {}
        if clock is not None:
            kwargs["clock"] = clock
        if sleep is not None:
            kwargs["sleep"] = sleep
        store = PostgresStore(self.url, **kwargs)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture
def factory(postgres_url: str) -> Iterator[PostgresFactory]:
    made = PostgresFactory(postgres_url)
    yield made
    made.close()


class TestPostgresStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, factory: PostgresFactory) -> PostgresFactory:
        return factory


def _raw(url: str) -> psycopg.Connection:
    conninfo, schema, _ = split_url(url)
    return psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}")


def test_the_audit_log_refuses_update_and_delete(factory: PostgresFactory) -> None:
    store = factory()
    store.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
    with _raw(factory.url) as conn:
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
    assert [e.record.actor for e in store.history()] == ["alice"]


def test_open_store_selects_postgres_and_hides_the_password(postgres_url: str) -> None:
    store = open_store(postgres_url, create=True)
    try:
        assert isinstance(store, PostgresStore)
        assert store.migrations() == [
            "0001_live_state_and_audit_log",
            "0002_events_and_deliveries",
            "0003_retry_schedule_restarts_on_replay",
            "0004_api_tokens",
            "0005_event_id_per_organization",
            "0006_fair_claims",
            "0007_webhook_breakers",
            "0008_rate_limit_slots",
            "0009_endpoint_health_indexes",
            "0010_retention",
            "0011_space_given_back",
            "0012_attempt_request_as_sent",
            "0013_console_sessions",
            "0014_audit_source",
        ]
    finally:
        store.close()
    assert shown_url("postgresql://u:secret@h:5432/db?x=1") == "postgresql://h:5432/db?x=1"


def test_a_state_of_the_schema_before_per_organization_events_keeps_every_row(
    factory: PostgresFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [name for name, _ in MIGRATIONS]
    before = MIGRATIONS[: names.index(previous_schema.MIGRATION)]
    with monkeypatch.context() as patch:
        patch.setattr("reconciler.store.postgres.MIGRATIONS", before)
        old = factory()
        old.commit([put("acme", "a"), put("acme", "b"), put("globex", "a")], [], 0)
        assert old.migrations() == [name for name, _ in before]
        old.close()
    with _raw(factory.url) as conn:
        for statement in previous_schema.ROWS:
            conn.execute(statement)  # type: ignore[arg-type]

    store = factory()

    assert store.migrations() == names
    previous_schema.check_migrated(store)
    with _raw(factory.url) as conn:
        keys = dict(
            conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid IN ('events'::regclass, 'deliveries'::regclass) "
                "AND contype IN ('p', 'f')"
            ).fetchall()
        )
        assert keys == {
            "events_pkey": "PRIMARY KEY (organization, id)",
            "deliveries_pkey": "PRIMARY KEY (id)",
            "deliveries_event_fkey": "FOREIGN KEY (organization, event_id) "
            "REFERENCES events(organization, id)",
        }
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            # a delivery names its event by organization and id
            conn.execute(
                "INSERT INTO deliveries (id, event_id, organization, webhook, status, "
                "created_at, updated_at) VALUES ('msg_x', 'g-1', 'acme', 'a', 'pending', 0, 0)"
            )


def test_an_unreachable_server_is_one_clear_state_error() -> None:
    with pytest.raises(StateError, match=r"cannot open the state at postgresql://127\.0\.0\.1:1/"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    code = (
        "import sys; from reconciler.store import open_store; "
        "open_store(sys.argv[1], create=True).close()"  # as migrate opens it
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code, postgres_url], cwd=REPO) for _ in range(4)
    ]
    assert [c.wait(timeout=SUBPROCESS_TIMEOUT) for c in children] == [0, 0, 0, 0]
    with _raw(postgres_url) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM schema_migrations")]
    assert sorted(names) == [name for name, _ in MIGRATIONS]


def test_two_workers_never_claim_the_same_delivery(factory: PostgresFactory) -> None:
    store = factory()
    store.commit([put("acme", "a", max_in_flight=50)], [], 0)
    now = time.time()
    store.add_events(
        [EventRecord(f"e{i}", "new_rule_violation", "acme", "n", "d", "t") for i in range(50)], now
    )
    first, second = factory(), factory()
    a = first.claim("one", 30, now, 60)
    b = second.claim("two", 30, now, 60)
    assert len(a) == 30 and len(b) == 20
    assert not {c.delivery_id for c in a} & {c.delivery_id for c in b}


def test_one_webhooks_retries_do_not_starve_anothers_fresh_deliveries(
    factory: PostgresFactory,
) -> None:
    from reconciler.store.queue import AttemptResult

    store = factory()
    store.commit([put("acme", "a", max_in_flight=50)], [], 0)
    now = time.time()
    old = [EventRecord(f"old{i}", "new_rule_violation", "acme", "n", "d", "t") for i in range(20)]
    store.add_events(old, now - 100)
    claims = store.claim("w", 20, now - 100, 60)
    store.finish(
        [
            AttemptResult(c.delivery_id, 1, now - 100, 1.0, "retry", status=500, next_due=now - 50)
            for c in claims
        ],
        "w",
        now - 99,
    )
    store.commit([put("acme", "b", event="reserved_instance_surplus")], [], 1)
    store.add_events(
        [EventRecord("fresh", "reserved_instance_surplus", "acme", "n", "d", "t")], now
    )
    picked = store.claim("w", 4, now, 60)
    assert "fresh" in {c.event.id for c in picked}


# -- connection deadlines ---------------------------------------------------------


def _settings(store: PostgresStore) -> dict[str, str]:
    with store._pool.connection() as conn:
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("statement_timeout", "idle_in_transaction_session_timeout")
        }
        used = conn.info.get_parameters()
    return {**shown, **{k: used[k] for k in used if k.startswith(("keepalives", "tcp_", "conn"))}}


def test_store_connections_have_deadlines_below_the_delivery_lease(
    factory: PostgresFactory,
) -> None:
    settings = _settings(factory())
    # A transaction left idle (a link stalled mid-claim) ends, and frees its rows,
    # within the shortest lease a claim takes.
    idle = settings["idle_in_transaction_session_timeout"]
    assert float(idle.removesuffix("s")) <= LEASE_MARGIN
    assert settings == {
        "statement_timeout": "30s",
        "idle_in_transaction_session_timeout": "10s",
        "connect_timeout": "10",
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
    }


def test_the_state_url_overrides_the_connection_deadlines(postgres_url: str) -> None:
    url = (
        f"{postgres_url}&statement_timeout=45s&idle_in_transaction_session_timeout=0"
        "&keepalives_idle=20&tcp_user_timeout=60000"
    )
    store = PostgresStore(url)
    try:
        settings = _settings(store)
    finally:
        store.close()
    assert settings["statement_timeout"] == "45s"
    assert settings["idle_in_transaction_session_timeout"] == "0"
    assert (settings["keepalives_idle"], settings["tcp_user_timeout"]) == ("20", "60000")
    with pytest.raises(StateError, match="statement_timeout"):
        PostgresStore(f"{postgres_url}&statement_timeout=1s%20-c%20work_mem=1")


def test_a_statement_over_its_deadline_fails_as_a_state_error(postgres_url: str) -> None:
    store = PostgresStore(f"{postgres_url}&statement_timeout=50ms")
    try:
        with pytest.raises(StateError, match="statement timeout"), store._tx() as cur:
            cur.execute("SELECT pg_sleep(5)")
        assert store.state().serial == 0  # the next call goes on
    finally:
        store.close()


def test_a_connection_the_server_ended_is_replaced_not_handed_out(postgres_url: str) -> None:
    name = f"reconciler_test_{uuid.uuid4().hex[:12]}"  # this test's connections only
    store = PostgresStore(f"{postgres_url}&application_name={name}")
    try:
        store.state()
        with psycopg.connect(split_url(postgres_url)[0], autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        assert ended and all(row[0] for row in ended)
        assert store.state().serial == 0  # on a new connection, not an error
    finally:
        store.close()
