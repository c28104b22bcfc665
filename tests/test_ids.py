"""Event and delivery ids: the same shape as before (prefix + 32 hex digits), unique,
and ordered by creation time so inserts land at the end of the indexes."""

from __future__ import annotations

import re

from reconciler.ids import new_delivery_id, new_event_id, time_ordered_hex

MS = 1_000_000  # nanoseconds


def test_ids_keep_their_prefix_and_32_hex_digits() -> None:
    assert re.fullmatch(r"evt_[0-9a-f]{32}", new_event_id())
    assert re.fullmatch(r"msg_[0-9a-f]{32}", new_delivery_id())


def test_the_first_twelve_digits_are_the_creation_millisecond() -> None:
    now_ns = 1_796_000_000_123 * MS + 456
    assert time_ordered_hex(now_ns)[:12] == f"{1_796_000_000_123:012x}"


def test_a_later_millisecond_always_sorts_after_an_earlier_one() -> None:
    start = 1_796_000_000_000 * MS
    ids = [time_ordered_hex(start + step * MS) for step in range(2_000)]
    assert ids == sorted(ids)


def test_ids_made_in_the_same_millisecond_differ() -> None:
    now_ns = 1_796_000_000_000 * MS
    ids = {time_ordered_hex(now_ns) for _ in range(10_000)}
    assert len(ids) == 10_000
