"""Retention's contract, on both stores: what goes, what stays, what is kept of it.

Times are injected: a delivery is "old" because the test finished it long before
the cutoff it gives, never because time passed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.base import Write
from reconciler.store.breakers import BreakerReport
from reconciler.store.queue import Claim
from reconciler.store.retention import (
    Cutoffs,
    DayTotals,
    bucket_bound,
    bucket_of,
    day_of,
    fold,
    percentile,
)
from tests.contract.test_queue_contract import (
    PostgresFactory,
    SqliteFactory,
    commit,
    event,
    key,
    result,
)
from tests.support.helpers_state import FakeClock
from tests.support.store_contract import put

DAY = 86_400.0
OLD = 1_700_000_000.0  # 2023-11-14: when the old deliveries finished
NEW = OLD + 40 * DAY  # when the recent ones did
CUTOFF = OLD + 30 * DAY  # finished before this goes
LEASE = 90.0


def claim_all(store: Any, now: float, owner: str = "w") -> list[Claim]:
    claims: list[Claim] = store.claim(owner, 1000, now, LEASE)
    return claims


def finish(store: Any, claims: list[Claim], outcome: str, now: float, **fields: Any) -> None:
    store.finish([result(c, outcome, started_at=now, **fields) for c in claims], "w", now)


def snapshot(store: Any) -> dict[str, Any]:
    """Every delivery's record and attempts, by id."""
    return {
        r.id: store.delivery(r.id)
        for status in ("pending", "in_flight", "delivered", "failed", "cancelled")
        for r in store.deliveries(status=status, limit=10_000)
    }


