"""How deliveries are shown, on the API and on the command line."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from reconciler.render import utc
from reconciler.store.queue import AttemptRecord, DeliveryRecord, Status

# What the API answers, as its OpenAPI document declares it. The routes return the
# records' own JSON (below); these models only describe it.


class DeliveryOut(BaseModel):
    id: str = Field(description="The delivery's id, sent as webhook-id.")
    event_id: str = Field(
        description="Its event's id, which names the event within `organization`."
    )
    event_type: str
    organization: str = Field(description="The organization of the event and of the webhook.")
    webhook: str
    status: Status
    attempts: int = Field(description="Attempts made so far.")
    due_at: float | None = Field(description="When it is next tried (Unix time), if pending.")
    created_at: float
    updated_at: float
    last_status: int | None = Field(description="The HTTP status of the last attempt, if any.")
    last_error: str | None


class SentRequestOut(BaseModel):
    method: str
    url: str = Field(
        description="As sent, with every resolved `${env:NAME}` value shown as its reference "
        "and credentials (user info, secret query values, token paths) masked."
    )
    headers: dict[str, str] = Field(
        description="As sent (webhook-id, webhook-timestamp, webhook-signature included), "
        "references for resolved values, Authorization and other credential headers masked."
    )
    body: str | None = Field(description="The body as sent (UTF-8), up to 16,384 characters.")


class AttemptOut(BaseModel):
    number: int
    started_at: float
    duration_ms: float
    outcome: str = Field(description="delivered, retry, failed, cancelled or deferred.")
    status: int | None = Field(description="The receiver's HTTP status; none without a response.")
    request: SentRequestOut | None = Field(
        description="The request this attempt sent; none when nothing was sent (or the "
        "attempt was made before requests were kept)."
    )
    response_headers: dict[str, str]
    response_excerpt: str
    error: str | None


class DeliveryWithAttemptsOut(DeliveryOut):
    attempts_log: list[AttemptOut]


class DeliveryListOut(BaseModel):
    deliveries: list[DeliveryOut]


class ReplayOut(BaseModel):
    replayed: list[str] = Field(description="The ids of the deliveries queued again.")


def delivery_json(record: DeliveryRecord, attempts: list[AttemptRecord]) -> dict[str, Any]:
    return {**record.as_json(), "attempts_log": [a.as_json() for a in attempts]}


def replay_refusal(record: DeliveryRecord, webhook_live: bool) -> str:
    """Why `record` was not queued again: not finished yet, or its webhook was deleted
    (its deliveries stay, as history for auditors, until retention removes them)."""
    if not webhook_live:
        return (
            f"delivery {record.id} is of the webhook {record.organization}/{record.webhook}, "
            "which was deleted: its delivery history is kept, but it is never sent again"
        )
    if record.status == "held":
        return retry_refusal(record)
    return f"delivery {record.id} is {record.status}: not replayable yet"


class RetryOut(BaseModel):
    retried: list[str] = Field(description="The ids of the deliveries made due now.")


def retry_refusal(record: DeliveryRecord) -> str:
    """Why `record` was not made due now: retry is for a pending delivery waiting
    out a backoff; a finished one is replayed, a held one waits for its webhook."""
    if record.status == "held":
        return (
            f"delivery {record.id} is held while its webhook is paused: "
            f"`reconciler webhooks resume {record.organization}/{record.webhook}` sends it"
        )
    if record.status == "in_flight":
        return f"delivery {record.id} is being sent now: nothing to retry"
    return (
        f"delivery {record.id} is {record.status}: retry makes a pending delivery due now; "
        f"`reconciler deliveries replay {record.id}` sends a finished one again"
    )


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
        f"event     {record.event_key}  {record.event_type}",
        f"status    {record.status}" + (f"  due {utc(record.due_at)}" if record.due_at else ""),
        f"created   {utc(record.created_at)}",
    ]
    if record.last_error:
        lines.append(f"error     {record.last_error}")
    # `attempts` counts the requests sent, as `deliveries list` shows it; the log also
    # holds the tries where nothing was sent (cancelled: the webhook was disabled...).
    unsent = len(attempts) - record.attempts
    more = f" sent, {unsent} more recorded without sending" if unsent > 0 else ""
    lines.append(f"attempts  {record.attempts}{more}")
    for attempt in attempts:
        status = f"HTTP {attempt.status}" if attempt.status is not None else "no response"
        if attempt.outcome == "cancelled":
            status = "not sent"
        lines.append(
            f"  #{attempt.number}  {utc(attempt.started_at)}  {attempt.outcome:<9}  {status}  "
            f"{attempt.duration_ms:.0f} ms" + (f"  {attempt.error}" if attempt.error else "")
        )
        if attempt.request is not None:
            sent = attempt.request
            lines.append(f"       request:  {sent.method} {sent.url}")
            for name, value in sent.headers.items():
                lines.append(f"                 {name}: {value}")
            if sent.body is not None:
                lines.append(f"                 body: {sent.body.replace(chr(10), ' ')[:200]}")
        if attempt.response_excerpt:
            excerpt = attempt.response_excerpt.replace("\n", " ")
            lines.append(f"       response: {excerpt[:200]}")
    return "\n".join(lines)
