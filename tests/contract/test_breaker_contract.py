"""The circuit breaker's contract in the state: every backend moves it the same way.

Attempts report to the breaker through `finish` (AttemptResult.breaker); the probe is
taken with `take_probe`; `resume` lifts a pause. SQLite on a file and PostgreSQL on
the real server (marker `postgres`) run these very tests. Times are injected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.health import breaker_states, endpoint_health
from reconciler.store.breakers import FIRST_PROBE, MAX_PROBE, THRESHOLD, BreakerReport
from tests.contract.test_queue_contract import (
    LEASE,
    NOW,
    PostgresFactory,
    SqliteFactory,
    commit,
    result,
)
from tests.support.store_contract import StoreFactory, put


def down(webhook: str = "a", reason: str = "timed out after 10s", **fields: Any) -> BreakerReport:
    return BreakerReport("acme", webhook, "down", reason, **fields)


def up(webhook: str = "a", **fields: Any) -> BreakerReport:
    return BreakerReport("acme", webhook, "up", None, **fields)


def report(store: Any, breaker: BreakerReport, now: float) -> None:
    """Record an attempt carrying `breaker` (the delivery need not be this worker's any
    more: the request went out all the same)."""
    outcome = {"down": "retry", "up": "delivered", "release": "deferred"}[breaker.health]
    store.finish([result("msg_gone", outcome, breaker=breaker, next_due=now + 5)], "w", now)


def opened(store: Any, at: float = NOW) -> None:
    for n in range(THRESHOLD):
        report(store, down(), at + n * 0.001)


def breaker(store: Any, webhook: str = "a") -> Any:
    found = [b for b in store.breakers() if b.webhook == webhook]
    return found[0] if found else None


def actions(store: Any) -> list[str]:
    return [e.record.action for e in reversed(list(store.history(name="a")))]


class BreakerContract:
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        pytest.fail("a backend's test module provides store_factory", pytrace=False)

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Any:
        made = store_factory()
        commit(made, put("acme", "a"), put("acme", "b"), put("globex", "a"))
        return made

    def test_endpoint_health_shows_the_breaker_of_each_webhook(self, store: Any) -> None:
        opened(store)
        states = breaker_states(store, [("acme", "a"), ("acme", "b"), ("globex", "a")])
        assert states == {("acme", "a"): "open", ("acme", "b"): "closed", ("globex", "a"): "closed"}
        shown = {
            (h.organization, h.webhook): h.breaker
            for h in endpoint_health(store, None, NOW).webhooks
        }
        assert shown[("acme", "a")] == "open"
        assert shown[("globex", "a")] == "closed"

    def test_it_opens_after_the_threshold_of_down_failures_in_a_row(self, store: Any) -> None:
        serial = store.state().serial
        for n in range(THRESHOLD - 1):
            report(store, down(), NOW + n)
        state = breaker(store)
        assert (state.state, state.consecutive_failures, state.failing_since) == (
            "closed",
            THRESHOLD - 1,
            NOW,
        )
        assert actions(store) == []

        report(store, down(reason="HTTP 503"), NOW + 10)

        state = breaker(store)
        assert (state.state, state.opened_at, state.next_probe_at) == (
            "open",
            NOW + 10,
            NOW + 10 + FIRST_PROBE,
        )
        assert (state.last_failure, state.failing_since) == ("HTTP 503", NOW)
        (entry,) = store.history(name="a")
        assert (entry.record.action, entry.record.actor) == ("breaker-open", "dispatcher")
        assert "HTTP 503" in (entry.record.note or "")
        # another organization's webhook of the same name is another breaker
        assert [b.organization for b in store.breakers()] == ["acme"]
        assert store.breakers(organizations=["globex"]) == []
        # no live webhook changed: a saved plan stays valid
        assert store.state().serial == serial

    def test_an_answer_between_failures_starts_the_count_again(self, store: Any) -> None:
        for n in range(THRESHOLD - 1):
            report(store, down(), NOW + n)
        report(store, up(), NOW + 10)
        assert breaker(store) is None  # plainly healthy again
        for n in range(THRESHOLD - 1):
            report(store, down(), NOW + 20 + n)
        assert breaker(store).state == "closed"

    def test_one_probe_at_a_time_and_only_when_it_is_due(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        opened(store)
        other = store_factory()
        due = breaker(store).next_probe_at
        taken, state = store.take_probe("acme", "a", "w1", due - 1, LEASE)
        assert (taken, state.state) == (False, "open")

        taken, state = store.take_probe("acme", "a", "w1", due, LEASE)
        assert (taken, state.state, state.probe_owner) == (True, "half-open", "w1")
        assert other.take_probe("acme", "a", "w2", due + 1, LEASE)[0] is False
        assert store.take_probe("acme", "a", "w1", due + 1, LEASE)[0] is False
        # a probe whose dispatcher died: another takes it when its lease runs out
        taken, state = other.take_probe("acme", "a", "w2", due + LEASE, LEASE)
        assert (taken, state.probe_owner) == (True, "w2")
        # a webhook with no breaker has no probe to take
        assert store.take_probe("acme", "b", "w1", due, LEASE) == (False, None)

    def test_dispatchers_asking_at_once_get_one_probe(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        opened(store)
        due = breaker(store).next_probe_at
        connections = [store_factory() for _ in range(4)]
        got: list[bool] = []
        barrier = threading.Barrier(len(connections))

        def ask(index: int) -> None:
            barrier.wait()
            got.append(connections[index].take_probe("acme", "a", f"w{index}", due, LEASE)[0])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(connections))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(got) == [False, False, False, True]

    def test_a_failed_probe_reopens_with_a_longer_interval_counted_not_logged(
        self, store: Any
    ) -> None:
        opened(store)
        interval = FIRST_PROBE
        at = breaker(store).next_probe_at
        for n in range(1, 12):
            assert store.take_probe("acme", "a", "w", at, LEASE)[0]
            report(store, down(probe=True), at)
            state = breaker(store)
            interval = min(interval * 2, MAX_PROBE)
            assert (state.state, state.probes_failed) == ("open", n)
            assert state.next_probe_at == at + interval
            assert state.probe_owner is None
            at = state.next_probe_at
        assert interval == MAX_PROBE
        assert actions(store) == ["breaker-open"]  # probe failures are counts, not entries

    def test_a_successful_probe_closes_it_into_the_history(self, store: Any) -> None:
        opened(store)
        at = breaker(store).next_probe_at
        store.take_probe("acme", "a", "w", at, LEASE)
        report(store, down(probe=True), at)
        at = breaker(store).next_probe_at
        store.take_probe("acme", "a", "w", at, LEASE)
        report(store, up(probe=True), at)
        assert breaker(store) is None
        assert actions(store) == ["breaker-open", "breaker-close"]
        note = next(iter(store.history(name="a"))).record.note
        assert "1 failed probes" in note

    def test_a_probe_not_sent_is_released_for_another(self, store: Any) -> None:
        opened(store)
        at = breaker(store).next_probe_at
        store.take_probe("acme", "a", "w", at, LEASE)
        report(store, BreakerReport("acme", "a", "release", probe=True), at)
        assert breaker(store).state == "open"
        assert store.take_probe("acme", "a", "w2", at, LEASE)[0] is True

    def test_a_pause_starts_the_breaker_afresh_and_resume_lifts_it(self, store: Any) -> None:
        opened(store)
        serial = store.state().serial
        store.pause("acme", "a", "its endpoint has failed for 3.0d", actor="dispatcher")
        assert breaker(store) is None
        assert store.resume("acme", "b", "alice") == "not paused"
        assert store.resume("acme", "nope", "alice") == "no such webhook"
        assert store.resume("acme", "a", "alice") == "resumed"
        (live,) = [w for w in store.webhooks("acme") if w.name == "a"]
        assert live.paused_reason is None
        assert store.state().serial == serial + 2  # the pause and the resume
        assert actions(store) == ["breaker-open", "pause", "resume"]
        entry = next(iter(store.history(name="a")))
        assert entry.record.actor == "alice"
        assert "3.0d" in (entry.record.note or "")
        assert store.resume("acme", "a", "alice") == "not paused"


class TestSqliteBreakerContract(BreakerContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[SqliteFactory]:
        made = SqliteFactory(tmp_path / "state.db")
        yield made
        made.close()


@pytest.mark.postgres
class TestPostgresBreakerContract(BreakerContract):
    @pytest.fixture
    def store_factory(self, postgres_url: str) -> Iterator[PostgresFactory]:
        made = PostgresFactory(postgres_url)
        yield made
        made.close()
