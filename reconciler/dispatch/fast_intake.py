"""POST /v1/events (and /v1/events/batch) without FastAPI's per-request machinery,
for events that pass.

Every event the dispatcher delivers arrives through this one route, and FastAPI's
routing, dependency solving, response-model validation and encoding cost more CPU
per event than storing it (docs/benchmarks.md, Dispatcher). This entry, ahead of
all of FastAPI, answers the common case itself: a JSON body (by its Content-Type)
within the size limit that is a valid event, with a bearer token that may send
it. It parses and validates exactly as the route does (the same `json.loads`, the
same `EventIn` or `BatchIn`, the same `Guard`), queues the events with the same
`Dispatcher.accept` or `accept_batch`, and answers the same 202 body.

Anything else (no or a bad token, a refused role or organization, a body that is
not a valid event, another content type, a body over its limit) is handed, with
the body as it came, to the FastAPI route, which gives every other answer: there
is one place for each refusal and its wording, and the OpenAPI document describes
it. A state that fails while the fast path stores the events is answered here as
the route would answer it (failures.py: 503 with Retry-After), and so is one that
has not answered within the dispatcher's intake deadline, token lookup included
(503 "outcome unknown").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from email.message import Message as MimeHeader
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.dispatch import failures
from reconciler.dispatch.auth import AuthError, Guard
from reconciler.dispatch.service import Dispatcher
from reconciler.events import BatchIn, EventIn
from reconciler.store.queue import IntakeResult

PATH = "/v1/events"
BATCH_PATH = "/v1/events/batch"


class FastIntake:
    """The entry of the whole app: answers valid events itself, hands the rest on.

    It runs ahead of FastAPI's middleware (the error, telemetry and body-limit
    layers cost CPU on every request and change nothing for an event that passes);
    a body without a Content-Length, or over its path's limit (`limits`: PATH and
    BATCH_PATH to their body limits), is not read here at all.
    """

    def __init__(
        self, app: ASGIApp, dispatcher: Dispatcher, guard: Guard, limits: dict[str, int]
    ) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.guard = guard
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = wanted_headers(scope["headers"])
        if not declared_within(headers, limit):
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        try:
            content = None if body is None else await self.answer(scope["path"], headers, body)
        except Exception as exc:  # the state failed (or a bug): the route's answer to it
            await failures.answer(exc, "POST", scope["path"])(scope, _nothing, send)
            return
        if content is None:

            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-length", str(len(content)).encode("ascii")),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def answer(self, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
        """The 202 body once the events are queued, or None for the route to answer.
        `path` is PATH or BATCH_PATH; `headers` as `wanted_headers` gives them.
        Raises failures.OutcomeUnknown past the dispatcher's intake deadline."""
        deadline = self.dispatcher.intake_deadline
        try:
            async with asyncio.timeout(deadline):
                return await self._answer(path, headers, body)
        except TimeoutError:
            raise failures.OutcomeUnknown(deadline) from None

    async def _answer(self, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
        if len(body) > self.limits[path]:
            return None
        if not _json_content(headers.get(b"content-type")):
            return None
        token = _bearer(headers.get(b"authorization"))
        if token is None:
            return None
        try:
            access = await self.guard.authenticate(token)
            data = json.loads(body)
            events = (
                [EventIn.model_validate(data)]
                if path == PATH
                else BatchIn.model_validate(data).events
            )
        except (AuthError, ValidationError, ValueError, RecursionError):
            return None
        if not access.may("send") or not all(access.sees(e.organization) for e in events):
            return None
        if path == PATH:
            result = (await self.dispatcher.accept(events[0])).as_json()
        else:
            result = batch_answer(await self.dispatcher.accept_batch(events))
        return json.dumps(
            result, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def batch_answer(results: list[IntakeResult]) -> dict[str, Any]:
    """The 202 body of POST /v1/events/batch, here and in the route."""
    return {"results": [result.as_json() for result in results]}


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


async def _read(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the request body, and the body (None if the client left)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


_WANTED = frozenset((b"content-length", b"content-type", b"authorization"))


def wanted_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The three headers the fast path reads (the first of each name)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        name = name.lower()
        if name in _WANTED and name not in found:
            found[name] = value
    return found


def declared_within(headers: dict[bytes, bytes], limit: int) -> bool:
    """Whether the request says how long its body is, and that is within `limit`: the
    fast path reads no other body."""
    length = headers.get(b"content-length")
    return length is not None and length.isdigit() and int(length) <= limit


def _json_content(value: bytes | None) -> bool:
    """As FastAPI (strict about content types) decides whether a body is JSON:
    application/json or application/*+json."""
    if value is None:
        return False
    if value == b"application/json":
        return True
    header = MimeHeader()
    header["content-type"] = value.decode("latin-1")
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _bearer(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, credentials = value.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials
