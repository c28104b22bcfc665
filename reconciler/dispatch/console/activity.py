"""The activity chart: attempts per minute by outcome over the last 24 hours, and
their p95 duration, drawn on the server as SVG.

A minute that has ended does not change once its attempts are recorded (an attempt
is recorded when it ends, with the time it started, and lasts at most its 60 s
timeout): each set of organizations a page is asked for keeps its minutes older
than SETTLE_MINUTES, counted once, in this process (`MinuteCache`); a request counts
only the minutes that settled since, and the newest ones, from the attempts' time
index, grouped in the database. The first view of a set counts its whole day once.
The day's p95 is read from the minutes' duration histograms (retention's
logarithmic buckets: the upper bound of the bucket the nearest rank falls in,
within 19% above the exact value).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from reconciler.store.backend import Backend
from reconciler.store.console import MinuteCount
from reconciler.store.retention import percentile

MINUTE = 60.0
WINDOW_MINUTES = 24 * 60
SETTLE_MINUTES = 5
SETS_KEPT = 16  # sets of organizations kept (about 2 MB each at most); beyond, the oldest go
OUTCOMES = ("delivered", "retry", "failed")
COLOURS = {"delivered": "#1a7f37", "retry": "#9a6700", "failed": "#cf222e"}


@dataclass
class Minute:
    counts: Counter[str] = field(default_factory=Counter)
    durations: Counter[int] = field(default_factory=Counter)

    def add(self, row: MinuteCount) -> None:
        if row.outcome in OUTCOMES:
            self.counts[row.outcome] += row.count
            self.durations[row.bucket] += row.count


@dataclass
class _Kept:
    minutes: dict[int, Minute] = field(default_factory=dict)
    settled_until: int | None = None  # every minute before this one is counted


class MinuteCache:
    """Settled minutes per set of organizations, counted once (at most 1,440
    small entries a set)."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, ...] | None, _Kept] = {}

    def series(
        self, store: Backend, organizations: Sequence[str] | None, now: float
    ) -> tuple[list[int], dict[int, Minute]]:
        """Every minute of the window, oldest first, and what each holds."""
        current = int(now // MINUTE)
        first = current - WINDOW_MINUTES + 1
        settled = current - SETTLE_MINUTES
        key = None if organizations is None else tuple(sorted(organizations))
        kept = self._sets.pop(key, None) or _Kept()
        self._sets[key] = kept  # the newest last
        while len(self._sets) > SETS_KEPT:
            del self._sets[next(iter(self._sets))]
        origin = max(kept.settled_until or first, first)
        if origin < settled:
            for m in range(origin, settled):
                kept.minutes[m] = Minute()
            for row in store.attempt_minutes(organizations, origin * MINUTE, settled * MINUTE):
                if row.minute in kept.minutes:
                    kept.minutes[row.minute].add(row)
            kept.settled_until = settled
        for old in [m for m in kept.minutes if m < first]:
            del kept.minutes[old]
        recent = {m: Minute() for m in range(max(settled, first), current + 1)}
        for row in store.attempt_minutes(organizations, settled * MINUTE, now + 1):
            if row.minute in recent:
                recent[row.minute].add(row)
        merged = {m: kept.minutes.get(m) or Minute() for m in range(first, settled)}
        merged.update(recent)
        return list(range(first, current + 1)), merged


@dataclass(frozen=True)
class Activity:
    totals: dict[str, int]
    p95_ms: float | None
    svg: str
    busiest: int


def activity(
    cache: MinuteCache, store: Backend, organizations: Sequence[str] | None, now: float
) -> Activity:
    minutes, by_minute = cache.series(store, organizations, now)
    totals: Counter[str] = Counter()
    durations: Counter[int] = Counter()
    for m in minutes:
        totals.update(by_minute[m].counts)
        durations.update(by_minute[m].durations)
    busiest = max((sum(by_minute[m].counts.values()) for m in minutes), default=0)
    return Activity(
        {o: totals.get(o, 0) for o in OUTCOMES},
        percentile(durations, 0.95),
        chart(minutes, by_minute, busiest),
        busiest,
    )


WIDTH, HEIGHT, PAD = 720, 200, 30


def chart(minutes: list[int], by_minute: dict[int, Minute], busiest: int) -> str:
    """Stacked columns, one per 10 minutes (144 across), by outcome."""
    step = 10
    groups = [minutes[i : i + step] for i in range(0, len(minutes), step)]
    peak = max(
        (sum(sum(by_minute[m].counts.values()) for m in group) for group in groups), default=0
    )
    scale = (HEIGHT - 2 * PAD) / peak if peak else 0.0
    width = (WIDTH - 2 * PAD) / max(len(groups), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" aria-labelledby="chart-title" class="chart">',
        '<title id="chart-title">Attempts per 10 minutes by outcome, last 24 hours '
        f"(highest column: {peak})</title>",
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#888"/>',
    ]
    for index, group in enumerate(groups):
        y = float(HEIGHT - PAD)
        x = PAD + index * width
        for outcome in OUTCOMES:
            n = sum(by_minute[m].counts.get(outcome, 0) for m in group)
            if not n:
                continue
            h = max(n * scale, 1.0)
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[outcome]}"><title>'
                f"{escape(outcome)}: {n}</title></rect>"
            )
    parts.append(
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">24 h ago</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">now</text>'
        f'<text x="{PAD}" y="{PAD - 8}" font-size="11">{peak}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 or math.isclose(value, 0) else f"{value:.1f} ms"
