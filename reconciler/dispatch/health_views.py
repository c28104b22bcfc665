"""How endpoint health is shown on the API: GET /v1/webhooks/status.

The route returns the report's own JSON (reconciler/health.py); these models only
describe it for the OpenAPI document.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from reconciler.health import Breaker


class StatusFilters(BaseModel):
    """The query of GET /v1/webhooks/status: an unknown name is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    org: str | None = Field(
        default=None, description="One organization of the token's; default: all of them."
    )


class WebhookHealthOut(BaseModel):
    organization: str
    webhook: str
    state: str = Field(description="enabled, disabled or paused.")
    enabled: bool = Field(description="The definition's `enabled`.")
    paused_reason: str | None = Field(
        description="Why the dispatcher paused it (HTTP 410), masked; none when not paused."
    )
    breaker: Breaker = Field(
        description="Its circuit breaker: closed (sending), open (held back after repeated "
        "failures) or half-open (a probe goes through)."
    )
    in_flight: int = Field(description="Deliveries being sent now.")
    backlog: int = Field(description="Deliveries waiting: pending_due + pending_later.")
    pending_due: int = Field(description="Waiting, due now or earlier.")
    pending_later: int = Field(description="Waiting, due later (a retry's backoff, a rate limit).")
    oldest_due_at: str | None = Field(
        description="When the longest-waiting due delivery fell due (ISO 8601 UTC)."
    )
    oldest_due_age_seconds: float = Field(description="How long it has waited since (0: none).")
    attempts: int = Field(description="Attempts started within the window (cancellations aside).")
    success_rate: float | None = Field(
        description="The share of those attempts that delivered, 0 to 1; none without attempts."
    )
    p95_ms: float | None = Field(description="Their 95th-percentile duration (nearest rank).")
    last_success_at: str | None = Field(description="When it last delivered (ISO 8601 UTC).")
    last_failure_at: str | None = Field(
        description="When its latest failed attempt started (ISO 8601 UTC)."
    )
    last_failure_reason: str | None = Field(
        description="That attempt's error or HTTP status, URLs and tokens in it masked."
    )


class WebhookStatusOut(BaseModel):
    as_of: str = Field(description="The dispatcher's time of the answer (ISO 8601 UTC).")
    window_seconds: float = Field(description="The window of attempts, success_rate and p95_ms.")
    webhooks: list[WebhookHealthOut] = Field(
        description="Each live webhook of the organizations asked, by organization and name."
    )
