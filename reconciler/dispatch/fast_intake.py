"""POST /v1/events without FastAPI's per-request machinery, for events that pass.

Every event the dispatcher delivers arrives through this one route, and FastAPI's
routing, dependency solving, response-model validation and encoding cost more CPU
per event than storing it (docs/benchmarks.md, Dispatcher). This middleware
answers the common case itself: a JSON body (by its Content-Type) that is a valid
event, with a bearer token that may send it. It parses and validates exactly as the route does (the
same `json.loads`, the same `EventIn`, the same `Guard`), queues the event with the
same `Dispatcher.accept`, and answers the same 202 body.

Anything else (no or a bad token, a refused role or organization, a body that is
not a valid event, another content type) is handed, with the body as it came, to
the FastAPI route, which gives every other answer: there is one place for each
refusal and its wording, and the OpenAPI document describes it.
"""

from __future__ import annotations

import json
from email.message import Message as MimeHeader
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.dispatch.auth import AuthError, Guard
from reconciler.dispatch.events import EventIn
from reconciler.dispatch.service import Dispatcher
from reconciler.store.queue import IntakeResult

PATH = "/v1/events"


class FastIntake:
    def __init__(self, app: ASGIApp, dispatcher: Dispatcher, guard: Guard) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        result = await self._accept(scope, body)
        if result is None:

            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
            return
        content = json.dumps(
            result.as_json(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
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

    async def _accept(self, scope: Scope, body: bytes | None) -> IntakeResult | None:
        """The event queued, or None for the route to answer."""
        if body is None:
            return None
        headers = _headers(scope)
        if not _json_content(headers.get(b"content-type")):
            return None
        token = _bearer(headers.get(b"authorization"))
        if token is None:
            return None
        try:
            access = await self.guard.authenticate(token)
            event = EventIn.model_validate(json.loads(body))
        except (AuthError, ValidationError, ValueError, RecursionError):
            return None
        if not access.may("send") or not access.sees(event.organization):
            return None
        return await self.dispatcher.accept(event)


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


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


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


def install(app: Any, dispatcher: Dispatcher, guard: Guard) -> None:
    app.add_middleware(FastIntake, dispatcher=dispatcher, guard=guard)
