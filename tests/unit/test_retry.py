"""Backoff as data: the schedule, its jitter, Retry-After, and when to give up."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from reconciler.dispatch.retry import (
    DEFAULT_JITTER,
    DEFAULT_SCHEDULE,
    RETRY_AFTER_CAP,
    Backoff,
    parse_retry_after,
)
from reconciler.model import RetryPolicy
from reconciler.render import utc

MINUTE = 60.0
HOUR = 3600.0


def test_the_default_schedule_is_5s_5m_30m_2h_5h_10h_10h_with_20_percent_jitter() -> None:
    assert DEFAULT_SCHEDULE == (
        5,
        5 * MINUTE,
        30 * MINUTE,
        2 * HOUR,
        5 * HOUR,
        10 * HOUR,
        10 * HOUR,
    )
    assert DEFAULT_JITTER == 0.2
    assert Backoff() == Backoff(DEFAULT_SCHEDULE, 0.2)


@pytest.mark.parametrize("seed", range(25))
def test_every_default_delay_stays_within_20_percent_and_then_it_gives_up(seed: int) -> None:
    rng = random.Random(seed)
    backoff = Backoff()
    for attempt, base in enumerate(DEFAULT_SCHEDULE, start=1):
        delay = backoff.delay_after(attempt, rng)
        assert delay is not None
        assert base * 0.8 <= delay <= base * 1.2, (attempt, delay)
    assert backoff.delay_after(len(DEFAULT_SCHEDULE) + 1, rng) is None
    assert backoff.delay_after(100, rng) is None


def test_the_jitter_spreads_the_delays() -> None:
    delays = {Backoff().delay_after(1, random.Random(seed)) for seed in range(50)}
    assert len(delays) > 40  # not one fixed value
    values = [d for d in delays if d is not None]
    assert min(values) < 4.7
    assert max(values) > 5.3


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [Backoff().delay_after(n, random.Random(7)) for n in range(1, 8)]
    second = [Backoff().delay_after(n, random.Random(7)) for n in range(1, 8)]
    assert first == second


def test_no_jitter_gives_the_schedule_exactly() -> None:
    backoff = Backoff((1.0, 2.0, 3.0), jitter=0)
    rng = random.Random(1)
    assert [backoff.delay_after(n, rng) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, None]


def test_a_policy_from_a_definition() -> None:
    policy = RetryPolicy(schedule=["500ms", "10s", "5m", "1h"], jitter=0.5)
    backoff = Backoff.from_policy(policy)
    assert backoff == Backoff((0.5, 10.0, 300.0, 3600.0), 0.5)
    rng = random.Random(3)
    for attempt, base in enumerate(backoff.delays, start=1):
        delay = backoff.delay_after(attempt, rng)
        assert delay is not None
        assert base * 0.5 <= delay <= base * 1.5
    assert backoff.delay_after(5, rng) is None


def test_a_policy_without_jitter_keeps_the_default_jitter() -> None:
    assert Backoff.from_policy(RetryPolicy(schedule=["1s"])).jitter == 0.2


def test_no_policy_is_the_default_schedule() -> None:
    assert Backoff.from_policy(None) == Backoff()


def test_an_empty_schedule_means_no_retry() -> None:
    backoff = Backoff.from_policy(RetryPolicy(schedule=[]))
    assert backoff.delays == ()
    assert backoff.delay_after(1, random.Random(0)) is None
    assert backoff.delay_after(1, random.Random(0), retry_after=5) is None


# -- Retry-After --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_retry_after_longer_than_the_schedule_wins(seed: int) -> None:
    delay = Backoff().delay_after(1, random.Random(seed), retry_after=120)
    assert delay == 120


@pytest.mark.parametrize("seed", range(10))
def test_retry_after_shorter_than_the_schedule_does_not_shorten_it(seed: int) -> None:
    delay = Backoff().delay_after(2, random.Random(seed), retry_after=1)
    assert delay is not None
    assert 240 <= delay <= 360


def test_retry_after_is_capped() -> None:
    assert RETRY_AFTER_CAP == HOUR
    rng = random.Random(0)
    assert Backoff().delay_after(1, rng, retry_after=10 * 24 * HOUR) == RETRY_AFTER_CAP
    # a schedule delay beyond the cap is kept: the cap only limits the receiver
    delay = Backoff().delay_after(5, rng, retry_after=10 * 24 * HOUR)
    assert delay is not None
    assert 4 * HOUR <= delay <= 6 * HOUR


def test_retry_after_does_not_extend_the_schedule() -> None:
    assert Backoff().delay_after(8, random.Random(0), retry_after=60) is None


def test_retry_after_of_zero_keeps_the_schedule() -> None:
    delay = Backoff().delay_after(1, random.Random(0), retry_after=0)
    assert delay is not None
    assert 4 <= delay <= 6


# -- parse_retry_after ---------------------------------------------------------------

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("86400", 86400.0),
    ],
)
def test_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
        ("Wed, 21 Oct 2015 08:28:00 GMT", 3600.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 09:30:00 +0200", 120.0),
        # a date in the past means now, never a negative delay
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_an_http_date_is_relative_to_the_injected_now(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_an_http_date_depends_on_now_only() -> None:
    value = "Wed, 21 Oct 2015 07:30:00 GMT"
    assert parse_retry_after(value, NOW - 60) == 180.0
    assert parse_retry_after(value, NOW + 600) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "1.5",
        "-3",
        "+5",
        "5s",
        "Wed, 99 Foo 2015",
        "Wed, 21 Oct 2015 25:61:00 GMT",
    ],
)
def test_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["²", "³⁴", "1²"])
def test_digits_that_float_refuses_are_garbage_not_a_crash(value: str) -> None:
    # BUG: str.isdigit() is true for superscripts, float() refuses them, and the
    # ValueError escapes parse_retry_after: a receiver answering 429 with
    # `Retry-After: ²` crashes the worker's whole batch (see tests/unit/worker/test_bad_answers.py).
    assert parse_retry_after(value, NOW) is None


def test_utc_formats_seconds_as_iso_8601() -> None:
    assert utc(NOW) == "2015-10-21T07:28:00Z"
    assert utc(0) == "1970-01-01T00:00:00Z"
