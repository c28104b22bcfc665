"""How deliveries are shown, on the API and on the command line."""

from __future__ import annotations

from typing import Any

from reconciler.dispatch.retry import utc
from reconciler.store.queue import AttemptRecord, DeliveryRecord


def delivery_json(record: DeliveryRecord, attempts: list[AttemptRecord]) -> dict[str, Any]:
    return {**record.as_json(), "attempts_log": [a.as_json() for a in attempts]}


def delivery_line(record: DeliveryRecord) -> str:
    due = f" due {utc(record.due_at)}" if record.status == "pending" and record.due_at else ""
    status = f" HTTP {record.last_status}" if record.last_status else ""
    error = ""
    if record.last_error and record.last_error != f"HTTP {record.last_status}":
        error = f"  {record.last_error}"
    return (
        f"{record.id}  {record.status:<9}  {record.organization}/{record.webhook}  "
        f"{record.event_type}  attempts {record.attempts}{status}{due}{error}"
    )


def delivery_text(record: DeliveryRecord, attempts: list[AttemptRecord]) -> str:
    lines = [
        f"delivery  {record.id}  (sent as webhook-id)",
        f"webhook   {record.organization}/{record.webhook}",
        f"event     {record.event_id}  {record.event_type}",
        f"status    {record.status}" + (f"  due {utc(record.due_at)}" if record.due_at else ""),
        f"created   {utc(record.created_at)}",
    ]
    if record.last_error:
        lines.append(f"error     {record.last_error}")
    lines.append(f"attempts  {len(attempts)}")
    for attempt in attempts:
        status = f"HTTP {attempt.status}" if attempt.status is not None else "no response"
        lines.append(
            f"  #{attempt.number}  {utc(attempt.started_at)}  {attempt.outcome:<9}  {status}  "
            f"{attempt.duration_ms:.0f} ms" + (f"  {attempt.error}" if attempt.error else "")
        )
        if attempt.response_excerpt:
            excerpt = attempt.response_excerpt.replace("\n", " ")
            lines.append(f"       response: {excerpt[:200]}")
    return "\n".join(lines)
