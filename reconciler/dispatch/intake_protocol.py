"""`serve`'s HTTP protocol: uvicorn's httptools protocol, with valid events answered
on the connection itself.

Every event the dispatcher delivers comes in through POST /v1/events, and below
the fast path (fast_intake.py) uvicorn still spent, per event, an ASGI cycle (a
scope, a task, an event, the receive and send messages) and two writes to the
socket, one for the head and one for the body: about 30 µs of the serving
thread's CPU per event (docs/benchmarks.md, Dispatcher). Here a POST to
/v1/events or /v1/events/batch with a Content-Length within its limit is read
into a buffer, the same `FastIntake.answer` takes it, and its 202 goes out in one
write. Whatever the fast path does not answer (a bad token, an invalid body) is
handed, with its body, to the app through uvicorn's own request cycle, so that
every other answer is the route's (a state that fails while the events are
stored is answered as the route answers it: failures.py). Every other request is
uvicorn's from the start.

uvicorn's protocol keeps its state in attributes of its own (`cycle`, `headers`,
`scope`, `flow`, `tasks`), so this module is written against the uvicorn release
pinned in pyproject.toml; tests/integration/test_intake_protocol.py holds it to that release.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, cast

import httptools
from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from reconciler.dispatch import failures
from reconciler.dispatch.fast_intake import (
    BATCH_PATH,
    PATH,
    FastIntake,
    declared_within,
    wanted_headers,
)

_CANDIDATES = {PATH.encode(): PATH, BATCH_PATH.encode(): BATCH_PATH}


class IntakeProtocol(HttpToolsProtocol):
    """One connection. `intake` is set on the class `protocol_for` makes."""

    intake: FastIntake

    def on_headers_complete(self) -> None:
        path, url = None, None
        # A request pipelined behind one still being answered waits its turn in
        # uvicorn's queue.
        if (
            self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
        ):
            url = httptools.parse_url(self.url)
            path = _CANDIDATES.get(url.path)
        if path is None or url is None:
            super().on_headers_complete()
            return
        headers = wanted_headers(self.headers)
        if not declared_within(headers, self.intake.limits[path]):
            super().on_headers_complete()  # the route refuses it, unread
            return
        http_version = self.parser.get_http_version()
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        # uvicorn's on_body, on_message_complete, connection_lost and shutdown
        # speak to `self.cycle`; an _IntakeRequest answers to the same names.
        self.cycle = _IntakeRequest(  # type: ignore[assignment]
            self, path, url.path, url.query or b"", headers, http_version, keep_alive
        )


def protocol_for(intake: FastIntake) -> type[IntakeProtocol]:
    """The protocol class for uvicorn.Config(http=...), answering through `intake`."""
    return type("IntakeProtocolFor", (IntakeProtocol,), {"intake": intake})


class _IntakeRequest:
    """A candidate event request being read, then answered."""

    def __init__(
        self,
        protocol: IntakeProtocol,
        path: str,
        raw_path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.keep_alive = keep_alive
        # What the route needs, should the fast path hand the request on: the
        # protocol's own scope and raw headers are the next request's by then.
        self.scope = protocol.scope
        self.scope["method"] = "POST"
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        self.body = bytearray()
        self.more_body = True
        self.response_complete = False
        self.disconnected = False
        self._started = False

    @property
    def message_event(self) -> _IntakeRequest:
        return self  # uvicorn calls message_event.set() on news of the request

    def set(self) -> None:
        if self.disconnected or self._started:
            return
        if self.more_body:
            self.protocol.flow.resume_reading()  # uvicorn pauses past 64 KiB
            return
        self._started = True
        task = self.protocol.loop.create_task(self._answer())
        self.protocol.tasks.add(task)  # a graceful shutdown waits for it
        task.add_done_callback(self.protocol.tasks.discard)

    async def _answer(self) -> None:
        try:
            content = await self.protocol.intake.answer(self.path, self.headers, bytes(self.body))
        except Exception as exc:  # the state failed (or a bug): what the route answers
            response = failures.answer(exc, "POST", self.path)
            # The same ASGI messages: uvicorn types them as TypedDicts, starlette as
            # mappings.
            send = cast(Send, self._cycle().send)
            await response({"type": "http"}, _nothing, send)
            return
        if content is None:
            await self._cycle().run_asgi(self.protocol.app)
            return
        self.response_complete = True
        transport = self.protocol.transport
        if self.disconnected or transport.is_closing():
            return  # the events are stored; nobody is left to hear it
        head = [STATUS_LINE[202]]
        for name, value in self.protocol.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(content))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", content]
        transport.write(b"".join(head))
        if not self.keep_alive:
            transport.close()
        self.protocol.on_response_complete()

    def _cycle(self) -> RequestResponseCycle:
        """uvicorn's cycle for the request, its body already read, to answer it as
        uvicorn would have."""
        self.response_complete = True  # from here on, the cycle's to answer
        protocol = self.protocol
        scope: Any = self.scope
        path = self.raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = protocol.root_path + path
        scope["raw_path"] = protocol.root_path.encode("ascii") + self.raw_path
        scope["query_string"] = self.query
        cycle = RequestResponseCycle(
            scope=scope,
            transport=protocol.transport,
            flow=protocol.flow,
            logger=protocol.logger,
            access_logger=protocol.access_logger,
            access_log=protocol.access_log,
            default_headers=protocol.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=self.keep_alive,
            on_response=protocol.on_response_complete,
        )
        cycle.body = self.body
        cycle.more_body = False
        cycle.disconnected = self.disconnected
        cycle.message_event.set()  # the whole body is in
        # Typed as uvicorn's own cycle, the attribute holds this request since
        # on_headers_complete put it there.
        current: object = protocol.cycle
        if current is self:  # not when a pipelined request has come in since
            protocol.cycle = cycle
        return cycle


async def _nothing() -> Any:
    return {"type": "http.disconnect"}
