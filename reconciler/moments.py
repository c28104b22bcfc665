"""A moment on the command line or in a query: ISO 8601, or an age such as `2h`.

`--since 2h` is two hours before now; `--since 2026-12-07T01:00:00Z` is that moment
(a time without an offset is UTC). One parser for every `--since`/`--until` of the
CLI (`deliveries list`, `replay`, `retry`, `history`) and the API's list filters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_AGE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
EXAMPLES = "an age such as 30m, 2h, 3d, 1w, or an ISO 8601 time such as 2026-12-07T01:00:00Z"


def parse_moment(text: str, now: float) -> float:
    """Seconds since the epoch named by `text`, relative ages counted back from
    `now`; raises ValueError saying what is accepted."""
    text = text.strip()
    age = _AGE.match(text)
    if age:
        return now - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use {EXAMPLES})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_at(text: str) -> float:
    """An audit entry's `at` (ISO 8601, UTC) in seconds since the epoch."""
    return parse_moment(text, 0.0)
