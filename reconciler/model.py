"""The webhook definition: one YAML file under webhooks.d/, as a pydantic model.

The model checks shape and types; `checks.py` adds the rules that need the whole
definition (placeholders, secrets, body on GET). `schemas/webhook.schema.json`
is generated from this model.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
)

from reconciler import jsonbody, templates
from reconciler.durations import DURATION_PATTERN, RATE_PATTERN, parse_duration

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Requests to one webhook in flight at once, across every dispatcher sharing the
# state: a receiver that stops answering holds this many of the dispatchers' slots
# for its timeout, never more, and the rest keep serving every other webhook.
DEFAULT_MAX_IN_FLIGHT = 10
MAX_IN_FLIGHT_LIMIT = 1000
NAME_RULE = (
    "1 to 63 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"
)


class Event(StrEnum):
    NEW_RULE_VIOLATION = "new_rule_violation"
    RESERVED_INSTANCE_SURPLUS = "reserved_instance_surplus"
    RESERVED_INSTANCE_DEFICIT = "reserved_instance_deficit"


class Method(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


METHODS_WITH_BODY = frozenset({Method.POST, Method.PUT, Method.PATCH})

Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        description="A duration such as 500ms, 15s, 5m or 2h",
        examples=["15s"],
    ),
]


def _allow_literal_path(path: str) -> str:
    problem = allow_literal_problem(path)
    if problem:
        raise ValueError(problem)
    return path


AllowLiteralPath = Annotated[StrictStr, AfterValidator(_allow_literal_path)]


class RetryPolicy(BaseModel):
    """How a failed delivery is retried; the first attempt is always at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: list[Duration] = Field(
        max_length=20,
        description="Delays between attempts, in order; [] means no retry. "
        "Default: 5s, 5m, 30m, 2h, 5h, 10h, 10h.",
    )
    jitter: float = Field(
        default=0.2, ge=0, le=1, description="Each delay varies randomly by this share."
    )


