"""RateLimiter: requests over a webhook's rate are put off to the next free slot;
with N processes sharing the queue, each paces at 1/N so together they keep to it."""

from __future__ import annotations

from reconciler.dispatch.ratelimit import RateLimiter

KEY = ("acme", "slack")


def admitted_within(limiter: RateLimiter, rate: float, seconds: float, offered: int) -> int:
    """How many of `offered` requests, all arriving at t=0, may go within `seconds`."""
    due = [limiter.admit(KEY, f"msg_{n}", rate, 0.0) for n in range(offered)]
    return sum(1 for at in due if at is None or at < seconds)


def test_one_process_keeps_the_whole_rate() -> None:
    assert admitted_within(RateLimiter(), rate=10.0, seconds=0.95, offered=50) == 10


def test_two_processes_together_keep_to_the_rate() -> None:
    first, second = RateLimiter(share=0.5), RateLimiter(share=0.5)
    together = admitted_within(first, 10.0, 0.95, 25) + admitted_within(second, 10.0, 0.95, 25)
    assert together == 10


def test_a_put_off_request_goes_at_its_slot_and_nothing_is_dropped() -> None:
    limiter = RateLimiter(share=0.5)
    assert limiter.admit(KEY, "msg_a", 1.0, 0.0) is None
    slot = limiter.admit(KEY, "msg_b", 1.0, 0.0)
    assert slot == 2.0  # 1/s split over two processes: one every 2 s here
    assert limiter.admit(KEY, "msg_b", 1.0, slot) is None


def test_retry_after_holds_the_webhook_whatever_the_share() -> None:
    limiter = RateLimiter(share=0.25)
    limiter.hold(KEY, 30.0)
    assert limiter.admit(KEY, "msg_a", None, 10.0) == 30.0
    assert limiter.admit(KEY, "msg_a", None, 30.0) is None
