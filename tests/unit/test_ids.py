"""Event and delivery ids: the same shape as before (prefix + 32 hex digits), unique,
and ordered by creation time so inserts land at the end of the indexes."""

from __future__ import annotations

import os
import re
import threading

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


def test_ids_made_across_many_reads_of_random_bytes_differ() -> None:
    now_ns = 1_796_000_000_000 * MS
    ids = [time_ordered_hex(now_ns) for _ in range(5_000)]  # 50 KB: a dozen reads
    assert len(set(ids)) == len(ids)
    assert len({i[12:] for i in ids}) == len(ids)


def test_threads_never_hand_out_the_same_random_bits() -> None:
    now_ns = 1_796_000_000_000 * MS
    made: list[list[str]] = [[], []]

    def make(into: list[str]) -> None:
        into.extend(time_ordered_hex(now_ns) for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made[0]) | set(made[1])) == 4_000


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    """`serve --processes N` forks: each child must draw its own random bits, not
    the rest of what its parent had read ahead."""
    now_ns = 1_796_000_000_000 * MS
    time_ordered_hex(now_ns)  # the parent has random bytes read ahead now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(time_ordered_hex(now_ns) for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [time_ordered_hex(now_ns) for _ in range(50)]
    assert len(child) == 50
    assert not set(child) & set(parent)
