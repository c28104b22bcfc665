"""Which deliveries a command or a query means: one set of filters for `deliveries
list`, `replay` and `retry`, the API's list and the console.

Times are a delivery's last change (`updated_at`: queued, attempted, finished,
replayed), so `--since 2h` is "what happened in the last two hours", as `replay
--failed --since 2h` always meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.moments import parse_moment


@dataclass(frozen=True)
class DeliveryFilter:
    status: str | None = None
    organization: str | None = None
    webhook: str | None = None
    since: float | None = None  # updated at or after
    until: float | None = None  # updated before
    status_code: int | None = None  # the last attempt's HTTP status

    @classmethod
    def parse(
        cls,
        now: float,
        *,
        status: str | None = None,
        organization: str | None = None,
        webhook: str | None = None,
        since: str | None = None,
        until: str | None = None,
        status_code: int | None = None,
    ) -> DeliveryFilter:
        """The filter as given in text; raises ValueError naming the bad time."""
        return cls(
            status,
            organization,
            webhook,
            _moment("since", since, now),
            _moment("until", until, now),
            status_code,
        )

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments of QueueStore.deliveries."""
        return {
            "status": self.status,
            "organization": self.organization,
            "webhook": self.webhook,
            "since": self.since,
            "until": self.until,
            "status_code": self.status_code,
        }

    @property
    def narrowed(self) -> bool:
        """Whether anything beyond the status narrows it."""
        return any(
            v is not None
            for v in (self.organization, self.webhook, self.since, self.until, self.status_code)
        )


def _moment(name: str, text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_moment(text, now)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
