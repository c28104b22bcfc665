"""Pacing in one process: when a claimed delivery may go, from the slot the state
gave it and the holds (Retry-After) this process knows of; and this process's copy
of the state's holds. The slots themselves come from the state (the queue contract,
tests/contract/test_queue_contract.py), shared by every dispatcher."""

from __future__ import annotations

from reconciler.dispatch.ratelimit import Holds, admit
from reconciler.store.queue import Claim, EventRecord

KEY = ("acme", "slack")
EVENT = EventRecord("evt-1", "new_rule_violation", "acme", "r", "d", "2026-11-29T21:22:42Z")


def claim(rate_slot: float | None = None, held_until: float | None = None) -> Claim:
    return Claim("msg_1", 1, EVENT, *KEY, "{}", None, rate_slot=rate_slot, held_until=held_until)


def test_a_delivery_without_a_slot_or_a_hold_goes_now() -> None:
    assert admit(claim(), 10.0, 0.0) == (None, False)


def test_a_slot_to_come_puts_the_delivery_off_and_it_keeps_the_slot() -> None:
    assert admit(claim(rate_slot=12.0), 10.0, 0.0) == (12.0, True)
    assert admit(claim(rate_slot=12.0), 12.0, 0.0) == (None, False)  # its turn has come


def test_a_hold_puts_off_a_webhook_without_a_rate_limit() -> None:
    assert admit(claim(), 10.0, 30.0) == (30.0, False)
    assert admit(claim(), 30.0, 30.0) == (None, False)


def test_a_slot_before_the_hold_ends_is_given_up() -> None:
    # The state's hold (carried by the claim) or this process's: either one.
    assert admit(claim(rate_slot=12.0, held_until=30.0), 10.0, 0.0) == (30.0, False)
    assert admit(claim(rate_slot=12.0), 10.0, 30.0) == (30.0, False)
    # A slot after the hold is kept: the state starts slots after a hold.
    assert admit(claim(rate_slot=31.0, held_until=30.0), 10.0, 0.0) == (31.0, True)


def test_the_copy_of_the_holds_is_read_again_after_its_ttl_of_the_dispatchers_clock() -> None:
    holds = Holds(ttl=1.0)
    assert holds.stale(100.0)
    holds.refreshed({KEY: 130.0}, 100.0)
    assert not holds.stale(100.5)
    assert holds.stale(101.0)
    assert holds.stale(99.0)  # a clock set back: read again
    assert holds.until(KEY) == 130.0
    assert holds.until(("globex", "slack")) == 0.0


def test_this_processs_own_hold_outlives_a_read_that_does_not_have_it_yet() -> None:
    holds = Holds()
    holds.hold(KEY, 130.0)
    holds.refreshed({}, 100.0)  # the state's write failed, or has not landed
    assert holds.until(KEY) == 130.0
    holds.refreshed({}, 131.0)
    assert holds.until(KEY) == 0.0
