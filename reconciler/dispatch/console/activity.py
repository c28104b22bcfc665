"""The activity chart: attempts per minute by outcome over the last 24 hours, and
their p95 duration, drawn on the server as SVG.

A minute that has ended does not change (an attempt is recorded once, with the
time it started), so each organization's closed minutes are counted once and kept
in this process (`MinuteCache`); a request counts only the minutes that closed
since, and the last SETTLE_MINUTES, from the attempts' time index. The day's p95 is
read from the kept minutes' duration histograms (retention's logarithmic buckets:
the upper bound of the bucket the nearest rank falls in, within 19%).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from reconciler.store.backend import Backend
from reconciler.store.console import AttemptPoint
from reconciler.store.retention import bucket_of, percentile

MINUTE = 60.0
# An attempt is recorded when it ends, with the time it started: a minute is kept
# once it ended longer ago than any attempt lasts (a webhook's timeout is at most
# a few minutes); the newest minutes are counted afresh on every request.
SETTLE_MINUTES = 5
WINDOW_MINUTES = 24 * 60
OUTCOMES = ("delivered", "retry", "failed")
COLOURS = {"delivered": "#1a7f37", "retry": "#9a6700", "failed": "#cf222e"}


@dataclass
class Minute:
    counts: Counter[str] = field(default_factory=Counter)
    durations: Counter[int] = field(default_factory=Counter)

    def add(self, point: AttemptPoint) -> None:
        if point.outcome in OUTCOMES:
            self.counts[point.outcome] += 1
            self.durations[bucket_of(point.duration_ms)] += 1


@dataclass
class _Org:
    minutes: dict[int, Minute] = field(default_factory=dict)
    closed_until: int | None = None  # minutes before this one are all counted


class MinuteCache:
    """Closed minutes per organization, as counted once (this process's memory:
    24 h of minutes is at most 1,440 small entries per organization)."""

    def __init__(self) -> None:
        self._orgs: dict[str, _Org] = {}

    def series(
        self, store: Backend, organizations: Sequence[str], now: float
    ) -> tuple[list[int], dict[int, Minute]]:
        current = int(now // MINUTE)
        first = current - WINDOW_MINUTES + 1
        settled = current - SETTLE_MINUTES  # minutes before this one are kept
        behind = {
            o: max(self._org(o).closed_until or first, first)
            for o in organizations
            if (self._org(o).closed_until or first) < settled
        }
        if behind:
            start = min(behind.values())
            points = store.attempt_points(list(behind), start * MINUTE, settled * MINUTE)
            for o, origin in behind.items():
                kept = self._org(o)
                for m in range(origin, settled):
                    kept.minutes[m] = Minute()
                kept.closed_until = settled
                for old in [m for m in kept.minutes if m < first]:
                    del kept.minutes[old]
            for point in points:
                m = int(point.started_at // MINUTE)
                if m >= behind[point.organization]:
                    self._orgs[point.organization].minutes[m].add(point)
        recent = {m: Minute() for m in range(settled, current + 1)}
        for point in store.attempt_points(list(organizations), settled * MINUTE, now + 1):
            m = int(point.started_at // MINUTE)
            if m in recent:
                recent[m].add(point)
        merged: dict[int, Minute] = {}
        for m in range(first, settled):
            total = Minute()
            for o in organizations:
                got = self._orgs[o].minutes.get(m)
                if got is not None:
                    total.counts.update(got.counts)
                    total.durations.update(got.durations)
            merged[m] = total
        merged.update(recent)
        return list(range(first, current + 1)), merged

    def _org(self, organization: str) -> _Org:
        return self._orgs.setdefault(organization, _Org())


@dataclass(frozen=True)
class Activity:
    totals: dict[str, int]
    p95_ms: float | None
    svg: str
    busiest: int


def activity(
    cache: MinuteCache, store: Backend, organizations: Sequence[str], now: float
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
