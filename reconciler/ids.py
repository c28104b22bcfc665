"""Identifiers for events and deliveries: time-ordered, unique, opaque.

32 hex digits like a UUID, laid out like UUIDv7 (RFC 9562): 48 bits of Unix time in
milliseconds, then 80 random bits. New ids sort after older ones, so each insert
lands on the last page of the primary-key and foreign-key indexes instead of a
random one: with random ids every new delivery dirtied pages all over the indexes,
and SQLite's write-ahead log rewrote each of them in every transaction
(docs/benchmarks.md, Dispatcher).
"""

from __future__ import annotations

import os
import time


def time_ordered_hex(now_ns: int | None = None) -> str:
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    return f"{millis & 0xFFFF_FFFF_FFFF:012x}{os.urandom(10).hex()}"


def new_event_id() -> str:
    return "evt_" + time_ordered_hex()


def new_delivery_id() -> str:
    return "msg_" + time_ordered_hex()
