"""The state's size and retention's last runs, as text (`reconciler retention status`)."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.store.retention import RetentionRun, StateSize


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


def _when(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def run_line(run: RetentionRun, now: float) -> str:
    r = run.removed
    took = run.finished_at - run.started_at
    return (
        f"{_when(run.finished_at)} ({human_age(max(0.0, now - run.finished_at))} ago, "
        f"took {took:.1f}s, by {run.owner}): removed {r.deliveries} deliveries, "
        f"{r.attempts} attempts, {r.events} events, {r.breakers} breakers, "
        f"{r.rate_slots} rate-limit rows; {human_bytes(r.bytes_released)} given back"
    )


def status_text(url: str, size: StateSize, runs: list[RetentionRun], now: float) -> str:
    lines = [f"state {url}: {human_bytes(size.total_bytes)}"]
    if size.files:
        lines[0] += " (" + ", ".join(f"{k} {human_bytes(v)}" for k, v in size.files.items()) + ")"
    lines.append("")
    lines.append(f"{'TABLE':<18} {'ROWS':>12} {'BYTES':>10}")
    for table in size.tables:
        shown = "-" if table.bytes is None else human_bytes(table.bytes)
        lines.append(f"{table.name:<18} {table.rows:>12,} {shown:>10}")
    lines.append("")
    if size.bytes_per_delivery is not None:
        lines.append(f"bytes per delivery kept: {size.bytes_per_delivery:,.0f}")
    if size.oldest_finished is None:
        lines.append("oldest finished delivery: none kept")
    else:
        age = human_age(max(0.0, now - size.oldest_finished))
        lines.append(f"oldest finished delivery: finished {age} ago")
    if runs:
        lines.append("last retention runs:")
        lines += [f"  {run_line(run, now)}" for run in runs]
    else:
        lines.append("retention has not run yet (`reconciler serve` runs it every minute)")
    lines += [f"note: {note}" for note in size.notes]
    return "\n".join(lines)
