"""When a failed attempt is tried again: backoff as data, jitter, Retry-After."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from reconciler.durations import parse_duration
from reconciler.model import RetryPolicy

# After the first attempt (at once): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JITTER = 0.2
RETRY_AFTER_CAP = 3600.0  # a receiver cannot push a retry further out than this
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Backoff:
    delays: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = DEFAULT_JITTER

    @classmethod
    def from_policy(cls, policy: RetryPolicy | None) -> Backoff:
        if policy is None:
            return cls()
        return cls(tuple(parse_duration(d) for d in policy.schedule), policy.jitter)

    def delay_after(
        self, attempt: int, rng: random.Random, retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (from 1); None: give up."""
        if attempt > len(self.delays):
            return None
        base = self.delays[attempt - 1]
        delay = base * (1 + rng.uniform(-self.jitter, self.jitter))
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)
