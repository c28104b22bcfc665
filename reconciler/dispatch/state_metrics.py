"""The state's size and retention, as /metrics gauges for the operator.

Measured by the retention task after each of its turns (reconciler/dispatch/
retention.py), on its own connection: a scrape costs no query, and the figures are
at most one retention interval old. Shown only to a reader with every
organization: they are the whole installation's.
"""

from __future__ import annotations

from reconciler.store.retention import StateSize


def state_lines(size: StateSize, now: float) -> list[str]:
    lines = [
        "# HELP reconciler_state_rows Rows per table of the state (PostgreSQL: the "
        "planner's estimate above a million).",
        "# TYPE reconciler_state_rows gauge",
    ]
    lines += [f'reconciler_state_rows{{table="{t.name}"}} {t.rows}' for t in size.tables]
    measured = [t for t in size.tables if t.bytes is not None]
    if measured:
        lines += [
            "# HELP reconciler_state_table_bytes Bytes per table of the state, its indexes "
            "included (PostgreSQL; SQLite: see the file gauges).",
            "# TYPE reconciler_state_table_bytes gauge",
        ]
        lines += [f'reconciler_state_table_bytes{{table="{t.name}"}} {t.bytes}' for t in measured]
    if size.files:
        lines += [
            "# HELP reconciler_state_file_bytes Bytes of the SQLite state's files on disk.",
            "# TYPE reconciler_state_file_bytes gauge",
        ]
        lines += [
            f'reconciler_state_file_bytes{{file="{name}"}} {n}' for name, n in size.files.items()
        ]
    oldest = 0.0 if size.oldest_finished is None else max(0.0, now - size.oldest_finished)
    lines += [
        "# HELP reconciler_state_oldest_finished_seconds Age of the longest-finished "
        "delivery still kept (near the retention age when retention keeps up).",
        "# TYPE reconciler_state_oldest_finished_seconds gauge",
        f"reconciler_state_oldest_finished_seconds {oldest:.3f}",
    ]
    run = size.last_run
    if run is not None:
        r = run.removed
        lines += [
            "# HELP reconciler_retention_last_run_timestamp_seconds When the last "
            "retention run (by any dispatcher of this state) finished.",
            "# TYPE reconciler_retention_last_run_timestamp_seconds gauge",
            f"reconciler_retention_last_run_timestamp_seconds {run.finished_at:.3f}",
            "# HELP reconciler_retention_last_run_duration_seconds How long it took.",
            "# TYPE reconciler_retention_last_run_duration_seconds gauge",
            "reconciler_retention_last_run_duration_seconds "
            f"{run.finished_at - run.started_at:.3f}",
            "# HELP reconciler_retention_last_run_removed What the last retention run "
            "removed, by kind of record.",
            "# TYPE reconciler_retention_last_run_removed gauge",
        ]
        for kind, n in (
            ("deliveries", r.deliveries),
            ("attempts", r.attempts),
            ("events", r.events),
            ("breakers", r.breakers),
            ("rate_slots", r.rate_slots),
            ("bytes_released", r.bytes_released),
        ):
            lines.append(f'reconciler_retention_last_run_removed{{kind="{kind}"}} {n}')
    return lines
