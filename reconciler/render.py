"""Turn a definition and an event into the exact HTTP request to send.

Placeholders are substituted into the *parsed* body's string values, never into
JSON text, so any value (quotes, backslashes, newlines) still gives valid JSON.
In the URL and query they are percent-encoded. `${env:NAME}` references are
resolved from the given environment; with env=None they are left as written,
which is how a request is previewed without revealing secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from reconciler import jsonbody, templates
from reconciler.errors import ReconcilerError
from reconciler.model import WebhookSpec, url_problem


class RenderError(ReconcilerError):
    """The request cannot be built; the message never holds a secret value."""


@dataclass(frozen=True)
class EventData:
    """What happened: the values placeholders take."""

    event: str
    organization: str
    name: str
    description: str
    time: datetime
    id: str

    def placeholder_values(self, webhook: str) -> dict[str, str]:
        return {
            "time": format_time(self.time),
            "name": self.name,
            "description": self.description,
            "event": self.event,
            "organization": self.organization,
            "event_id": self.id,
            "webhook": webhook,
        }


@dataclass(frozen=True)
class RenderedRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, e.g. 2026-11-29T21:22:42Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def render(spec: WebhookSpec, event: EventData, env: Mapping[str, str] | None) -> RenderedRequest:
    try:
        return _render(spec, event, env)
    except UnicodeEncodeError:
        raise RenderError("an event value is not valid Unicode (a lone surrogate)") from None


def _url_component(value: str) -> str:
    # Dots too, so that a value of ".." cannot climb out of its path segment.
    return quote(value, safe="").replace(".", "%2E")


def _render(spec: WebhookSpec, event: EventData, env: Mapping[str, str] | None) -> RenderedRequest:
    values = event.placeholder_values(spec.name)
    resolve = _resolver(env)

    url = templates.substitute(spec.url, lambda n: _url_component(values[n]), resolve)
    # A URL with nothing substituted is the definition's own, which its model
    # checked already.
    if env is not None and url != spec.url:
        problem = url_problem(url)
        if problem:
            raise RenderError(f"the resolved url is not usable: it {problem}")
    if spec.query:
        pairs = [
            (key, templates.substitute(value, values.__getitem__, resolve))
            for key, value in spec.query.items()
        ]
        url = _with_query(url, urlencode(pairs, quote_via=quote))

    headers: dict[str, str] = {}
    for name, value in spec.headers.items():
        resolved = templates.substitute(value, None, resolve)
        if "\r" in resolved or "\n" in resolved:
            raise RenderError(f"header {name}: its resolved value holds a line break")
        headers[name] = resolved

    body: bytes | None = None
    if spec.body is not None:
        body = jsonbody.dumps(_substitute_values(spec.body, values)).encode("utf-8")
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    return RenderedRequest(spec.method.value, url, headers, body)


def _resolver(env: Mapping[str, str] | None) -> Callable[[str], str] | None:
    if env is None:
        return None

    def resolve(name: str) -> str:
        try:
            return env[name]
        except KeyError:
            raise RenderError(f"environment variable {name} is not set") from None

    return resolve


def _with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, parts.fragment))


def _substitute_values(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return templates.substitute(value, values.__getitem__, None)
    if isinstance(value, dict):
        return {key: _substitute_values(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute_values(item, values) for item in value]
    return value
