"""Identifiers for events and deliveries: time-ordered, unique, opaque.

32 hex digits like a UUID, laid out like UUIDv7 (RFC 9562): 48 bits of Unix time in
milliseconds, then 80 random bits. New ids sort after older ones, so each insert
lands on the last page of the primary-key and foreign-key indexes instead of a
random one: with random ids every new delivery dirtied pages all over the indexes,
and SQLite's write-ahead log rewrote each of them in every transaction
(docs/benchmarks.md, Dispatcher).

The random bits come from os.urandom, read 4 KiB at a time by each thread: a read
is a system call that lets go of the GIL, and with one per id the database thread
waited for the event loop's thread once per delivery. A forked process starts
with an empty buffer, so it never hands out its parent's bytes.
"""

from __future__ import annotations

import os
import threading
import time

RANDOM_BYTES = 10  # 80 bits per id
_READ = 4096


class _Entropy(threading.local):
    buffer = b""
    taken = 0

    def take(self, count: int) -> bytes:
        if self.taken + count > len(self.buffer):
            self.buffer, self.taken = os.urandom(max(_READ, count)), 0
        self.taken += count
        return self.buffer[self.taken - count : self.taken]

    def forget(self) -> None:
        self.buffer, self.taken = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.forget)


def time_ordered_hex(now_ns: int | None = None) -> str:
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    return f"{millis & 0xFFFF_FFFF_FFFF:012x}{_entropy.take(RANDOM_BYTES).hex()}"


def new_event_id() -> str:
    return "evt_" + time_ordered_hex()


def new_delivery_id() -> str:
    return "msg_" + time_ordered_hex()
