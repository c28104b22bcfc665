"""Durations (`15s`, `5m`) and rates (`1/s`) as written in definitions."""

from __future__ import annotations

import re

DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"
RATE_PATTERN = r"^[0-9]+(\.[0-9]+)?/(s|m|h)$"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(DURATION_PATTERN)
_RATE = re.compile(RATE_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `500ms`, `15s`, `5m`, `2h`."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 15s, 5m, 2h)")
    number = text[: -len(match.group(2))]
    return float(number) * _UNITS[match.group(2)]


def parse_rate(text: str) -> float:
    """Requests per second in a rate such as `1/s` or `20/m`."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (use e.g. 1/s, 20/m)")
    count, unit = text.split("/")
    return float(count) / _UNITS[unit]
