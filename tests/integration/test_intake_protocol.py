"""`serve`'s HTTP protocol answers valid events on the connection, and everything
else exactly as uvicorn and the app would.

Each test serves the real app with uvicorn on a loopback port and speaks raw
HTTP/1.1 to it over a socket, so that keep-alive, pipelining, bodies in pieces,
closed connections and shutdown are what a client really sees. Answers are
compared with the same app served by uvicorn's own httptools protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reconciler.dispatch import failures
from reconciler.dispatch.app import create_app
from reconciler.dispatch.auth import UNAUTHORIZED
from reconciler.dispatch.intake_protocol import protocol_for
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.events import MAX_BATCH_EVENTS
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

START = 1_700_000_000.0


def event(n: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "type": "new_rule_violation",
        "organization": "acme",
        "name": "no-public-s3",
        "description": "bucket logs is public",
        "time": "2026-11-29T21:22:42Z",
        "id": f"evt-{n}",
        **fields,
    }


@dataclass
class Served:
    """The app on a loopback port, and the requests the ASGI app itself was given."""

    port: int
    store: SqliteStore
    token: str
    server: uvicorn.Server
    serving: asyncio.Task[None]
    app_saw: list[str] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def request(
        self,
        path: str = "/v1/events",
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = "",
        extra: str = "",
        method: str = "POST",
    ) -> bytes:
        content = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        token = self.token if token == "" else token
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        if method == "POST":
            head += f"Content-Length: {len(content)}\r\n"
        return (head + extra + "\r\n").encode() + content

    def stored_events(self) -> list[str]:
        return [key.id for key in self.store.iter_event_keys()]

    def deliveries(self) -> int:
        return len(self.store.deliveries(limit=10_000))


@contextlib.asynccontextmanager
async def serve(root: Path, fast: bool = True) -> AsyncIterator[Served]:
    store = SqliteStore(root / f"state-{fast}.db")
    put_specs(store, [spec("a")])
    token = bearer(store, "acme", role="publisher", now=START)["Authorization"].split()[1]
    sender = Sender(httpx.AsyncHTTPTransport())  # never used: nothing is delivered here
    dispatcher = Dispatcher(store, sender, clock=FakeClock(START), env={})
    app = create_app(dispatcher)
    assert app.intake is not None
    saw: list[str] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            saw.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    config = uvicorn.Config(
        watched,
        log_level="critical",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        http=protocol_for(app.intake) if fast else HttpToolsProtocol,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)  # until the socket is served, as `serve` waits
    served = Served(sock.getsockname()[1], store, token, server, serving, saw)
    try:
        yield served
    finally:
        server.should_exit = True
        await serving
        await sender.aclose()
        dispatcher.db.close()
        store.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 30)
    return Answer(status, headers, body)


async def exchange(served: Served, *requests: bytes) -> list[Answer]:
    """Send the requests one after the other on one connection."""
    reader, writer = await served.connect()
    try:
        answers = []
        for request in requests:
            writer.write(request)
            await writer.drain()
            answers.append(await read_answer(reader))
        return answers
    finally:
        writer.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


# -- valid events, on the connection -------------------------------------------


def test_a_valid_event_is_answered_without_the_asgi_app(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            (answer,) = await exchange(served, served.request(body=event()))
            assert answer.status == 202
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {
                "event_id": "evt-1",
                "organization": "acme",
                "deliveries": 1,
                "duplicate": False,
            }
            assert served.app_saw == []
            assert served.stored_events() == ["evt-1"]
            assert served.deliveries() == 1

    run(test)


def test_a_batch_past_the_read_buffer_is_read_whole(tmp_path: Path) -> None:
    """uvicorn stops reading a body past 64 KiB until it is asked for more."""
    events = [event(n, description="x" * 200) for n in range(MAX_BATCH_EVENTS)]

    async def test() -> None:
        async with serve(tmp_path) as served:
            request = served.request("/v1/events/batch", {"events": events})
            assert len(request) > 100_000
            (answer,) = await exchange(served, request)
            assert answer.status == 202
            assert len(answer.json()["results"]) == MAX_BATCH_EVENTS
            assert served.app_saw == []
            assert len(served.stored_events()) == MAX_BATCH_EVENTS

    run(test)


def test_keep_alive_takes_one_request_after_another(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            answers = await exchange(
                served,
                served.request(body=event(1)),
                served.request(body=event(1)),
                served.request("/healthz", method="GET"),
                served.request(body=event(2)),
            )
            assert [a.status for a in answers] == [202, 202, 200, 202]
            assert answers[1].json()["duplicate"] is True
            assert served.app_saw == ["GET /healthz"]
            assert served.stored_events() == ["evt-1", "evt-2"]

    run(test)


def test_a_body_in_pieces(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            request = served.request(body=event())
            cut = request.index(b"\r\n\r\n") + 4
            reader, writer = await served.connect()
            for piece in (request[:cut], request[cut : cut + 10], request[cut + 10 :]):
                writer.write(piece)
                await writer.drain()
            answer = await read_answer(reader)
            writer.close()
            assert (answer.status, answer.json()["event_id"]) == (202, "evt-1")

    run(test)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            reader, writer = await served.connect()
            writer.write(
                served.request(body=event(1))
                + served.request(body={"type": "nope"})
                + served.request(body=event(2))
                + served.request("/healthz", method="GET")
            )
            await writer.drain()
            answers = [await read_answer(reader) for _ in range(4)]
            writer.close()
            assert [a.status for a in answers] == [202, 422, 202, 200]
            assert answers[0].json()["event_id"] == "evt-1"
            assert answers[2].json()["event_id"] == "evt-2"
            assert served.stored_events() == ["evt-1", "evt-2"]

    run(test)


def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            reader, writer = await served.connect()
            writer.write(served.request(body=event(), extra="Connection: close\r\n"))
            await writer.drain()
            answer = await read_answer(reader)
            assert answer.status == 202
            assert answer.headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
            writer.close()

    run(test)


def test_a_client_gone_before_its_body_leaves_nothing_behind(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            request = served.request(body=event(1))
            _, writer = await served.connect()
            writer.write(request[:-5])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            (answer,) = await exchange(served, served.request(body=event(2)))
            assert answer.status == 202
            assert served.stored_events() == ["evt-2"]

    run(test)


# -- everything else: uvicorn's and the app's answers ----------------------------

OTHERS = {
    "not JSON": {"raw": b"{not json"},
    "an invalid event": {"body": {"type": "nope", "organization": "acme"}},
    "no token": {"body": event(), "token": None},
    "an unknown token": {"body": event(), "token": "rcn_unknown"},
    "another content type": {"body": event(), "content_type": "text/plain"},
    "an organization outside the token's": {"body": event(organization="globex")},
    "a batch with one invalid event": {
        "path": "/v1/events/batch",
        "body": {"events": [event(1), event(2, time="yesterday")]},
    },
    "a body over the limit": {"raw": b" " * (64 * 1024 + 1)},
    "a query string": {"path": "/v1/events?x=1", "body": {"type": "nope"}},
}


@pytest.mark.parametrize("case", list(OTHERS))
def test_what_the_fast_path_declines_gets_the_apps_own_answer(tmp_path: Path, case: str) -> None:
    kwargs = OTHERS[case]

    async def test() -> None:
        answers, stored, saw = [], [], []
        for fast in (True, False):
            async with serve(tmp_path, fast) as served:
                (answer,) = await exchange(served, served.request(**kwargs))
                answers.append((answer.status, answer.headers.get("content-type"), answer.body))
                stored.append(served.stored_events())
                saw.append(served.app_saw)
        assert answers[0] == answers[1]
        assert answers[0][0] in (401, 403, 413, 415, 422)
        assert stored == [[], []]
        assert saw[0] == saw[1]

    run(test)


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
def test_a_failing_state_answers_503_in_the_apis_shape_and_the_next_request_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    body = event(1) if path == "/v1/events" else {"events": [event(1)]}

    async def test() -> None:
        async with serve(tmp_path) as served:

            def broken(*args: Any) -> Any:
                raise sqlite3.OperationalError("database or disk is full")

            monkeypatch.setattr(served.store, "add_events", broken)
            monkeypatch.setattr(served.store, "add_events_and_claim", broken)
            with caplog.at_level(logging.INFO, logger="reconciler"):
                (answer,) = await exchange(served, served.request(path, body))
            assert answer.status == 503
            assert answer.headers["retry-after"] == str(failures.RETRY_AFTER)
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {"error": failures.UNAVAILABLE, "problems": []}
            (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert line.getMessage() == (
                f"POST {path}: the state failed (OperationalError: database or disk is "
                "full); answered 503"
            )
            assert served.token not in line.getMessage()
            assert served.app_saw == []  # answered on the connection, as the route would
            monkeypatch.undo()
            (answer,) = await exchange(served, served.request(path, body))
            assert answer.status == 202
            assert served.stored_events() == ["evt-1"]

    run(test)


def test_a_bug_while_storing_is_a_500_in_the_apis_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:

            def bug(*args: Any) -> Any:
                raise RuntimeError("a bug")

            monkeypatch.setattr(served.store, "add_events", bug)
            monkeypatch.setattr(served.store, "add_events_and_claim", bug)
            (answer,) = await exchange(served, served.request(body=event(1)))
            assert (answer.status, answer.json()) == (
                500,
                {"error": failures.INTERNAL, "problems": []},
            )

    run(test)


# -- who asks comes before the size of what they sent -------------------------------------

TOO_LARGE = {"/v1/events": 64 * 1024 + 1, "/v1/events/batch": 1024 * 1024 + 1}


@pytest.mark.parametrize("fast", [True, False], ids=["intake protocol", "uvicorn's"])
@pytest.mark.parametrize("token", [None, "rcn_unknown"], ids=["no token", "an unknown token"])
@pytest.mark.parametrize("path", list(TOO_LARGE))
def test_a_body_over_the_limit_without_a_valid_token_is_401(
    tmp_path: Path, path: str, token: str | None, fast: bool
) -> None:
    async def test() -> None:
        async with serve(tmp_path, fast) as served:
            (answer,) = await exchange(
                served, served.request(path, raw=b" " * TOO_LARGE[path], token=token)
            )
            assert answer.status == 401
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json() == {"error": UNAUTHORIZED, "problems": []}
            (answer,) = await exchange(served, served.request(path, raw=b" " * TOO_LARGE[path]))
            assert answer.status == 413  # with the publisher's token: the size
            assert served.stored_events() == []

    run(test)


def test_shutdown_waits_for_an_event_being_stored(tmp_path: Path) -> None:
    async def test() -> None:
        async with serve(tmp_path) as served:
            storing, release = threading.Event(), threading.Event()
            original = served.store.add_events_and_claim

            def slow(*args: Any) -> Any:
                storing.set()
                release.wait(30)
                return original(*args)

            served.store.add_events_and_claim = slow  # type: ignore[method-assign]
            reader, writer = await served.connect()
            writer.write(served.request(body=event()))
            await writer.drain()
            await asyncio.get_running_loop().run_in_executor(None, storing.wait, 30)
            served.server.should_exit = True
            while served.server.servers[0].is_serving():
                await asyncio.sleep(0.01)  # until the shutdown has begun
            release.set()
            answer = await read_answer(reader)
            await served.serving
            writer.close()
            assert answer.status == 202
            assert answer.headers["connection"] == "close"
            assert served.stored_events() == ["evt-1"]

    run(test)