class RetentionContract:
    @pytest.fixture
    def store_factory(self) -> Any:
        pytest.fail("a backend's test module provides store_factory", pytrace=False)

    @pytest.fixture
    def store(self, store_factory: Any) -> Any:
        made = store_factory()
        commit(made, put("acme", "a"), put("acme", "b"), put("globex", "a"))
        return made

    def fill(self, store: Any) -> dict[str, set[str]]:
        """Old deliveries in every state, and recent ones; returns their ids by kind."""
        kinds: dict[str, set[str]] = {}
        # Old and finished: delivered at the first attempt, delivered after a retry,
        # failed, cancelled (acme: two webhooks per event).
        for n in range(6):
            store.add_event(event(f"old-{n}"), OLD)
        claims = claim_all(store, OLD)
        finish(store, claims[:4], "delivered", OLD + 1, duration_ms=20.0)
        finish(store, claims[4:6], "retry", OLD + 1, duration_ms=900.0, next_due=OLD + 2)
        finish(store, claim_all(store, OLD + 2), "delivered", OLD + 3, duration_ms=35.0)
        finish(store, claims[6:9], "failed", OLD + 4, duration_ms=5.0, status=400)
        finish(store, claims[9:12], "cancelled", OLD + 5, duration_ms=0.0, sent=False)
        kinds["old finished"] = {c.delivery_id for c in claims}
        # Old but still on its way: one pending (due later), one in flight.
        store.add_event(event("old-pending"), OLD)
        (waiting, flying) = claim_all(store, OLD)
        finish(store, [waiting], "retry", OLD + 1, next_due=NEW + DAY)
        kinds["old pending"] = {waiting.delivery_id, flying.delivery_id}
        # Recent and finished.
        store.add_event(event("new-0"), NEW)
        recent = claim_all(store, NEW)
        finish(store, recent, "delivered", NEW + 1)
        kinds["new finished"] = {c.delivery_id for c in recent}
        return kinds

    def test_retention_removes_exactly_what_is_old_and_finished(self, store: Any) -> None:
        kinds = self.fill(store)
        audit_before = [e.id for e in store.history()]
        before = snapshot(store)

        run = store.prune(Cutoffs(CUTOFF), FakeClock(NEW + 2), "me", batch=5)

        after = snapshot(store)
        assert set(after) == kinds["old pending"] | kinds["new finished"]
        for delivery_id in kinds["old pending"] | kinds["new finished"]:
            assert after[delivery_id] == before[delivery_id]  # untouched, attempts too
        for delivery_id in kinds["old finished"]:
            assert store.delivery(delivery_id) is None
        assert {n: store.event(key(f"old-{n}")) for n in range(6)} == dict.fromkeys(range(6))
        assert store.event(key("old-pending")) is not None  # its deliveries are on their way
        assert store.event(key("new-0")) is not None
        assert [e.id for e in store.history()] == audit_before  # the audit log is kept
        assert run is not None
        assert (run.removed.deliveries, run.removed.events) == (12, 6)
        assert run.removed.attempts == sum(len(before[d][1]) for d in kinds["old finished"])

    def test_a_pending_delivery_is_never_removed_however_old(self, store: Any) -> None:
        store.add_event(event("ancient"), OLD - 400 * DAY)

        store.prune(Cutoffs(NEW), FakeClock(NEW), "me")

        assert [r.status for r in store.deliveries(event=key("ancient"))] == ["pending"] * 2
        assert store.event(key("ancient")) is not None

    def test_an_event_goes_with_the_last_of_its_deliveries(self, store: Any) -> None:
        store.add_event(event("e"), OLD)
        first, second = claim_all(store, OLD)
        finish(store, [first], "delivered", OLD + 1)
        finish(store, [second], "delivered", NEW)

        store.prune(Cutoffs(CUTOFF), FakeClock(NEW + 1), "me")
        assert [r.id for r in store.deliveries(event=key("e"))] == [second.delivery_id]
        assert store.event(key("e")) is not None

        store.prune(Cutoffs(NEW + 1), FakeClock(NEW + 2), "me")
        assert store.deliveries(event=key("e")) == []
        assert store.event(key("e")) is None

    def test_an_event_that_queued_nothing_goes_when_old(self, store: Any) -> None:
        store.add_event(event("nobody", organization="initech"), OLD)
        store.add_event(event("nobody-new", organization="initech"), NEW)

        run = store.prune(Cutoffs(CUTOFF), FakeClock(NEW), "me")

        assert store.event(key("nobody", "initech")) is None
        assert store.event(key("nobody-new", "initech")) is not None
        assert run is not None and run.removed.events == 1

    def test_an_organization_keeps_its_own_retention(self, store: Any) -> None:
        for organization in ("acme", "globex"):
            store.add_event(event("e", organization=organization), OLD)
        finish(store, claim_all(store, OLD), "delivered", OLD + 1)

        store.prune(Cutoffs(CUTOFF, {"globex": OLD - DAY}), FakeClock(NEW), "me")

        assert store.deliveries(organization="acme") == []
        assert [r.status for r in store.deliveries(organization="globex")] == ["delivered"]

    def test_a_replayed_delivery_is_on_its_way_again_and_stays(self, store: Any) -> None:
        store.add_event(event("e"), OLD)
        claims = claim_all(store, OLD)
        finish(store, claims, "failed", OLD + 1, status=400)
        store.replay([c.delivery_id for c in claims], NEW)

        store.prune(Cutoffs(CUTOFF), FakeClock(NEW), "me")

        assert sorted(r.status for r in store.deliveries(event=key("e"))) == ["pending"] * 2

    def test_the_days_kept_match_the_rows_they_replaced(self, store: Any) -> None:
        kinds = self.fill(store)
        before = snapshot(store)
        gone = [before[d] for d in kinds["old finished"]]
        expected = fold(
            ((r.id, r.organization, r.webhook, r.status, r.updated_at) for r, _ in gone),
            ((r.id, a.duration_ms, a.outcome) for r, attempts in gone for a in attempts),
        )

        store.prune(Cutoffs(CUTOFF), FakeClock(NEW + 2), "me", batch=2)  # many batches

        days = {(d.organization, d.webhook, d.day): d.totals for d in store.webhook_days()}
        assert days == expected
        day = day_of(OLD)
        a, b = days[("acme", "a", day)], days[("acme", "b", day)]
        assert (a.delivered + b.delivered, a.failed + b.failed, a.cancelled + b.cancelled) == (
            6,
            3,
            3,
        )
        # attempts that reached the endpoint: 4 + 2 retried + 2 after + 3 failed
        assert (a.attempts + b.attempts, a.retried + b.retried) == (11, 2)
        exact = sorted(
            at.duration_ms
            for _, attempts in gone
            for at in attempts
            if at.outcome in ("delivered", "retry", "failed")
        )
        merged = DayTotals()
        merged.add(a)
        merged.add(b)
        for fraction in (0.5, 0.95, 0.99):
            nearest = exact[math.ceil(fraction * len(exact)) - 1]
            got = percentile(merged.durations, fraction)
            assert got == bucket_bound(bucket_of(nearest))
            assert nearest <= got <= max(nearest * 2**0.25, 1.0)

    def test_days_add_up_over_runs(self, store: Any) -> None:
        for n in range(5):
            store.add_event(event(f"e{n}"), OLD)
        claims = claim_all(store, OLD)
        finish(store, claims[:4], "delivered", OLD + 1, duration_ms=10.0)
        finish(store, claims[4:], "delivered", OLD + 2, duration_ms=40.0)

        store.prune(Cutoffs(OLD + 1.5), FakeClock(NEW), "me")
        store.prune(Cutoffs(CUTOFF), FakeClock(NEW), "me")

        totals = DayTotals()
        for d in store.webhook_days(["acme"]):
            totals.add(d.totals)
        assert (totals.delivered, totals.attempts) == (10, 10)
        assert totals.durations == {bucket_of(10.0): 4, bucket_of(40.0): 6}
        assert store.webhook_days(["globex"]) == []

    def test_a_second_pruner_finds_the_first_at_work_and_skips(
        self, store: Any, store_factory: Any
    ) -> None:
        self.fill(store)
        other = store_factory()
        seen: list[Any] = []

        run = store.prune(
            Cutoffs(CUTOFF),
            FakeClock(NEW),
            "first",
            batch=2,
            between=lambda: seen.append(other.prune(Cutoffs(CUTOFF), FakeClock(NEW), "second")),
        )

        assert seen and seen == [None] * len(seen)
        assert run is not None and run.removed.deliveries == 12
        again = other.prune(Cutoffs(CUTOFF), FakeClock(NEW), "second")  # the lease is free
        assert again is not None and again.removed.deliveries == 0

    def test_two_dispatchers_pruning_at_once_never_prune_a_row_twice(
        self, store: Any, store_factory: Any
    ) -> None:
        for n in range(60):
            store.add_event(event(f"e{n}"), OLD)
        while claims := claim_all(store, OLD):  # each webhook takes 10 at a time
            finish(store, claims, "delivered", OLD + 1, duration_ms=10.0)
        pruners = [store_factory() for _ in range(2)]
        runs: list[Any] = []
        failures: list[BaseException] = []

        def prune(pruner: Any) -> None:
            try:
                for _ in range(20):
                    runs.append(pruner.prune(Cutoffs(CUTOFF), FakeClock(NEW), "p", batch=3))
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=prune, args=(p,)) for p in pruners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert failures == []
        done = [run for run in runs if run is not None]
        assert sum(run.removed.deliveries for run in done) == 120
        assert sum(run.removed.events for run in done) == 60
        totals = DayTotals()
        for d in store.webhook_days():
            totals.add(d.totals)
        assert (totals.delivered, totals.attempts) == (120, 120)

    def test_breakers_and_rate_limit_rows_of_deleted_webhooks_go(self, store: Any) -> None:
        down = BreakerReport("acme", "b", "down", "timed out")
        store.finish([result("msg_gone", "retry", breaker=down, next_due=OLD)], "w", OLD)
        store.hold("acme", "b", NEW + DAY)
        store.hold("acme", "a", NEW + DAY)
        commit(store, Write("delete", "acme", "b"))

        run = store.prune(Cutoffs(CUTOFF), FakeClock(NEW), "me")

        assert run is not None and (run.removed.breakers, run.removed.rate_slots) == (1, 1)
        assert list(store.holds(NEW)) == [("acme", "a")]
        assert [b.webhook for b in store.breakers()] == []

    def test_runs_and_sizes_are_recorded(self, store: Any) -> None:
        self.fill(store)
        store.prune(Cutoffs(CUTOFF), FakeClock(NEW + 2), "host:1")

        (last,) = store.retention_runs(5)
        assert (last.owner, last.started_at, last.removed.deliveries) == ("host:1", NEW + 2, 12)
        size = store.state_size()
        rows = {t.name: t.rows for t in size.tables}
        assert rows["deliveries"] == 4 and rows["webhook_days"] == 2
        assert rows["retention_runs"] == 1
        assert all(t.bytes > 0 for t in size.tables)
        queue = sum(t.bytes for t in size.tables if t.name in ("events", "deliveries", "attempts"))
        assert size.bytes_per_delivery == queue / 4
        assert size.oldest_finished == NEW + 1
        assert size.last_run == last


