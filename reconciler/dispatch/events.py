"""An event as it arrives, checked before anything is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reconciler.model import NAME_PATTERN, Event
from reconciler.render import format_time
from reconciler.store.queue import EventRecord

EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_EVENT_BYTES = 64 * 1024


class EventIn(BaseModel):
    """A rule violation or a Reserved Instance surplus or deficit, as sent to intake."""

    model_config = ConfigDict(extra="forbid")

    type: Event = Field(description="The event type.")
    organization: str = Field(pattern=NAME_PATTERN, description="Whose webhooks fire.")
    name: Annotated[str, Field(max_length=1000)] = Field(
        description="The rule or event name: {{name}}."
    )
    description: Annotated[str, Field(max_length=10_000)] = Field(
        default="", description="Details about the event or rule: {{description}}."
    )
    time: datetime | None = Field(
        default=None, description="When it was detected (ISO 8601); default: when received."
    )
    id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        description="Your id for the event; the same id twice is queued once.",
    )

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        if value.tzinfo is None:
            raise ValueError("time needs a time zone, e.g. 2026-11-29T21:22:42Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("time is out of range once in UTC") from None

    @field_validator("name", "description")
    @classmethod
    def _unicode(cls, value: str) -> str:
        # A lone surrogate (JSON's \\ud800) cannot be sent on, and NUL cannot be
        # stored everywhere; refuse both at the door.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    def record(self, now: datetime | None = None) -> EventRecord:
        moment = self.time or now or datetime.now(UTC)
        return EventRecord(
            id=self.id or "evt_" + uuid.uuid4().hex,
            type=self.type.value,
            organization=self.organization,
            name=self.name,
            description=self.description,
            time=format_time(moment),
        )
