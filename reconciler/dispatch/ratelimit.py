"""Per-webhook pacing: a webhook's rate_limit, and the pauses its receiver asks for,
kept across every dispatcher that shares the state.

Requests over the rate are delayed, never dropped. The state holds, per rate-limited
webhook, its next free slot: a claim takes one slot per delivery (spaced 1/rate
apart) in the claim's own transaction, and a delivery whose slot is still to come
goes back to the queue, due then, keeping its slot. However many processes and
machines claim, the slots come from one sequence, so together they keep to the
rate. A 429 or 503 with Retry-After holds every delivery to that webhook, on every
dispatcher: the hold is written to the state, and the webhook's next slots start
after it.

Webhooks without a rate_limit cost no database call per delivery: a hold on one of
them reaches this process through `Holds`, a copy of the state's holds read at most
once per HOLDS_TTL of the dispatcher's clock (this process's own holds count at once).

Times are the dispatchers' clocks (seconds since the epoch), as due times and leases
are, so dispatchers on several machines keep their clocks in sync (NTP): a skew of
d seconds between two machines lets at most rate x d more requests into a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.store.queue import Claim

Key = tuple[str, str]  # (organization, webhook)

HOLDS_TTL = 1.0  # seconds a process trusts its copy of the state's holds


@dataclass
class Holds:
    """This process's copy of the state's holds (Retry-After), by webhook."""

    ttl: float = HOLDS_TTL
    _until: dict[Key, float] = field(default_factory=dict)
    _read: float | None = None  # when the state's holds were last read (dispatcher clock)

    def stale(self, now: float) -> bool:
        return self._read is None or not 0 <= now - self._read < self.ttl

    def refreshed(self, read: dict[Key, float], now: float) -> None:
        """The state's holds as just read; this process's own that the state does not
        have yet (its write failed, say) are kept until they end."""
        mine = {key: until for key, until in self._until.items() if until > now}
        for key, until in mine.items():
            read[key] = max(read.get(key, 0.0), until)
        self._until = read
        self._read = now

    def hold(self, key: Key, until: float) -> None:
        self._until[key] = max(self._until.get(key, 0.0), until)

    def until(self, key: Key) -> float:
        return self._until.get(key, 0.0)


def admit(claim: Claim, now: float, held: float) -> tuple[float | None, bool]:
    """When `claim` may go: (None, _) now; else (time, keeps), where keeps says the
    delivery keeps its rate-limit slot for then. `held`: this process's hold on the
    webhook; the claim carries the state's hold for a rate-limited one."""
    held = max(held, claim.held_until or 0.0)
    slot = claim.rate_slot
    if slot is not None and slot >= held:
        return (slot, True) if slot > now else (None, False)
    if held > now:
        # A slot before the hold's end is given up: the delivery takes another
        # after it, when it is claimed again.
        return held, False
    return None, False