class TestSqliteRetention(RetentionContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[SqliteFactory]:
        made = SqliteFactory(tmp_path / "state.db")
        yield made
        made.close()


@pytest.mark.postgres
class TestPostgresRetention(RetentionContract):
    @pytest.fixture
    def store_factory(self, postgres_url: str) -> Iterator[PostgresFactory]:
        made = PostgresFactory(postgres_url)
        yield made
        made.close()


@pytest.mark.postgres
def test_postgres_vacuums_after_a_run_when_its_autovacuum_is_off(postgres_url: str) -> None:
    import psycopg

    made = PostgresFactory(postgres_url)
    try:
        store = made()
        commit(store, put("acme", "a"))
        store.add_event(event("e"), OLD)
        finish(store, claim_all(store, OLD), "delivered", OLD + 1)
        schema = postgres_url.rpartition("schema=")[2]
        with psycopg.connect(postgres_url.partition("?")[0], autocommit=True) as conn:
            autovacuum = conn.execute("SELECT current_setting('autovacuum')").fetchone()
            store.prune(Cutoffs(CUTOFF), FakeClock(NEW), "me")
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT vacuum_count FROM pg_stat_user_tables "
                "WHERE schemaname = %s AND relname = 'deliveries'",
                (schema,),
            ).fetchone()
        assert autovacuum is not None and row is not None
        assert (row[0] > 0) == (autovacuum[0] == "off")  # else autovacuum's turn
    finally:
        made.close()
