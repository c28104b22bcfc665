"""Per-webhook pacing: a webhook's rate_limit, and the pauses its receiver asks for.

Requests over the rate are delayed, never dropped: each gets the next free slot
(spaced 1/rate apart), and its delivery waits in the queue until then. A 429 or
503 with Retry-After holds every delivery to that webhook, not just the one that
got it. One limiter serves all the requests of a process; where N processes share
a queue (`serve --processes N`), each paces a webhook at 1/N of its rate, so
together they never exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str]  # (organization, webhook)


@dataclass
class RateLimiter:
    share: float = 1.0  # this process's part of every webhook's rate
    _next_free: dict[Key, float] = field(default_factory=dict)
    _held_until: dict[Key, float] = field(default_factory=dict)
    _slots: dict[str, float] = field(default_factory=dict)  # delivery id -> its slot

    def admit(self, key: Key, delivery_id: str, rate: float | None, now: float) -> float | None:
        """None when the request may go now; else the time it may go."""
        held = self._held_until.get(key, 0.0)
        if held > now:
            self._slots.pop(delivery_id, None)
            return held
        if rate is None:
            return None
        slot = self._slots.pop(delivery_id, None)
        if slot is not None and slot <= now:
            return None  # its reserved turn has come
        start = max(now, self._next_free.get(key, now))
        self._next_free[key] = start + 1.0 / (rate * self.share)
        if start <= now:
            return None
        self._slots[delivery_id] = start
        return start

    def hold(self, key: Key, until: float) -> None:
        """The receiver asked for a pause (Retry-After): nothing goes to it before `until`."""
        self._held_until[key] = max(self._held_until.get(key, 0.0), until)
        self._next_free[key] = max(self._next_free.get(key, 0.0), until)
