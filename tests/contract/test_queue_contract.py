"""The delivery queue's contract: intake, claims under a lease, outcomes, replay.

`QueueContract` uses only the queue's methods and the Store protocol (commit,
webhooks, history), so every backend runs these very tests: SQLite on a file,
PostgreSQL on the real server (marker `postgres`). Times are injected (`now`), never
read from a clock: a lease expires because a test says so.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.base import Write
from reconciler.store.queue import (
    DEFAULT_TIMEOUT,
    LEASE_MARGIN,
    AttemptResult,
    Claim,
    DeliveryRecord,
    EventKey,
    EventRecord,
    IntakeResult,
)
from reconciler.store.sqlite import SqliteStore
from tests.support.serve_process import rows
from tests.support.store_contract import StoreFactory, put

NOW = 1_000.0
LEASE = 90.0
DELETED = "cancelled: the webhook was deleted by apply"


def event(event_id: str, organization: str = "acme", **fields: str) -> EventRecord:
    values = {
        "type": "new_rule_violation",
        "name": "no-public-s3",
        "description": "bucket logs is public",
        "time": "2026-11-29T21:22:42Z",
    }
    values.update(fields)
    return EventRecord(id=event_id, organization=organization, **values)


def key(event_id: str, organization: str = "acme") -> EventKey:
    return EventKey(organization, event_id)


def result(claim: Claim | str, outcome: str, **fields: Any) -> AttemptResult:
    delivery_id = claim if isinstance(claim, str) else claim.delivery_id
    number = 1 if isinstance(claim, str) else claim.attempt
    values: dict[str, Any] = {"started_at": NOW, "duration_ms": 12.5}
    values.update(fields)
    return AttemptResult(delivery_id, number, outcome=outcome, **values)  # type: ignore[arg-type]


def commit(store: Any, *writes: Write) -> int:
    return store.commit(list(writes), [], expected_serial=store.state().serial)


def by_webhook(records: list[DeliveryRecord]) -> dict[str, DeliveryRecord]:
    return {r.webhook: r for r in records}


class QueueContract:
    """Subclass as `Test<Backend>QueueContract` and override `store_factory`."""

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        pytest.fail("a backend's test module provides store_factory", pytrace=False)

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Any:
        made = store_factory()
        commit(made, put("acme", "a"), put("acme", "b"))
        return made

    def one(self, store: Any, event_id: str = "evt-1", now: float = NOW) -> DeliveryRecord:
        """Queue an event for acme/a alone (b is taken away) and return its delivery."""
        if any(w.name == "b" for w in store.webhooks("acme")):
            commit(store, Write("delete", "acme", "b"))
        store.add_event(event(event_id), now)
        (record,) = store.deliveries(event=key(event_id))
        return record

    # -- intake -------------------------------------------------------------------

    def test_an_event_queues_one_pending_delivery_per_matching_enabled_webhook(
        self, store: Any
    ) -> None:
        commit(
            store,
            put("acme", "off", enabled=False),
            put("acme", "surplus", event="reserved_instance_surplus"),
            put("globex", "a"),
        )
        # (a paused webhook's delivery is held: test_held_contract.py)

        got = store.add_event(event("evt-1"), NOW)

        assert got == IntakeResult("evt-1", "acme", 2, duplicate=False)
        assert got.as_json() == {
            "event_id": "evt-1",
            "organization": "acme",
            "deliveries": 2,
            "duplicate": False,
        }
        records = store.deliveries(event=key("evt-1"))
        assert sorted(r.webhook for r in records) == ["a", "b"]
        for r in records:
            assert r.id.startswith("msg_")
            assert (r.event_id, r.event_type, r.organization) == (
                "evt-1",
                "new_rule_violation",
                "acme",
            )
            assert (r.status, r.attempts, r.due_at) == ("pending", 0, NOW)
            assert (r.created_at, r.updated_at) == (NOW, NOW)
            assert (r.last_status, r.last_error) == (None, None)
        assert len({r.id for r in records}) == 2
        assert store.event(key("evt-1")) == event("evt-1")

    def test_other_event_types_and_organizations_do_not_match(self, store: Any) -> None:
        commit(store, put("globex", "g", event="reserved_instance_deficit"))
        assert store.add_event(event("e1", type="reserved_instance_surplus"), NOW).deliveries == 0
        assert store.add_event(event("e2", "initech"), NOW).deliveries == 0
        assert store.add_event(event("e3", "globex"), NOW).deliveries == 0
        got = store.add_event(event("e4", "globex", type="reserved_instance_deficit"), NOW)
        assert got.deliveries == 1
        assert [r.webhook for r in store.deliveries(event=key("e4", "globex"))] == ["g"]
        # an event that matched nothing is still stored (and so still deduplicated)
        assert store.event(key("e2", "initech")) == event("e2", "initech")
        assert store.deliveries(event=key("e2", "initech")) == []

    def test_the_same_event_id_twice_queues_nothing_new(self, store: Any) -> None:
        first = store.add_event(event("evt-1"), NOW)
        commit(store, put("acme", "c"))  # would match now, but the event was seen
        again = store.add_event(event("evt-1", name="something else"), NOW + 5)
        assert first == IntakeResult("evt-1", "acme", 2, duplicate=False)
        assert again == IntakeResult("evt-1", "acme", 2, duplicate=True)
        assert len(store.deliveries(event=key("evt-1"))) == 2
        assert store.event(key("evt-1")) == event("evt-1")  # the first one is kept

    def test_add_events_takes_many_events_in_one_go(self, store: Any) -> None:
        store.add_event(event("seen"), NOW)
        results = store.add_events(
            [
                event("e1"),
                event("seen"),  # stored before
                event("g1", "globex"),
                event("e1", name="again"),  # twice in one batch
                event("s1", type="reserved_instance_surplus"),
            ],
            NOW + 1,
        )
        assert results == [
            IntakeResult("e1", "acme", 2, duplicate=False),
            IntakeResult("seen", "acme", 2, duplicate=True),
            IntakeResult("g1", "globex", 0, duplicate=False),
            IntakeResult("e1", "acme", 2, duplicate=True),
            IntakeResult("s1", "acme", 0, duplicate=False),
        ]
        assert len(store.deliveries(event=key("e1"))) == 2
        assert len(store.deliveries(event=key("seen"))) == 2
        assert store.event(key("e1")) == event("e1")
        assert {r.due_at for r in store.deliveries(event=key("e1"))} == {NOW + 1}
        assert store.add_events([], NOW) == []

    def test_event_values_are_stored_verbatim(self, store: Any) -> None:
        hostile = 'say "hi" \\ back\nslash {{time}} ${env:SECRET} é 🚀 \u2028 \t'
        sent = event("evt-odd", name=hostile, description=hostile)
        store.add_event(sent, NOW)
        assert store.event(key("evt-odd")) == sent
        assert store.event(key("unknown")) is None

    def test_an_event_holding_nul_is_refused_and_its_batch_stores_nothing(self, store: Any) -> None:
        with pytest.raises(ValueError, match="NUL"):
            store.add_events([event("fine"), event("bad", description="a\x00b")], NOW)
        assert store.event(key("fine")) is None
        assert store.deliveries() == []

    # -- an event is (organization, id) ---------------------------------------------

    def test_the_same_id_in_two_organizations_is_two_events_both_sent(self, store: Any) -> None:
        commit(store, put("globex", "a"))
        ours = store.add_event(event("r17:2026-11-30", "globex", name="globex's"), NOW)
        theirs = store.add_event(event("r17:2026-11-30", name="acme's"), NOW + 1)

        assert ours == IntakeResult("r17:2026-11-30", "globex", 1, duplicate=False)
        assert theirs == IntakeResult("r17:2026-11-30", "acme", 2, duplicate=False)
        assert store.event(key("r17:2026-11-30", "globex")).name == "globex's"
        assert store.event(key("r17:2026-11-30")).name == "acme's"
        assert store.event(key("r17:2026-11-30", "initech")) is None
        assert [r.webhook for r in store.deliveries(event=key("r17:2026-11-30", "globex"))] == ["a"]
        assert sorted(r.webhook for r in store.deliveries(event=key("r17:2026-11-30"))) == [
            "a",
            "b",
        ]
        # an organization filter and an event of another organization: nothing
        assert store.deliveries(organization="acme", event=key("r17:2026-11-30", "globex")) == []

        claims = store.claim("w1", 10, NOW + 1, LEASE)
        assert sorted((c.event.organization, c.organization, c.webhook) for c in claims) == [
            ("acme", "acme", "a"),
            ("acme", "acme", "b"),
            ("globex", "globex", "a"),
        ]
        for c in claims:
            assert c.event.name == f"{c.organization}'s"
        assert store.finish([result(c, "delivered", status=200) for c in claims], "w1", NOW) == 3
        assert [r.status for r in store.deliveries()] == ["delivered"] * 3

    def test_the_same_id_again_in_one_organization_answers_its_own_count(self, store: Any) -> None:
        commit(store, put("globex", "a"))
        store.add_event(event("x", "globex"), NOW)
        store.add_event(event("x"), NOW)
        commit(store, put("globex", "b"), put("globex", "c"))  # would match now

        assert store.add_event(event("x", "globex"), NOW + 1) == IntakeResult(
            "x", "globex", 1, duplicate=True
        )
        assert store.add_event(event("x"), NOW + 1) == IntakeResult("x", "acme", 2, duplicate=True)
        assert len(store.deliveries()) == 3

    def test_an_organizations_answer_does_not_depend_on_another_organizations_events(
        self, store: Any
    ) -> None:
        # globex's intake answers alike for an id acme has used and one nobody has.
        store.add_event(event("taken"), NOW)
        answers = {
            event_id: [
                (r.organization, r.deliveries, r.duplicate)
                for r in store.add_events([event(event_id, "globex")] * 2, NOW + 1)
            ]
            for event_id in ("taken", "free")
        }
        assert answers["taken"] == answers["free"] == [("globex", 0, False), ("globex", 0, True)]
        assert store.event(key("taken")) == event("taken")  # acme's own is untouched

    def test_a_batch_takes_one_id_in_several_organizations(self, store: Any) -> None:
        commit(store, put("globex", "a"))
        store.add_event(event("seen", "globex"), NOW)
        results, claims = store.add_events_and_claim(
            [
                event("seen"),  # globex's "seen" is not acme's
                event("x"),
                event("x", "globex"),
                event("x", name="again"),  # acme's x, twice in one batch
                event("seen", "globex"),  # stored before
                event("x", "initech"),
            ],
            NOW + 1,
            "w1",
            10,
            LEASE,
        )
        assert results == [
            IntakeResult("seen", "acme", 2, duplicate=False),
            IntakeResult("x", "acme", 2, duplicate=False),
            IntakeResult("x", "globex", 1, duplicate=False),
            IntakeResult("x", "acme", 2, duplicate=True),
            IntakeResult("seen", "globex", 1, duplicate=True),
            IntakeResult("x", "initech", 0, duplicate=False),
        ]
        assert sorted((str(c.event.key), c.webhook) for c in claims) == [
            ("acme/seen", "a"),
            ("acme/seen", "b"),
            ("acme/x", "a"),
            ("acme/x", "b"),
            ("globex/x", "a"),
        ]
        assert store.event(key("x")) == event("x")
        assert store.event(key("x", "initech")) == event("x", "initech")

    def test_claim_with_an_event_takes_only_that_organizations(self, store: Any) -> None:
        commit(store, put("globex", "a"))
        store.add_event(event("x"), NOW)
        store.add_event(event("x", "globex"), NOW)
        (claim,) = store.claim("cli", 10, NOW, LEASE, event=key("x", "globex"))
        assert (claim.event, claim.organization) == (event("x", "globex"), "globex")
        assert {r.status for r in store.deliveries(event=key("x"))} == {"pending"}
        assert store.claim("cli", 10, NOW, LEASE, event=key("x", "initech")) == []

    # -- claims -------------------------------------------------------------------

    def test_claim_takes_due_deliveries_with_what_is_needed_to_send_them(self, store: Any) -> None:
        store.add_event(event("now"), NOW)
        store.add_event(event("later"), NOW + 60)

        claims = store.claim("w1", 10, NOW + 1, LEASE)

        assert sorted((c.event.id, c.webhook) for c in claims) == [("now", "a"), ("now", "b")]
        live = {w.name: w for w in store.webhooks("acme")}
        for c in claims:
            assert c.attempt == 1
            assert c.event == event("now")
            assert c.organization == "acme"
            assert c.spec == live[c.webhook].spec
            assert c.paused_reason is None
        states = {r.id: r.status for r in store.deliveries()}
        assert sorted(states.values()) == ["in_flight", "in_flight", "pending", "pending"]
        assert {states[c.delivery_id] for c in claims} == {"in_flight"}
        assert store.claim("w2", 10, NOW + 1, LEASE) == []
        assert len(store.claim("w2", 10, NOW + 60, LEASE)) == 2

    def test_intake_can_store_new_deliveries_claimed_by_a_worker(self, store: Any) -> None:
        store.add_event(event("seen"), NOW)
        results, claims = store.add_events_and_claim(
            [event("seen"), event("e1"), event("e2")], NOW, "w1", 3, LEASE
        )

        assert [(r.event_id, r.duplicate) for r in results] == [
            ("seen", True),
            ("e1", False),
            ("e2", False),
        ]
        # up to the limit, in order; an event seen before hands nothing over
        assert [(c.event.id, c.webhook) for c in claims] == [("e1", "a"), ("e1", "b"), ("e2", "a")]
        live = {w.name: w for w in store.webhooks("acme")}
        for c in claims:
            assert (c.attempt, c.retry_number, c.paused_reason) == (1, 1, None)
            assert c.event == event(c.event.id)
            assert c.spec == live[c.webhook].spec
        states = {r.id: r.status for r in store.deliveries()}
        assert {states[c.delivery_id] for c in claims} == {"in_flight"}
        assert sorted(states.values()) == ["in_flight"] * 3 + ["pending"] * 3
        # leased as a claim leaves them: nobody else's until the lease runs out
        left = store.claim("w2", 10, NOW, LEASE)
        assert {c.delivery_id for c in left}.isdisjoint(c.delivery_id for c in claims)
        assert len(left) == 3
        assert store.claim("w2", 10, NOW + LEASE - 1, LEASE) == []
        retaken = {c.delivery_id for c in store.claim("w2", 10, NOW + LEASE, LEASE)}
        assert {c.delivery_id for c in claims} <= retaken

    def test_claims_handed_over_by_intake_are_recorded_as_claimed_ones(self, store: Any) -> None:
        _, claims = store.add_events_and_claim([event("e1")], NOW, "w1", 10, LEASE)
        assert store.finish([result(c, "delivered", status=200) for c in claims], "w1", NOW) == 2
        assert {r.status for r in store.deliveries()} == {"delivered"}
        assert store.add_events_and_claim([event("e2")], NOW, "w1", 0, LEASE)[1] == []
        assert {r.status for r in store.deliveries(event=key("e2"))} == {"pending"}

    def test_finish_and_claim_records_then_claims_in_one_go(self, store: Any) -> None:
        store.add_event(event("e1"), NOW)
        store.add_event(event("e2"), NOW + 1)
        first = store.claim("w1", 2, NOW + 1, LEASE)
        assert sorted(c.event.id for c in first) == ["e1", "e1"]
        done = [result(first[0], "delivered", status=200), result(first[1], "retry", next_due=NOW)]

        nxt = store.finish_and_claim(done, "w1", NOW + 2, 3, LEASE)

        # the retry due at once is claimable again in the same transaction
        assert sorted((c.event.id, c.attempt) for c in nxt) == [("e1", 2), ("e2", 1), ("e2", 1)]
        assert by_webhook(store.deliveries(event=key("e1")))[first[0].webhook].status == "delivered"
        assert store.finish_and_claim([], "w1", NOW + 2, 0, LEASE) == []
        # a result for a delivery no longer leased to the owner is ignored, as by finish
        assert store.finish_and_claim([result(first[0], "failed")], "w1", NOW + 3, 5, LEASE) == []
        assert by_webhook(store.deliveries(event=key("e1")))[first[0].webhook].status == "delivered"

    def test_claim_takes_at_most_limit(self, store: Any) -> None:
        for n in range(3):
            store.add_event(event(f"e{n}"), NOW + n)
        first = store.claim("w1", 4, NOW + 10, LEASE)
        second = store.claim("w2", 4, NOW + 10, LEASE)
        assert (len(first), len(second)) == (4, 2)
        assert not {c.delivery_id for c in first} & {c.delivery_id for c in second}
        assert store.claim("w3", 4, NOW + 10, LEASE) == []

    def test_a_leased_delivery_goes_to_no_one_else_until_the_lease_expires(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        record = self.one(store)
        other = store_factory()  # another process sharing the queue
        (mine,) = store.claim("w1", 10, NOW, LEASE)
        assert mine.delivery_id == record.id

        assert other.claim("w2", 10, NOW + LEASE - 1, LEASE) == []
        assert store.claim("w1", 10, NOW + LEASE - 1, LEASE) == []  # not twice to one owner
        assert other.claim("w2", 10, NOW + LEASE - 1, LEASE, event=key("evt-1")) == []

        (theirs,) = other.claim("w2", 10, NOW + LEASE, LEASE)
        assert theirs.delivery_id == record.id
        assert theirs.attempt == 1  # no attempt was recorded by the first owner

        # the first owner's late result is ignored; the new owner's counts
        assert store.finish([result(mine, "delivered", status=200)], "w1", NOW + 100) == 0
        assert other.finish([result(theirs, "delivered", status=200)], "w2", NOW + 101) == 1
        found, attempts = store.delivery(record.id)
        assert found.status == "delivered"
        assert found.attempts == 1
        assert len(attempts) == 1

    def test_two_connections_never_claim_the_same_delivery(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        for n in range(5):
            store.add_event(event(f"e{n}"), NOW)
        other = store_factory()
        taken: list[str] = []
        for turn in range(12):
            claimer = (store, other)[turn % 2]
            taken += [c.delivery_id for c in claimer.claim(f"w{turn % 2}", 1, NOW, LEASE)]
        assert len(taken) == 10
        assert len(set(taken)) == 10

    def test_workers_claiming_at_once_never_share_a_delivery(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        commit(store, put("acme", "a", max_in_flight=20), put("acme", "b", max_in_flight=20))
        for n in range(20):
            store.add_event(event(f"e{n}"), NOW)
        connections = [store_factory() for _ in range(4)]
        taken: list[list[str]] = [[] for _ in connections]

        def work(index: int) -> None:
            while claims := connections[index].claim(f"w{index}", 3, NOW, LEASE):
                taken[index] += [c.delivery_id for c in claims]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(connections))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        every = [delivery for mine in taken for delivery in mine]
        assert len(every) == 40
        assert len(set(every)) == 40

    # -- each webhook's share: max_in_flight and turns -------------------------------

    def in_flight(self, store: Any, webhook: str) -> int:
        return sum(
            1 for r in store.deliveries(webhook=webhook, limit=10_000) if r.status == "in_flight"
        )

    def test_a_claim_never_takes_more_than_a_webhooks_room(self, store: Any) -> None:
        commit(store, put("acme", "a", max_in_flight=3))  # b keeps the default, 10
        store.add_events([event(f"e{n}") for n in range(20)], NOW)

        first = store.claim("w1", 100, NOW, LEASE)
        assert sorted(c.webhook for c in first).count("a") == 3
        assert sorted(c.webhook for c in first).count("b") == 10
        # another owner finds no room: the cap counts every owner's requests in flight
        assert store.claim("w2", 100, NOW, LEASE) == []
        assert store.add_events_and_claim([event("late")], NOW, "w2", 10, LEASE)[1] == []

        # one of a's answered: exactly one more of a's may go, whoever claims it
        done = next(c for c in first if c.webhook == "a")
        store.finish([result(done, "delivered", status=200)], "w1", NOW)
        assert [c.webhook for c in store.claim("w2", 100, NOW, LEASE)] == ["a"]
        assert (self.in_flight(store, "a"), self.in_flight(store, "b")) == (3, 10)

        # leases that ran out hold no room: their deliveries are due again, in turn
        again = store.claim("w3", 100, NOW + LEASE, LEASE)
        assert sorted(c.webhook for c in again).count("a") == 3
        assert sorted(c.webhook for c in again).count("b") == 10

    def test_intake_hands_over_no_more_than_a_webhooks_room(self, store: Any) -> None:
        commit(store, put("acme", "a", max_in_flight=2))
        store.add_event(event("first"), NOW)
        store.claim("w0", 10, NOW, LEASE, event=key("first"))  # a: 1 of 2, b: 1 of 10

        _, claims = store.add_events_and_claim(
            [event(f"e{n}") for n in range(12)], NOW, "w1", 100, LEASE
        )

        assert [c.webhook for c in claims].count("a") == 1
        assert [c.webhook for c in claims].count("b") == 9
        assert (self.in_flight(store, "a"), self.in_flight(store, "b")) == (2, 10)
        assert store.claim("w2", 100, NOW, LEASE) == []

    def test_a_claim_for_one_event_keeps_to_the_webhooks_room(self, store: Any) -> None:
        commit(store, put("acme", "a", max_in_flight=1))
        store.add_events([event("e1"), event("e2")], NOW)
        store.claim("w1", 1, NOW, LEASE, event=key("e1"))  # a's one slot, or b's
        taken = store.claim("w1", 10, NOW, LEASE)
        assert self.in_flight(store, "a") == 1
        claims = store.claim("cli", 10, NOW, LEASE, event=key("e2"))
        assert "a" not in [c.webhook for c in claims]
        assert len(taken) + len(claims) == 2

    def test_claims_go_round_the_webhooks_not_oldest_first(self, store: Any) -> None:
        # a deep backlog, queued first, and a webhook with one fresh delivery
        commit(store, put("acme", "a", max_in_flight=1000), Write("delete", "acme", "b"))
        commit(store, put("globex", "fresh"))
        store.add_events([event(f"old{n}") for n in range(1000)], NOW - 100)
        store.add_event(event("new", "globex"), NOW)

        claims = store.claim("w1", 10, NOW, LEASE)

        assert len(claims) == 10
        assert [c.webhook for c in claims].count("fresh") == 1

    def test_each_turn_takes_one_delivery_of_every_webhook_with_room(self, store: Any) -> None:
        commit(store, put("acme", "c"), put("globex", "a"))
        for n in range(5):
            store.add_event(event(f"e{n}"), NOW + n)  # acme: a, b, c
            store.add_event(event(f"g{n}", "globex"), NOW - 100 + n)  # globex: a, older
        claims = store.claim("w1", 8, NOW + 10, LEASE)
        counts = {
            (o, w): sum(1 for c in claims if (c.organization, c.webhook) == (o, w))
            for o, w in [("acme", "a"), ("acme", "b"), ("acme", "c"), ("globex", "a")]
        }
        assert counts == {k: 2 for k in counts}
        # within a webhook, the longest-waiting first
        assert sorted(c.event.id for c in claims if c.organization == "acme") == [
            "e0", "e0", "e0", "e1", "e1", "e1"
        ]  # fmt: skip

    def test_owners_claiming_at_once_never_exceed_a_webhooks_cap_together(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        commit(store, put("acme", "a", max_in_flight=4), Write("delete", "acme", "b"))
        store.add_events([event(f"e{n}") for n in range(200)], NOW)
        connections = [store_factory() for _ in range(4)]
        for round_ in range(10):
            start = threading.Barrier(len(connections))
            taken: list[list[Claim]] = [[] for _ in connections]

            def work(index: int, start: threading.Barrier, taken: list[list[Claim]]) -> None:
                start.wait(timeout=30)
                for _ in range(3):
                    taken[index] += connections[index].claim(f"w{index}", 3, NOW, LEASE)

            threads = [
                threading.Thread(target=work, args=(i, start, taken))
                for i in range(len(connections))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            every = [claim for mine in taken for claim in mine]
            assert len(every) == 4, f"round {round_}"
            assert self.in_flight(store, "a") == 4
            for index, mine in enumerate(taken):
                done = [result(c, "delivered", status=200) for c in mine]
                assert store.finish(done, f"w{index}", NOW) == len(mine)

    def test_claim_with_an_event_id_takes_only_that_events_deliveries(self, store: Any) -> None:
        store.add_event(event("mine"), NOW)
        store.add_event(event("other"), NOW)
        claims = store.claim("cli", 10, NOW, LEASE, event=key("mine"))
        assert sorted(c.webhook for c in claims) == ["a", "b"]
        assert {c.event.id for c in claims} == {"mine"}
        assert store.claim("cli", 10, NOW, LEASE, event=key("mine")) == []
        # ...and its deliveries whose lease ran out
        again = store.claim("cli-2", 10, NOW + LEASE, LEASE, event=key("mine"))
        assert sorted(c.delivery_id for c in again) == sorted(c.delivery_id for c in claims)
        assert {r.status for r in store.deliveries(event=key("other"))} == {"pending"}

    def test_claim_with_an_event_id_leaves_a_retry_that_is_not_due(self, store: Any) -> None:
        self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        store.finish([result(claim, "retry", status=500, next_due=NOW + 300)], "w1", NOW)
        assert store.claim("cli", 10, NOW + 1, LEASE, event=key("evt-1")) == []
        assert len(store.claim("cli", 10, NOW + 300, LEASE, event=key("evt-1"))) == 1

    def test_a_claim_sees_the_live_definition_as_it_is_now(self, store: Any) -> None:
        self.one(store)
        commit(store, put("acme", "a", url="https://new.example.com/a"))
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        assert claim.spec is not None
        assert '"url":"https://new.example.com/a"' in claim.spec

    # -- outcomes -----------------------------------------------------------------

    def test_delivered(self, store: Any) -> None:
        record = self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        done = result(
            claim,
            "delivered",
            status=204,
            response_headers={"server": "x"},
            response_excerpt="ok",
        )
        assert store.finish([done], "w1", NOW + 2) == 1
        found, attempts = store.delivery(record.id)
        assert (found.status, found.attempts, found.due_at) == ("delivered", 1, None)
        assert (found.last_status, found.last_error, found.updated_at) == (204, None, NOW + 2)
        (attempt,) = attempts
        assert attempt.as_json() == {
            "number": 1,
            "started_at": NOW,
            "duration_ms": 12.5,
            "outcome": "delivered",
            "request": None,  # none given here: test_oncall_contract.py keeps one
            "status": 204,
            "response_headers": {"server": "x"},
            "response_excerpt": "ok",
            "error": None,
        }
        assert store.claim("w1", 10, NOW + 10_000, LEASE) == []

    def test_retry_makes_it_pending_until_its_next_due_time(self, store: Any) -> None:
        record = self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        retry = result(claim, "retry", status=503, error="HTTP 503", next_due=NOW + 300)
        store.finish([retry], "w1", NOW + 1)
        found, _ = store.delivery(record.id)
        assert (found.status, found.attempts, found.due_at) == ("pending", 1, NOW + 300)
        assert (found.last_status, found.last_error) == (503, "HTTP 503")
        assert store.claim("w1", 10, NOW + 299, LEASE) == []
        (again,) = store.claim("w2", 10, NOW + 300, LEASE)
        assert again.delivery_id == record.id
        assert again.attempt == 2

    def test_times_and_durations_are_recorded_to_the_last_bit(self, store: Any) -> None:
        rng = random.Random(20261130)
        for i in range(20):
            record = self.one(store, f"evt-bits-{i}")
            (claim,) = store.claim("w1", 10, NOW, LEASE)
            started = NOW + rng.uniform(1, 1e6)  # later than NOW: not claimed again below
            due = started + rng.uniform(0, 1e5)
            duration = rng.uniform(0, 60_000)
            outcome = result(claim, "retry", started_at=started, duration_ms=duration, next_due=due)
            assert store.finish([outcome], "w1", NOW + 1) == 1
            found, (attempt,) = store.delivery(record.id)
            assert (attempt.started_at, attempt.duration_ms, found.due_at) == (
                started,
                duration,
                due,
            )

    def test_failed(self, store: Any) -> None:
        record = self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        store.finish([result(claim, "failed", status=404, error="HTTP 404")], "w1", NOW)
        found, attempts = store.delivery(record.id)
        assert (found.status, found.attempts, found.due_at) == ("failed", 1, None)
        assert (found.last_status, found.last_error) == (404, "HTTP 404")
        assert [a.outcome for a in attempts] == ["failed"]
        assert store.claim("w1", 10, NOW + 10_000, LEASE) == []

    def test_an_unsent_outcome_records_an_attempt_without_counting_it(self, store: Any) -> None:
        record = self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        unsent = result(
            claim, "cancelled", duration_ms=0.0, error="cancelled: disabled", sent=False
        )
        store.finish([unsent], "w1", NOW)
        found, attempts = store.delivery(record.id)
        assert (found.status, found.attempts, found.last_error) == (
            "cancelled",
            0,
            "cancelled: disabled",
        )
        assert [(a.outcome, a.status, a.error) for a in attempts] == [
            ("cancelled", None, "cancelled: disabled")
        ]

    def test_results_for_deliveries_not_leased_by_the_owner_are_ignored(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        a, b = sorted(store.claim("w1", 10, NOW, LEASE), key=lambda c: c.webhook)
        # another owner's result, and one for a delivery nobody holds
        assert store.finish([result(a, "delivered", status=200)], "intruder", NOW) == 0
        assert store.finish([result("msg_unknown", "delivered", status=200)], "w1", NOW) == 0
        assert store.finish([result(b, "failed", status=400)], "w1", NOW) == 1
        # a finished delivery takes no second result, even from its owner
        assert store.finish([result(b, "delivered", status=200)], "w1", NOW) == 0
        found_a, attempts_a = store.delivery(a.delivery_id)
        found_b, attempts_b = store.delivery(b.delivery_id)
        assert (found_a.status, attempts_a) == ("in_flight", [])
        assert (found_b.status, [x.outcome for x in attempts_b]) == ("failed", ["failed"])

    def test_nul_in_what_an_attempt_says_is_recorded_as_a_replacement_character(
        self, store: Any
    ) -> None:
        delivery = self.one(store)
        (claim,) = store.claim("w1", 1, NOW, LEASE)
        said = result(claim, "failed", status=400, response_excerpt="a\x00b", error="x\x00y")
        assert store.finish([said], "w1", NOW + 1) == 1
        _, (attempt,) = store.delivery(delivery.id)
        assert (attempt.response_excerpt, attempt.error) == ("a\ufffdb", "x\ufffdy")

    def test_finish_records_several_results_at_once(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        claims = store.claim("w1", 10, NOW, LEASE)
        outcomes = {"a": "delivered", "b": "failed"}
        done = [result(c, outcomes[c.webhook], status=200) for c in claims]
        assert store.finish(done, "w1", NOW) == 2
        assert {w: r.status for w, r in by_webhook(store.deliveries()).items()} == outcomes

    def test_a_pause_with_the_result_pauses_the_webhook_as_drift(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        serial = store.state().serial
        a = next(c for c in store.claim("w1", 10, NOW, LEASE) if c.webhook == "a")
        gone = result(
            a, "failed", status=410, error="HTTP 410 Gone", pause_webhook="HTTP 410 on msg_x"
        )
        store.finish([gone], "w1", NOW)

        live = {w.name: w for w in store.webhooks("acme")}
        assert live["a"].paused_reason == "HTTP 410 on msg_x"
        assert live["a"].drifted
        assert live["b"].paused_reason is None
        assert store.state().serial == serial + 1  # a saved plan is now stale
        (entry,) = list(store.history(name="a"))
        assert (entry.record.action, entry.record.organization) == ("pause", "acme")
        assert (entry.record.actor, entry.record.note) == ("dispatcher", "HTTP 410 on msg_x")
        # a paused webhook's new deliveries are held, never claimed
        assert [h.webhook for h in store.add_event(event("evt-2"), NOW).held] == ["a"]
        assert [c.webhook for c in store.claim("w1", 10, NOW, LEASE)] == ["b"]

    def test_a_claim_of_a_paused_webhooks_delivery_carries_the_reason(self, store: Any) -> None:
        # A pause holds what is pending; one in flight then, whose lease runs out,
        # is claimed again with the pause to see.
        self.one(store)
        (first,) = store.claim("w1", 10, NOW, LEASE)
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")
        (claim,) = store.claim("w2", 10, NOW + first.lease + 1, LEASE)
        assert claim.paused_reason == "HTTP 410"

    def test_a_pause_holds_the_webhooks_pending_deliveries(self, store: Any) -> None:
        self.one(store)
        store.pause("acme", "a", "HTTP 410", actor="dispatcher")
        assert store.claim("w1", 10, NOW, LEASE) == []
        assert [r.status for r in store.deliveries()] == ["held"]

    # -- leases sized from the webhook's timeout, renewed while held ----------------

    def test_a_lease_lasts_its_webhooks_timeout_and_a_margin(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        commit(store, put("acme", "a", timeout="2s"))  # b: no timeout, the default 15s
        store.add_event(event("claimed"), NOW)
        claims = {c.webhook: c for c in store.claim("w1", 10, NOW, 1.0)}
        assert {w: c.lease for w, c in claims.items()} == {
            "a": 2 + LEASE_MARGIN,
            "b": DEFAULT_TIMEOUT + LEASE_MARGIN,
        }
        _, handed = store.add_events_and_claim([event("handed")], NOW, "w1", 10, 1.0)
        assert sorted((c.webhook, c.lease) for c in handed) == sorted(
            (w, c.lease) for w, c in claims.items()
        )
        # a shorter timeout is taken over sooner; `lease` is only the shortest
        other = store_factory()
        assert other.claim("w2", 10, NOW + 2 + LEASE_MARGIN - 0.5, 1.0) == []
        taken = other.claim("w2", 10, NOW + 2 + LEASE_MARGIN, 1.0)
        assert sorted((c.event.id, c.webhook) for c in taken) == [("claimed", "a"), ("handed", "a")]
        assert len(other.claim("w2", 10, NOW + 1, 1_000.0)) == 0
        # every lease run out by NOW + 40: each claimed again, for the shortest given
        again = store.claim("w3", 10, NOW + 40, 100.0)
        assert (len(again), {c.lease for c in again}) == (4, {100.0})

    def test_renew_extends_only_the_leases_the_owner_still_holds(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        commit(store, put("acme", "a", timeout="2s"), put("acme", "b", timeout="2s"))
        store.add_event(event("e1"), NOW)
        mine = store.claim("w1", 10, NOW, 1.0)
        held = [(c.delivery_id, c.lease) for c in mine]
        assert sorted(store.renew("w1", held, NOW + 8)) == sorted(d for d, _ in held)
        other = store_factory()
        # renewed at NOW + 8 for 12s: not anyone else's before NOW + 20
        assert other.claim("w2", 10, NOW + 19.5, 1.0) == []
        taken = other.claim("w2", 10, NOW + 20, 1.0)
        assert sorted(c.delivery_id for c in taken) == sorted(d for d, _ in held)
        # taken over: w1 renews nothing, w2's leases stay as they were
        assert store.renew("w1", held, NOW + 21) == []
        assert other.claim("w3", 10, NOW + 21, 1.0) == []
        assert store.renew("w1", [], NOW + 21) == []
        # a delivery recorded is no longer leased: nothing to renew
        other.finish([result(c, "delivered", status=200) for c in taken], "w2", NOW + 22)
        assert other.renew("w2", held, NOW + 23) == []

    # -- giving deliveries back ----------------------------------------------------

    def test_release_gives_back_what_the_owner_holds_due_at_once(self, store: Any) -> None:
        store.add_event(event("mine"), NOW)
        store.add_event(event("theirs"), NOW)
        store.claim("w1", 10, NOW, LEASE, event=key("mine"))
        store.claim("w2", 10, NOW, LEASE, event=key("theirs"))

        assert store.release("w1", NOW + 5) == 2
        mine = store.deliveries(event=key("mine"))
        assert {(r.status, r.due_at, r.attempts) for r in mine} == {("pending", NOW + 5, 0)}
        assert {r.status for r in store.deliveries(event=key("theirs"))} == {"in_flight"}
        assert store.release("w1", NOW + 5) == 0
        # due at once, for anyone, long before w1's lease would have run out
        assert len(store.claim("w3", 10, NOW + 5, LEASE)) == 2

    def test_release_dead_gives_back_only_dead_owners_deliveries(self, store: Any) -> None:
        for owner in ("dead", "alive"):
            store.add_event(event(owner), NOW)
            store.claim(owner, 10, NOW, LEASE, event=key(owner))
        asked: list[str] = []

        def alive(owner: str) -> bool:
            asked.append(owner)
            return owner == "alive"

        assert store.release_dead(alive, NOW + 1) == 2
        assert sorted(set(asked)) == ["alive", "dead"]
        assert {(r.status, r.due_at) for r in store.deliveries(event=key("dead"))} == {
            ("pending", NOW + 1)
        }
        assert {r.status for r in store.deliveries(event=key("alive"))} == {"in_flight"}
        assert store.release_dead(lambda _owner: True, NOW + 2) == 0

    # -- replay -------------------------------------------------------------------

    @pytest.mark.parametrize("outcome", ["failed", "cancelled", "delivered"])
    def test_replay_of_a_finished_delivery_keeps_its_id_and_makes_it_due(
        self, store: Any, outcome: str
    ) -> None:
        record = self.one(store)
        (claim,) = store.claim("w1", 10, NOW, LEASE)
        store.finish([result(claim, outcome, status=500, error="boom")], "w1", NOW)

        assert store.replay([record.id], NOW + 50) == [record.id]

        found, attempts = store.delivery(record.id)
        assert (found.id, found.status, found.due_at) == (record.id, "pending", NOW + 50)
        assert found.last_error is None
        assert len(attempts) == 1  # the log of what happened before is kept
        (again,) = store.claim("w1", 10, NOW + 50, LEASE)
        assert again.delivery_id == record.id
        assert again.attempt == 2

    def test_replay_refuses_queued_deliveries_and_unknown_ids(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        a, b = sorted(store.deliveries(event=key("evt-1")), key=lambda r: r.webhook)
        store.claim("w1", 1, NOW, LEASE)
        statuses = {r.status for r in store.deliveries(event=key("evt-1"))}
        assert statuses == {"pending", "in_flight"}
        assert store.replay([a.id, b.id, "msg_unknown"], NOW) == []
        after = {r.id: (r.status, r.due_at) for r in store.deliveries(event=key("evt-1"))}
        assert sorted(s for s, _ in after.values()) == ["in_flight", "pending"]

    def test_replay_of_several_returns_those_replayed(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        claims = sorted(store.claim("w1", 10, NOW, LEASE), key=lambda c: c.webhook)
        store.finish([result(claims[0], "failed", status=400)], "w1", NOW)
        ids = [c.delivery_id for c in claims]
        assert store.replay(ids, NOW) == [ids[0]]

    def test_replay_refuses_a_delivery_of_a_deleted_webhook_and_keeps_it(self, store: Any) -> None:
        store.add_event(event("evt-1"), NOW)
        claims = sorted(store.claim("w1", 10, NOW, LEASE), key=lambda c: c.webhook)
        store.finish([result(c, "failed", status=400) for c in claims], "w1", NOW)
        ids = [c.delivery_id for c in claims]  # a's, then b's
        commit(store, Write("delete", "acme", "b"))

        assert store.replay(ids, NOW + 5) == [ids[0]]

        kept, attempts = store.delivery(ids[1])  # history for auditors, not sent again
        assert (kept.webhook, kept.status, kept.attempts, len(attempts)) == ("b", "failed", 1, 1)
        assert ids[1] in {r.id for r in store.deliveries(status="failed")}

    # -- deletes through apply -----------------------------------------------------

    def test_deleting_a_webhook_cancels_its_queued_deliveries(self, store: Any) -> None:
        commit(store, put("acme", "c"))
        store.add_event(event("e1"), NOW)
        store.add_event(event("e2"), NOW + 1)
        done = next(c for c in store.claim("w1", 10, NOW, LEASE, key("e1")) if c.webhook == "a")
        store.finish([result(done, "delivered", status=200)], "w1", NOW)
        held = next(c for c in store.claim("w1", 10, NOW + 1, LEASE, key("e2")) if c.webhook == "a")

        commit(store, Write("delete", "acme", "a"))

        rows = {(r.event_id, r.webhook): r for r in store.deliveries()}
        assert rows["e1", "a"].status == "delivered"  # history stays as it was
        cancelled = rows["e2", "a"]
        assert (cancelled.status, cancelled.due_at) == ("cancelled", None)
        assert cancelled.last_error is not None
        assert "deleted" in cancelled.last_error
        for pair in (("e1", "b"), ("e1", "c"), ("e2", "b"), ("e2", "c")):
            assert rows[pair].status in ("pending", "in_flight"), pair
        # the worker that held it is too late to record anything
        assert store.finish([result(held, "delivered", status=200)], "w1", NOW + 2) == 0
        assert store.delivery(held.delivery_id)[0].status == "cancelled"

    def test_a_pending_delivery_of_a_deleted_webhook_is_cancelled_with_the_reason(
        self, store: Any
    ) -> None:
        record = self.one(store)
        commit(store, Write("delete", "acme", "a"))
        found, attempts = store.delivery(record.id)
        assert (found.status, found.last_error, attempts) == ("cancelled", DELETED, [])
        assert store.claim("w1", 10, NOW + 10_000, LEASE) == []

    # -- reading the log -------------------------------------------------------------

    def test_deliveries_filter_and_limit_newest_first(self, store: Any) -> None:
        commit(store, put("globex", "a"))
        store.add_event(event("e1"), NOW)
        store.add_event(event("e2"), NOW + 10)
        store.add_event(event("g1", "globex"), NOW + 20)
        (claim,) = store.claim("w1", 1, NOW, LEASE, event=key("e1"))
        store.finish([result(claim, "failed", status=404)], "w1", NOW + 30)

        everything = store.deliveries()
        assert len(everything) == 5
        created = [r.created_at for r in everything]
        assert created == sorted(created, reverse=True)

        assert [r.id for r in store.deliveries(status="failed")] == [claim.delivery_id]
        assert {r.organization for r in store.deliveries(organization="globex")} == {"globex"}
        assert len(store.deliveries(organization="acme")) == 4
        assert len(store.deliveries(webhook="a")) == 3
        assert len(store.deliveries(organization="acme", webhook="a")) == 2
        assert {r.event_id for r in store.deliveries(event=key("e2"))} == {"e2"}
        assert len(store.deliveries(event=key("e2"))) == 2
        assert store.deliveries(status="delivered") == []
        assert store.deliveries(organization="initech") == []
        # since: changed at or after that time
        assert {r.event_id for r in store.deliveries(since=NOW + 20)} == {"g1", "e1"}
        assert [r.id for r in store.deliveries(since=NOW + 30)] == [claim.delivery_id]
        assert len(store.deliveries(limit=2)) == 2
        assert [r.event_id for r in store.deliveries(limit=1)] == ["g1"]
        assert store.deliveries(status="failed", organization="globex") == []

    def test_deliveries_of_several_organizations_at_once(self, store: Any) -> None:
        # An API token's scope: a partner admin sees all of their clients, no one else.
        commit(store, put("globex", "a"), put("initech", "a"))
        store.add_event(event("e1"), NOW)
        store.add_event(event("g1", "globex"), NOW + 10)
        store.add_event(event("i1", "initech"), NOW + 20)

        def orgs(**filters: Any) -> list[str]:
            return [r.organization for r in store.deliveries(**filters)]

        assert orgs(organizations=["acme", "globex"]) == ["globex", "acme", "acme"]
        assert orgs(organizations=["initech"]) == ["initech"]
        assert orgs(organizations=[]) == []
        assert orgs(organizations=["acme", "globex"], limit=2) == ["globex", "acme"]
        assert orgs(organizations=["acme", "globex"], webhook="b") == ["acme"]
        assert orgs(organizations=["nobody"]) == []

    def test_queue_counts_by_status(self, store: Any) -> None:
        assert store.queue_counts() == {}
        store.add_event(event("e1"), NOW)
        store.add_event(event("e2"), NOW)
        (claim,) = store.claim("w1", 1, NOW, LEASE, event=key("e1"))
        store.finish([result(claim, "delivered", status=200)], "w1", NOW)
        store.claim("w1", 1, NOW, LEASE, event=key("e2"))
        assert store.queue_counts() == {"delivered": 1, "in_flight": 1, "pending": 2}

    def test_delivery_returns_every_attempt_in_order(self, store: Any) -> None:
        record = self.one(store)
        now = NOW
        for number, (outcome, status) in enumerate(
            [("retry", 500), ("retry", 429), ("delivered", 200)], start=1
        ):
            (claim,) = store.claim("w1", 10, now, LEASE)
            assert claim.attempt == number
            store.finish(
                [
                    result(
                        claim,
                        outcome,
                        started_at=now,
                        status=status,
                        error=None if status == 200 else f"HTTP {status}",
                        next_due=now + 10 if outcome == "retry" else None,
                    )
                ],
                "w1",
                now,
            )
            now += 10
        found, attempts = store.delivery(record.id)
        assert found.attempts == 3
        assert found.status == "delivered"
        assert [(a.number, a.outcome, a.status) for a in attempts] == [
            (1, "retry", 500),
            (2, "retry", 429),
            (3, "delivered", 200),
        ]
        assert [a.started_at for a in attempts] == [NOW, NOW + 10, NOW + 20]
        assert [a.error for a in attempts] == ["HTTP 500", "HTTP 429", None]
        assert found.as_json()["attempts"] == 3
        assert store.delivery("msg_unknown") is None

    # -- rate limits across dispatchers ---------------------------------------------
    # Each store_factory() call is another connection, as another dispatcher process
    # (or machine) has: the slots and holds are the state's, shared by all of them.

    def rated(self, store_factory: StoreFactory) -> tuple[Any, Any]:
        """Two dispatchers' connections to one state in which acme/slack (5/s) fires on
        new_rule_violation and acme/plain (no rate limit) on reserved_instance_surplus."""
        first, second = store_factory(), store_factory()
        commit(
            first,
            put("acme", "slack", rate_limit="5/s", max_in_flight=100),
            put("acme", "plain", event="reserved_instance_surplus"),
        )
        return first, second

    def test_slots_are_spaced_one_over_the_rate_across_two_owners(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        first.add_events([event(f"e{n}") for n in range(6)], NOW)
        one = first.claim("one", 3, NOW, LEASE)
        two = second.claim("two", 3, NOW + 0.01, LEASE)
        slots = sorted(c.rate_slot for c in one + two)
        assert slots == pytest.approx([NOW + n * 0.2 for n in range(6)])
        assert {c.held_until for c in one + two} == {0.0}
        # Slots in the past are not saved up: after a quiet spell the next goes now.
        first.add_event(event("e9"), NOW + 60)
        (late,) = second.claim("two", 3, NOW + 60, LEASE)
        assert late.rate_slot == pytest.approx(NOW + 60)

    def test_slots_taken_at_once_by_many_owners_are_never_shared(
        self, store_factory: StoreFactory
    ) -> None:
        first, _ = self.rated(store_factory)
        first.add_events([event(f"e{n:02d}") for n in range(20)], NOW)
        owners = [store_factory() for _ in range(4)]
        taken: list[float] = []
        problems: list[BaseException] = []

        def take(store: Any, owner: str) -> None:
            # A claim may pass over a webhook another owner is claiming at that moment
            # (PostgreSQL's per-webhook lock): owners go on until all 20 are taken.
            try:
                for _ in range(500):
                    if len(taken) >= 20:
                        break
                    taken.extend(c.rate_slot for c in store.claim(owner, 1, NOW, LEASE))
            except BaseException as exc:  # reported below, not lost in the thread
                problems.append(exc)

        threads = [
            threading.Thread(target=take, args=(store, f"owner-{n}"))
            for n, store in enumerate(owners)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not problems, problems
        assert sorted(taken) == pytest.approx([NOW + n * 0.2 for n in range(20)])

    def test_a_delivery_put_off_to_its_slot_keeps_it_whoever_claims_it_next(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        first.add_events([event("e0"), event("e1")], NOW)
        _, later = sorted(first.claim("one", 2, NOW, LEASE), key=lambda c: c.rate_slot)
        assert later.rate_slot == pytest.approx(NOW + 0.2)
        put_off = result(later, "deferred", next_due=later.rate_slot, keeps_slot=True, sent=False)
        first.finish([put_off], "one", NOW)
        assert second.claim("two", 10, NOW + 0.1, LEASE) == []  # not due yet
        (again,) = second.claim("two", 10, later.rate_slot, LEASE)
        assert (again.delivery_id, again.rate_slot) == (later.delivery_id, later.rate_slot)
        # It took no second slot: the next delivery gets the one after it.
        first.add_event(event("e2"), later.rate_slot)
        (fresh,) = first.claim("one", 10, later.rate_slot, LEASE)
        assert fresh.rate_slot == pytest.approx(NOW + 0.4)
        # A delivery put off without keeping its slot takes a new one when claimed.
        first.finish([result(fresh, "deferred", next_due=NOW + 0.4, sent=False)], "one", NOW)
        (anew,) = second.claim("two", 10, NOW + 0.4, LEASE)
        assert anew.rate_slot == pytest.approx(NOW + 0.6)

    def test_a_hold_from_one_owner_delays_the_others_deliveries(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        first.hold("acme", "slack", NOW + 30)
        first.hold("acme", "plain", NOW + 20)
        second.hold("acme", "slack", NOW + 10)  # a shorter hold never shortens one
        assert second.holds(NOW) == {("acme", "slack"): NOW + 30, ("acme", "plain"): NOW + 20}
        assert first.holds(NOW + 25) == {("acme", "slack"): NOW + 30}
        # A rate-limited webhook's claims carry the hold, and their slots start after it.
        first.add_events([event("e0"), event("e1")], NOW)
        claims = sorted(second.claim("two", 2, NOW, LEASE), key=lambda c: c.rate_slot)
        assert [c.rate_slot for c in claims] == pytest.approx([NOW + 30, NOW + 30.2])
        assert {c.held_until for c in claims} == {NOW + 30}
        # One without a rate limit carries nothing: dispatchers read holds() instead.
        first.add_event(event("p0", type="reserved_instance_surplus"), NOW)
        (plain,) = second.claim("two", 2, NOW, LEASE)
        assert (plain.webhook, plain.rate_slot, plain.held_until) == ("plain", None, None)

    def test_webhooks_without_a_rate_limit_never_touch_the_slots(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        surplus = "reserved_instance_surplus"
        _, handed = first.add_events_and_claim([event("p0", type=surplus)], NOW, "one", 5, LEASE)
        first.add_events([event(f"p{n}", type=surplus) for n in range(1, 4)], NOW)
        claims = handed + second.claim("two", 10, NOW, LEASE)
        assert len(claims) == 4
        assert {(c.rate_slot, c.held_until) for c in claims} == {(None, None)}
        first.finish([result(c, "delivered") for c in handed], "one", NOW)
        second.finish(
            [result(c, "retry", status=503, next_due=NOW + 5) for c in claims[1:]], "two", NOW
        )
        assert rows(store_factory.url, "SELECT count(*) FROM rate_limit_slots") == [(0,)]
        assert first.holds(0.0) == {}

    def test_intake_handing_deliveries_over_takes_their_slots(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        _, handed = first.add_events_and_claim([event("e0"), event("e1")], NOW, "one", 5, LEASE)
        assert sorted(c.rate_slot for c in handed) == pytest.approx([NOW, NOW + 0.2])
        first.add_event(event("e2"), NOW)
        (claimed,) = second.claim("two", 5, NOW, LEASE)
        assert claimed.rate_slot == pytest.approx(NOW + 0.4)

    def test_one_organizations_slots_and_holds_are_its_own(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = self.rated(store_factory)
        commit(first, put("globex", "slack", rate_limit="5/s"))
        first.add_events([event("e0"), event("e0", "globex")], NOW)
        claims = first.claim("one", 10, NOW, LEASE)
        assert {c.organization: c.rate_slot for c in claims} == {"acme": NOW, "globex": NOW}
        first.hold("globex", "slack", NOW + 60)
        assert second.holds(NOW) == {("globex", "slack"): NOW + 60}
        first.add_event(event("e1"), NOW)
        (acme,) = second.claim("two", 10, NOW, LEASE)
        assert (acme.organization, acme.held_until) == ("acme", 0.0)
        assert acme.rate_slot == pytest.approx(NOW + 0.2)


class SqliteFactory:
    """Opens connections to one state file; closes them all at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.opened: list[SqliteStore] = []

    def __call__(self, **kwargs: Any) -> SqliteStore:
        store = SqliteStore(self.path, **kwargs)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


class TestSqliteQueueContract(QueueContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[SqliteFactory]:
        made = SqliteFactory(tmp_path / "state.db")
        yield made
        made.close()


class PostgresFactory(SqliteFactory):
    """Opens connections to one PostgreSQL state (a schema of its own)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        from reconciler.store.postgres import PostgresStore

        store = PostgresStore(self.url, **kwargs)
        self.opened.append(store)
        return store


@pytest.mark.postgres
class TestPostgresQueueContract(QueueContract):
    @pytest.fixture
    def store_factory(self, postgres_url: str) -> Iterator[PostgresFactory]:
        made = PostgresFactory(postgres_url)
        yield made
        made.close()
