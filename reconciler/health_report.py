"""Endpoint health as text: one table row per webhook, readable at 100 columns.

A webhook that is paused, or that failed, gets a line under its row saying why
(the reason masked, cut to the width).
"""

from __future__ import annotations

import math

from reconciler.health import HealthReport, WebhookHealth
from reconciler.render import utc

WIDTH = 100
_HEADERS = (
    "WEBHOOK",
    "STATE",
    "BREAKER",
    "FLIGHT",
    "DUE",
    "LATER",
    "OLDEST",
    "OK",
    "P95",
    "LAST OK",
)
_RIGHT = {"FLIGHT", "DUE", "LATER", "OLDEST", "OK", "P95"}


def report_text(report: HealthReport) -> str:
    window = age(report.window)
    lines = [f"as of {utc(report.now)}; OK (success rate) and P95 over the last {window}"]
    if not report.webhooks:
        lines.append("No webhooks.")
        return "\n".join(lines)
    rows = [_cells(w, report.now) for w in report.webhooks]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADERS)]
    lines.append(_line(_HEADERS, widths))
    for webhook, cells in zip(report.webhooks, rows, strict=True):
        lines.append(_line(cells, widths))
        lines += [_cut("    " + note) for note in _notes(webhook, report.now)]
    return "\n".join(lines)


def _cells(w: WebhookHealth, now: float) -> tuple[str, ...]:
    return (
        f"{w.organization}/{w.webhook}",
        w.state,
        w.breaker,
        str(w.in_flight),
        str(w.pending_due),
        str(w.pending_later),
        age(w.oldest_due_age) if w.oldest_due_at is not None else "-",
        percent(w.success_rate),
        duration(w.p95_ms),
        ago(w.last_success_at, now),
    )


def _notes(w: WebhookHealth, now: float) -> list[str]:
    notes = []
    if w.paused_reason is not None:
        notes.append(f"paused: {w.paused_reason}")
    if w.last_failure_at is not None:
        when = f"{ago(w.last_failure_at, now)} ({utc(w.last_failure_at)})"
        notes.append(f"last failure {when}: {w.last_failure_reason}")
    return notes


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    out = [
        cell.rjust(width) if header in _RIGHT else cell.ljust(width)
        for header, cell, width in zip(_HEADERS, cells, widths, strict=True)
    ]
    return "  ".join(out).rstrip()


def _cut(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def age(seconds: float) -> str:
    """A span in one unit, rounded down: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ago(moment: float | None, now: float) -> str:
    return "-" if moment is None else f"{age(now - moment)} ago"


def percent(rate: float | None) -> str:
    """Rounded down, so that a rate short of 100% never reads as 100%."""
    if rate is None:
        return "-"
    if rate >= 1:
        return "100%"
    return f"{math.floor(rate * 1000) / 10:.1f}%"


def duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"
