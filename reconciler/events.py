"""An event as it arrives, checked before anything is stored: the one set of rules
for the HTTP intake, `fire` and `render`, and the event as templates see it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from pydantic_core import ErrorDetails

from reconciler.errors import EventInvalid
from reconciler.ids import new_event_id
from reconciler.model import NAME_PATTERN, Event
from reconciler.render import EventData, format_time
from reconciler.store.queue import EventRecord

EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 500  # events per POST /v1/events/batch
MAX_BATCH_BYTES = 1024 * 1024
_ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d")  # how every ISO 8601 date-time in text begins
_EXAMPLE_TIME = "2026-11-29T21:22:42Z"
# Documents what _unicode() refuses (its own message is clearer than a pattern's).
_NO_NUL: dict[str, JsonValue] = {"pattern": "^[^\\x00]*$"}


class EventIn(BaseModel):
    """A rule violation or a Reserved Instance surplus or deficit, as sent to intake."""

    model_config = ConfigDict(extra="forbid")

    type: Event = Field(description="The event type.")
    organization: str = Field(pattern=NAME_PATTERN, description="Whose webhooks fire.")
    name: Annotated[str, Field(max_length=1000)] = Field(
        description="The rule or event name: {{name}}.", json_schema_extra=_NO_NUL
    )
    description: Annotated[str, Field(max_length=10_000)] = Field(
        default="",
        description="Details about the event or rule: {{description}}.",
        json_schema_extra=_NO_NUL,
    )
    time: datetime | None = Field(
        default=None, description="When it was detected (ISO 8601); default: when received."
    )
    id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        description="Your id for the event; the same id twice is queued once.",
    )

    @field_validator("time", mode="before")
    @classmethod
    def _iso_8601_text(cls, value: object) -> object:
        # Left alone, pydantic would also take a number, or digits in text, as Unix
        # time (seconds or milliseconds, by size): not what the field says it is.
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str) or not _ISO_DATE.match(value):
            raise ValueError(f"time must be an ISO 8601 datetime, e.g. {_EXAMPLE_TIME}")
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        if value.tzinfo is None:
            raise ValueError(f"time needs a time zone, e.g. {_EXAMPLE_TIME}")
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
            id=self.id or new_event_id(),
            type=self.type.value,
            organization=self.organization,
            name=self.name,
            description=self.description,
            time=format_time(moment),
        )


class BatchIn(BaseModel):
    """Several events at once: stored together or not at all."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(
        min_length=1,
        max_length=MAX_BATCH_EVENTS,
        description=f"1 to {MAX_BATCH_EVENTS} events, each as POST /v1/events takes it.",
    )


def validation_message(error: ErrorDetails) -> str:
    """One of pydantic's errors as a sentence: a validator's ValueError without the
    `Value error, ` pydantic puts before it."""
    return error["msg"].removeprefix("Value error, ")


def checked_event(data: dict[str, Any], now: datetime | None = None) -> EventRecord:
    """An event as intake would accept it (None values left out), or EventInvalid
    with one line: the first field refused and why."""
    try:
        incoming = EventIn.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise EventInvalid(f"{field}: {validation_message(error)}") from None
    return incoming.record(now)


def event_data(record: EventRecord) -> EventData:
    """A stored event as templates see it ({{event}}, {{time}}, ...)."""
    return EventData(
        event=record.type,
        organization=record.organization,
        name=record.name,
        description=record.description,
        time=datetime.fromisoformat(record.time.replace("Z", "+00:00")),
        id=record.id,
    )