class WebhookSpec(BaseModel):
    """One outgoing webhook: which event fires it and the request it sends."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="reconciler webhook definition",
        use_enum_values=False,
    )

    name: StrictStr = Field(
        pattern=NAME_PATTERN,
        description=f"Unique within its organization. {NAME_RULE}.",
        examples=["slack-new-violations"],
    )
    organization: StrictStr | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description=f"Defaults to the first folder under webhooks.d/, else 'default'. {NAME_RULE}.",
    )
    event: Event = Field(description="The event type that fires this webhook.")
    method: Method = Field(description="The request method; POST sends information.")
    url: StrictStr = Field(
        description="Absolute http(s) URL (the endpoint). May use ${env:NAME} for secrets "
        "and {{placeholders}}, which are percent-encoded.",
        examples=["${env:ACME_SLACK_URL}"],
    )
    headers: dict[str, StrictStr] = Field(
        default_factory=dict,
        description="Request headers, any number of key/value pairs. Values may use ${env:NAME}.",
        examples=[{"Content-Type": "application/json"}],
    )
    body: Any = Field(
        default=None,
        description="POST, PUT and PATCH only. A YAML value, or JSON text (strict, or "
        "relaxed with unquoted keys and single quotes). {{placeholders}} are substituted "
        "into its string values. Sent as strict JSON.",
    )
    query: Annotated[
        dict[str, StrictStr],
        WithJsonSchema(
            {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
        ),
    ] = Field(
        default_factory=dict,
        description="Query parameters, the way GET and DELETE carry data. Values may use "
        "{{placeholders}} and ${env:NAME}.",
    )
    description: StrictStr | None = Field(default=None, description="Free text, for humans.")
    enabled: StrictBool = Field(
        default=True, description="A disabled webhook is kept but never fires."
    )
    protect: StrictBool = Field(
        default=False,
        description="A protected webhook is never deleted; set false and apply first.",
    )
    signing_secret: StrictStr | None = Field(
        default=None,
        description="A ${env:NAME} reference to a whsec_ secret: requests are signed "
        "with Standard Webhooks signatures. Several references, space-separated, "
        "during a rotation.",
    )
    timeout: Duration | None = Field(
        default=None, description="Total time one attempt may take (default 15s, at most 60s)."
    )
    retry: RetryPolicy | None = Field(default=None, description="The retry schedule.")
    rate_limit: Annotated[str, Field(pattern=RATE_PATTERN)] | None = Field(
        default=None,
        description="At most this many requests to this webhook, e.g. 1/s (Slack), 20/m.",
        examples=["1/s"],
    )
    max_in_flight: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_IN_FLIGHT_LIMIT,
        description="At most this many requests to this webhook at once, across every "
        f"dispatcher sharing the state (default {DEFAULT_MAX_IN_FLIGHT}, "
        f"1 to {MAX_IN_FLIGHT_LIMIT}). A receiver that stops answering holds no more "
        "of the dispatchers' slots than this.",
        examples=[3],
    )
    allow_literal: list[AllowLiteralPath] = Field(
        default_factory=list,
        max_length=50,
        description="Fields that may hold a literal value validate would refuse as a "
        "credential, each named by its path (url, headers.X-Trace-Token, query.access, "
        "body.token, description). A reviewed exception: the value is still masked "
        "wherever it is shown.",
        examples=[["headers.X-Trace-Token"]],
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, url: str) -> str:
        problem = url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("body", mode="before")
    @classmethod
    def _json_body(cls, body: Any) -> Any:
        if isinstance(body, str):
            return jsonbody.parse_json_text(body)
        if body is not None:
            jsonbody.check_json_value(body)
        return body

    @field_validator("query", mode="before")
    @classmethod
    def _query_scalars_as_text(cls, query: Any) -> Any:
        if not isinstance(query, dict):
            return query
        return {key: _query_text(value) for key, value in query.items()}

    @field_validator("allow_literal")
    @classmethod
    def _allow_literal_once(cls, paths: list[str]) -> list[str]:
        if len(set(paths)) != len(paths):
            raise ValueError("names a field twice")
        return paths

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, timeout: str | None) -> str | None:
        if timeout is not None and not 0 < parse_duration(timeout) <= 60:
            raise ValueError(f"{timeout} is out of range: more than 0s, at most 60s")
        return timeout

    def canonical(self) -> dict[str, Any]:
        """The definition as stored and compared: defaults left out, JSON types only."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def canonical_json(self) -> str:
        return canonical_json(self.canonical())

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization or "default", self.name)


def _query_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def canonical_json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_ALLOW_LITERAL_PATH = re.compile(r"url|description|(?:headers|query)\.[^\s]+|body(?:[.\[]\S*)?")


def allow_literal_problem(path: str) -> str | None:
    """Why `path` cannot name a field in allow_literal, or None."""
    if not _ALLOW_LITERAL_PATH.fullmatch(path):
        return (
            f"{path!r} is not a field path; write url, description, headers.<name>, "
            "query.<name> or body.<key>"
        )
    return None


_WHITESPACE = re.compile(r"\s")  # the characters str.isspace() accepts, every one


def url_problem(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL, or None when it is (or may be)."""
    if url.strip() != url or _WHITESPACE.search(url):
        return "must not contain spaces or line breaks"
    if "${" in url:
        bad = templates.malformed_env_ref(url)
        if bad is not None:
            return f"malformed secret reference {bad!r}; write ${{env:NAME}}"
    if templates.ENV_REF_FULL.match(url):
        return None  # starts with a secret reference: checked when resolved at send time
    probe = url
    if "{{" in url or "${" in url:  # else there is nothing to substitute
        probe = templates.substitute(url, lambda _name: "x", lambda _name: "x")
    try:
        parts = urlsplit(probe)
    except ValueError:  # its message quotes the host, which may come from a secret
        return "is not a valid URL (its host is malformed)"
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme or "none"
        return f"must be an absolute http:// or https:// URL (scheme: {shown})"
    if not parts.hostname:
        return "has no host"
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "has an invalid port"
    return None
