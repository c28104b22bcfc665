"""The contract every Store backend keeps, as one suite for all of them.

A backend's test module subclasses StoreContract and provides the
`store_factory` fixture: a callable that opens a new connection to one and the
same state (each call a separate Store, as two processes would have), with an
injectable `clock` and `sleep`, plus the state's `url` for `open_store` in a
child process. The suite uses only the Store protocol, so the PostgreSQL
backend runs these very tests; raw-SQL checks belong in the backend's module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Protocol

import pytest

from reconciler.errors import LockTimeout, StaleState
from reconciler.store.base import AuditEntry, AuditRecord, Store, Write
from tests.support.helpers_state import REPO, SUBPROCESS_TIMEOUT, FakeClock, spec


class StoreFactory(Protocol):
    url: str  # for open_store() in another process

    def __call__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> Store: ...


def put(organization: str, name: str, **fields: object) -> Write:
    return Write("put", organization, name, spec(name, organization, **fields).canonical_json())


def record(action: str, organization: str, name: str, **fields: object) -> AuditRecord:
    values: dict[str, object] = {
        "before": None,
        "after": {"url": f"https://hooks.example.com/{name}"},
        "actor": "alice",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "plan_checksum": "sha256:" + "ab" * 32,
        "note": None,
    }
    values.update(fields)
    return AuditRecord(action, organization, name, **values)  # type: ignore[arg-type]


def history(store: Store, **filters: object) -> list[AuditEntry]:
    return list(store.history(**filters))  # type: ignore[arg-type]


# A child process that takes the apply lock and dies holding it, as an apply
# killed by the OOM killer would.
_DIE_HOLDING_LOCK = """
import os, signal, sys
from reconciler.store import open_store
store = open_store(sys.argv[1], create=True)  # as apply opens it
with store.lock("ghost (apply)", 0):
    os.kill(os.getpid(), signal.SIGKILL)
