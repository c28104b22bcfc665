"""Turn a definition and an event into the exact HTTP request to send.

Placeholders are substituted into the *parsed* body's string values, never into
JSON text, so any value (quotes, backslashes, newlines) still gives valid JSON.
In the URL and query they are percent-encoded. `${env:NAME}` references are
resolved from the given environment; with env=None they are left as written,
which is how a request is previewed without revealing secrets.
"""

from __future__ import annotations

import re
import uuid
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


def utc(seconds: float) -> str:
    """A moment given in seconds since the epoch, as format_time writes it."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_time(moment: datetime) -> str:
    """The one text of an event's time, `{{time}}` wherever it is rendered (sent,
    rendered, previewed) and the time intake stores: ISO 8601 in UTC, whole
    seconds (a fraction is dropped, not rounded), with a Z, e.g.
    2026-11-29T21:22:42Z. A naive time is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat() + "Z"


def render(spec: WebhookSpec, event: EventData, env: Mapping[str, str] | None) -> RenderedRequest:
    return Renderer(spec).render(event, env)


def _url_component(value: str) -> str:
    # Dots too, so that a value of ".." cannot climb out of its path segment.
    return quote(value, safe="").replace(".", "%2E")


class Renderer:
    """One definition's request, prepared once for every event it will render:
    the URL when it has no reference, the headers that have none, and the body as
    JSON text with a slot for each string that holds a placeholder. Only the slots,
    the references and the parts with a placeholder are worked out per event; the
    result is what substituting into the whole parsed body and serialising it gives
    (tests/unit/test_render.py holds the two alike)."""

    def __init__(self, spec: WebhookSpec) -> None:
        self.spec = spec
        self._url_fixed = not templates.has_references(spec.url)
        # (name, value, whether it holds a reference), in the definition's order
        self._headers = [
            (name, value, templates.has_references(value)) for name, value in spec.headers.items()
        ]
        self._body = None if spec.body is None else _BodyTemplate(spec.body)
        # The variables its URL, query and headers refer to (the body takes none).
        texts = [spec.url, *spec.query.values(), *spec.headers.values()]
        self.references = tuple(sorted({n for text in texts for n in templates.env_names(text)}))
        self._json_type = not any(name.lower() == "content-type" for name in spec.headers)

    def render(self, event: EventData, env: Mapping[str, str] | None) -> RenderedRequest:
        try:
            return self._render(event, env)
        except UnicodeEncodeError:
            raise RenderError("an event value is not valid Unicode (a lone surrogate)") from None
        except ValueError:
            # Parsers quote what they choke on, and that may be a secret's value.
            raise RenderError("the request cannot be built from the resolved values") from None

    def _render(self, event: EventData, env: Mapping[str, str] | None) -> RenderedRequest:
        spec = self.spec
        values = event.placeholder_values(spec.name)
        resolve = _resolver(env)

        url = spec.url
        if not self._url_fixed:
            url = templates.substitute(url, lambda n: _url_component(values[n]), resolve)
            # A URL with nothing substituted is the definition's own, which its
            # model checked already.
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
        for name, value, referring in self._headers:
            resolved = templates.substitute(value, None, resolve) if referring else value
            if "\r" in resolved or "\n" in resolved:
                raise RenderError(f"header {name}: its resolved value holds a line break")
            headers[name] = resolved

        body: bytes | None = None
        if self._body is not None:
            body = self._body.render(values).encode("utf-8")
            if self._json_type:
                headers["Content-Type"] = "application/json"
        return RenderedRequest(spec.method.value, url, headers, body)


class _BodyTemplate:
    """A body as its JSON text in pieces: the fixed text, and between the pieces
    the strings that hold placeholders, substituted and written per event."""

    def __init__(self, body: Any) -> None:
        marker = uuid.uuid4().hex
        while marker in jsonbody.dumps(body):  # never, in practice: it is random
            marker = uuid.uuid4().hex
        self._slots: list[str] = []

        def mark(value: Any) -> Any:
            if isinstance(value, str):
                if not templates.has_placeholders(value):
                    return value
                self._slots.append(value)
                return f"{marker}{len(self._slots) - 1}{marker}"
            if isinstance(value, dict):
                return {key: mark(item) for key, item in value.items()}
            if isinstance(value, list):
                return [mark(item) for item in value]
            return value

        pieces = re.split(f'"{marker}(\\d+){marker}"', jsonbody.dumps(mark(body)))
        self._first = pieces[0]
        # (the slot's string, the fixed text after it), in the order of the text
        self._rest = [
            (self._slots[int(pieces[i])], pieces[i + 1]) for i in range(1, len(pieces), 2)
        ]

    def render(self, values: Mapping[str, str]) -> str:
        if not self._rest:
            return self._first
        parts = [self._first]
        for text, after in self._rest:
            parts.append(jsonbody.dumps(templates.substitute(text, values.__getitem__, None)))
            parts.append(after)
        return "".join(parts)


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