"""


class StoreContract:
    """Subclass as `Test<Backend>Contract` and override `store_factory`."""

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        pytest.fail("a backend's test module provides store_factory", pytrace=False)

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Iterator[Store]:
        yield store_factory()

    # -- a new state --------------------------------------------------------------

    def test_new_state_has_a_lineage_and_serial_zero(self, store: Store) -> None:
        state = store.state()
        assert isinstance(state.lineage, str)
        assert len(state.lineage) >= 16
        assert state.serial == 0
        assert store.webhooks() == []
        assert history(store) == []

    def test_lineage_and_serial_are_the_same_for_every_connection(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        other = store_factory()
        assert other.state() == store.state()
        assert other.state().serial == 1

    def test_url_names_the_state_without_credentials(self, store: Store) -> None:
        assert "://" in store.url
        assert "@" not in store.url

    # -- commit ---------------------------------------------------------------------

    def test_commit_puts_and_bumps_the_serial_by_one(self, store: Store) -> None:
        serial = store.commit([put("acme", "a"), put("acme", "b")], [], expected_serial=0)
        assert serial == 1
        assert store.state().serial == 1
        live = store.webhooks()
        assert [w.key for w in live] == [("acme", "a"), ("acme", "b")]
        for webhook in live:
            assert webhook.spec == spec(webhook.name, "acme").canonical_json()
            assert webhook.applied == webhook.spec
            assert webhook.paused_reason is None
            assert webhook.updated_at
            assert not webhook.drifted
            assert webhook.spec_dict()["name"] == webhook.name

    def test_commit_replaces_and_deletes_in_one_step(self, store: Store) -> None:
        store.commit([put("acme", "a"), put("acme", "b")], [], expected_serial=0)
        new_url = "https://other.example.com/a"
        serial = store.commit(
            [put("acme", "a", url=new_url), Write("delete", "acme", "b"), put("acme", "c")],
            [],
            expected_serial=1,
        )
        assert serial == 2
        assert store.state().serial == 2
        live = {w.name: w for w in store.webhooks()}
        assert sorted(live) == ["a", "c"]
        assert live["a"].spec_dict()["url"] == new_url
        assert live["a"].applied == live["a"].spec

    def test_the_lineage_never_changes(self, store: Store) -> None:
        lineage = store.state().lineage
        store.commit([put("acme", "a")], [], expected_serial=0)
        store.commit([Write("delete", "acme", "a")], [], expected_serial=1)
        assert store.state().lineage == lineage

    @pytest.mark.parametrize("expected", [0, 2, 99])
    def test_commit_with_a_wrong_serial_raises_stale_state_and_changes_nothing(
        self, store: Store, expected: int
    ) -> None:
        store.commit(
            [put("acme", "a")], [record("create", "acme", "a")], expected_serial=0
        )  # serial 1
        before = (store.state(), store.webhooks(), history(store))
        with pytest.raises(StaleState, match="plan again"):
            store.commit(
                [put("acme", "a", url="https://x.example.com/"), put("acme", "b")],
                [record("update", "acme", "a"), record("create", "acme", "b")],
                expected_serial=expected,
            )
        assert (store.state(), store.webhooks(), history(store)) == before

    def test_a_commit_is_seen_by_another_connection(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        other = store_factory()
        store.commit([put("acme", "a")], [record("create", "acme", "a")], expected_serial=0)
        assert [w.key for w in other.webhooks()] == [("acme", "a")]
        assert [e.record.name for e in history(other)] == ["a"]
        with pytest.raises(StaleState):
            other.commit([put("acme", "b")], [], expected_serial=0)

    # -- reading ----------------------------------------------------------------------

    def test_webhooks_are_ordered_by_organization_then_name_and_filtered(
        self, store: Store
    ) -> None:
        writes = [put("globex", "b"), put("acme", "z"), put("globex", "a"), put("acme", "m")]
        store.commit(writes, [], expected_serial=0)
        assert [w.key for w in store.webhooks()] == [
            ("acme", "m"),
            ("acme", "z"),
            ("globex", "a"),
            ("globex", "b"),
        ]
        assert [w.key for w in store.webhooks("globex")] == [("globex", "a"), ("globex", "b")]
        assert [w.key for w in store.webhooks("acme")] == [("acme", "m"), ("acme", "z")]
        assert store.webhooks("initech") == []

    # -- the audit log ------------------------------------------------------------------

    def test_audit_records_are_appended_with_the_serial_of_their_commit(self, store: Store) -> None:
        first = [
            record("create", "acme", "a", note="first"),
            record("create", "globex", "a", actor="bob", git_commit=None),
        ]
        store.commit([put("acme", "a"), put("globex", "a")], first, expected_serial=0)
        second = [
            record(
                "update",
                "acme",
                "a",
                before={"url": "https://hooks.example.com/a", "headers": {"X": "${env:T}"}},
                after={"url": "https://new.example.com/a", "headers": {"X": "${env:T}"}},
                plan_checksum="sha256:" + "cd" * 32,
            )
        ]
        store.commit([put("acme", "a", url="https://new.example.com/a")], second, 1)

        entries = history(store)
        assert [e.record for e in entries] == [second[0], first[1], first[0]]
        assert [e.serial for e in entries] == [2, 1, 1]
        ids = [e.id for e in entries]
        assert ids == sorted(ids, reverse=True)
        assert len(set(ids)) == 3
        assert all(e.at for e in entries)
        assert entries[0].at >= entries[-1].at

    def test_history_filters_by_organization_and_name_and_limits(self, store: Store) -> None:
        store.commit(
            [put("acme", "a"), put("acme", "b"), put("globex", "a")],
            [
                record("create", "acme", "a"),
                record("create", "acme", "b"),
                record("create", "globex", "a"),
            ],
            expected_serial=0,
        )
        store.commit(
            [Write("delete", "acme", "a")],
            [record("delete", "acme", "a", before={"url": "u"}, after=None)],
            expected_serial=1,
        )

        def keys(entries: list[AuditEntry]) -> list[tuple[str, str, str]]:
            return [(e.record.action, e.record.organization, e.record.name) for e in entries]

        assert keys(history(store, organization="acme")) == [
            ("delete", "acme", "a"),
            ("create", "acme", "b"),
            ("create", "acme", "a"),
        ]
        assert keys(history(store, name="a")) == [
            ("delete", "acme", "a"),
            ("create", "globex", "a"),
            ("create", "acme", "a"),
        ]
        assert keys(history(store, organization="globex", name="a")) == [("create", "globex", "a")]
        assert keys(history(store, limit=2)) == [("delete", "acme", "a"), ("create", "globex", "a")]
        assert keys(history(store, name="a", limit=1)) == [("delete", "acme", "a")]
        assert history(store, organization="initech") == []

    def test_last_commit_is_the_newest_entry_naming_one_in_its_scope(self, store: Store) -> None:
        assert store.last_commit() is None
        old, new = "1" * 40, "2" * 40
        store.commit(
            [put("acme", "a"), put("globex", "a")],
            [
                record("create", "acme", "a", git_commit=old),
                record("create", "globex", "a", git_commit=old),
            ],
            expected_serial=0,
        )
        store.commit([put("acme", "a", enabled=False)], [record("update", "acme", "a")], 1)
        store.commit([put("acme", "b")], [record("create", "acme", "b", git_commit=new)], 2)
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")  # names no commit

        newest = store.last_commit()
        assert newest is not None
        assert (newest.record.git_commit, newest.record.name, newest.serial) == (new, "b", 3)
        by_acme = store.last_commit("acme")
        assert by_acme is not None and by_acme.record.git_commit == new
        by_globex = store.last_commit("globex")
        assert by_globex is not None and by_globex.record.git_commit == old
        assert store.last_commit("initech") is None

    def test_the_history_of_a_deleted_webhook_is_kept(self, store: Store) -> None:
        store.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
        store.commit([Write("delete", "acme", "a")], [record("delete", "acme", "a")], 1)
        assert store.webhooks() == []
        assert [e.record.action for e in history(store, name="a")] == ["delete", "create"]

    def test_audit_entry_as_json(self, store: Store) -> None:
        rec = record("create", "acme", "a", note="n")
        store.commit([put("acme", "a")], [rec], 0)
        (entry,) = history(store)
        assert entry.as_json() == {
            "id": entry.id,
            "at": entry.at,
            "serial": 1,
            "action": "create",
            "organization": "acme",
            "name": "a",
            "actor": "alice",
            "git_commit": rec.git_commit,
            "plan_checksum": rec.plan_checksum,
            "note": "n",
            "before": None,
            "after": rec.after,
        }

    def test_later_changes_never_alter_earlier_audit_entries(self, store: Store) -> None:
        # Append-only at the interface; the backend's own module shows that the
        # database itself refuses UPDATE and DELETE on the audit log.
        store.commit([put("acme", "a")], [record("create", "acme", "a")], 0)
        first = history(store)
        store.commit(
            [put("acme", "a", url="https://x.example.com/")], [record("update", "acme", "a")], 1
        )
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")
        store.commit([Write("delete", "acme", "a")], [record("delete", "acme", "a")], 3)
        entries = history(store)
        assert [e.record.action for e in entries] == ["delete", "pause", "update", "create"]
        assert entries[-1:] == first

    # -- pause (the dispatcher, after HTTP 410) ------------------------------------------

    def test_pause_sets_the_reason_bumps_the_serial_and_is_audited(self, store: Store) -> None:
        store.commit([put("acme", "a"), put("acme", "b")], [], expected_serial=0)
        store.pause("acme", "a", "HTTP 410 Gone from hooks.example.com", actor="dispatcher")

        assert store.state().serial == 2
        live = {w.name: w for w in store.webhooks()}
        assert live["a"].paused_reason == "HTTP 410 Gone from hooks.example.com"
        assert live["a"].drifted
        assert live["a"].spec == live["a"].applied
        assert live["b"].paused_reason is None
        (entry,) = history(store)
        assert entry.serial == 2
        assert entry.record.action == "pause"
        assert (entry.record.organization, entry.record.name) == ("acme", "a")
        assert entry.record.actor == "dispatcher"
        assert entry.record.note == "HTTP 410 Gone from hooks.example.com"

    def test_a_second_pause_is_a_no_op(self, store: Store) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        store.pause("acme", "a", "first reason", actor="dispatcher")
        before = (store.state(), store.webhooks(), history(store))
        store.pause("acme", "a", "second reason", actor="dispatcher")
        assert (store.state(), store.webhooks(), history(store)) == before
        assert store.webhooks()[0].paused_reason == "first reason"

    def test_pausing_a_webhook_that_is_not_live_is_a_no_op(self, store: Store) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        before = (store.state(), store.webhooks(), history(store))
        store.pause("acme", "missing", "HTTP 410", actor="dispatcher")
        store.pause("globex", "a", "HTTP 410", actor="dispatcher")
        assert (store.state(), store.webhooks(), history(store)) == before

    def test_a_put_over_a_paused_webhook_clears_the_pause(self, store: Store) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")
        store.commit([put("acme", "a")], [], expected_serial=2)
        (webhook,) = store.webhooks()
        assert webhook.paused_reason is None
        assert not webhook.drifted
        assert store.state().serial == 3

    def test_a_saved_serial_from_before_a_pause_is_stale(self, store: Store) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")
        with pytest.raises(StaleState):
            store.commit([put("acme", "a")], [], expected_serial=1)

    # -- the apply lock -----------------------------------------------------------------

    def test_a_second_holder_times_out_naming_the_first(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        clock = FakeClock()
        waiting = store_factory(clock=clock, sleep=clock.sleep)
        with store.lock("alice (apply)", 0):
            with pytest.raises(LockTimeout) as raised, waiting.lock("bob (apply)", 5):
                pytest.fail("the lock was taken twice")
            assert "alice (apply)" in str(raised.value)
            assert str(os.getpid()) in str(raised.value)
        assert clock.now >= 1005.0  # it waited the whole timeout, on the injected clock
        assert clock.sleeps
        assert all(0 < s <= 5 for s in clock.sleeps)

    def test_a_timeout_of_zero_does_not_wait(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        clock = FakeClock()
        waiting = store_factory(clock=clock, sleep=clock.sleep)
        with (
            store.lock("alice (apply)", 0),
            pytest.raises(LockTimeout, match="alice"),
            waiting.lock("bob (apply)", 0),
        ):
            pytest.fail("the lock was taken twice")
        assert clock.sleeps == []

    def test_a_waiting_holder_gets_the_lock_once_it_is_released(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        clock = FakeClock()
        first = ExitStack()
        first.enter_context(store.lock("alice (apply)", 0))

        def sleep(seconds: float) -> None:
            clock.sleep(seconds)
            first.close()  # alice's apply finishes while bob waits

        waiting = store_factory(clock=clock, sleep=sleep)
        with (
            waiting.lock("bob (apply)", 30),
            pytest.raises(LockTimeout, match="bob"),
            store.lock("carol (apply)", 0),
        ):
            pytest.fail("the lock was taken twice")
        assert len(clock.sleeps) == 1

    def test_the_lock_is_released_after_the_block(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        with store.lock("alice (apply)", 0):
            pass
        with store_factory().lock("bob (apply)", 0):
            pass
        with store.lock("alice (apply)", 0):
            pass

    def test_the_lock_is_released_when_the_block_raises(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        with pytest.raises(RuntimeError, match="boom"), store.lock("alice (apply)", 0):
            raise RuntimeError("boom")
        with store_factory().lock("bob (apply)", 0):
            pass

    def test_the_lock_is_released_when_a_commit_inside_it_is_stale(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        with pytest.raises(StaleState), store.lock("alice (apply)", 0):
            store.commit([put("acme", "a")], [], expected_serial=7)
        with store_factory().lock("bob (apply)", 0):
            pass

    def test_the_lock_does_not_stop_readers_or_the_dispatcher(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        store.commit([put("acme", "a")], [], expected_serial=0)
        dispatcher = store_factory()
        with store.lock("alice (apply)", 0):
            assert [w.key for w in dispatcher.webhooks()] == [("acme", "a")]
            assert dispatcher.state().serial == 1
            dispatcher.pause("acme", "a", "HTTP 410", actor="dispatcher")
            # the apply, planned at serial 1, now finds its plan stale
            with pytest.raises(StaleState):
                store.commit([put("acme", "a")], [], expected_serial=1)
        assert store.state().serial == 2

    def test_a_lock_whose_holder_process_died_is_taken_over(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        child = subprocess.run(
            [sys.executable, "-c", _DIE_HOLDING_LOCK, store_factory.url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        clock = FakeClock()
        taker = store_factory(clock=clock, sleep=clock.sleep)
        with (
            taker.lock("bob (apply)", 0),
            pytest.raises(LockTimeout, match="bob"),
            store.lock("carol (apply)", 0),
        ):
            pytest.fail("the lock was taken twice")
        assert clock.sleeps == []
