"""A real HTTP receiver on 127.0.0.1 for the integration tests.

`Receiver` listens on a free loopback port in background threads (one thread per
connection, HTTP/1.1 with keep-alive, as real endpoints are) and answers each
request by a per-path script of `Reply`s: a status with headers (Retry-After,
Location), a sequence (500 then 200), a hold (longer than a client's timeout, or
until the test opens a gate), or closing the connection without answering. Every
request is recorded on arrival, before it is answered: method, raw path and
query exactly as sent, headers, body and the moment it arrived.

How a request is answered is `Receiver._respond`'s choice; a subclass may answer
otherwise (tests/support/faulty_receiver.py does) and keep the rest: recording, waiting,
connection tracking and a clean shutdown.

Use it as a context manager (or through a fixture that does): on exit, held
requests are let go, open connections are shut and every thread is joined, so
no socket is left for the garbage collector to warn about.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"
DEADLINE = 30.0  # the longest any wait in these tests may take
HOLD_CAP = 60.0  # a gated hold never outlives this, even if the test forgets the gate
T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0  # hold the request this long before acting
    gate: threading.Event | None = None  # hold until this is set (then the delay)
    action: Literal["answer", "reset"] = "answer"


def ok(body: bytes = b"ok", **headers: str) -> Reply:
    return Reply(200, headers, body)


def status(code: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> Reply:
    return Reply(code, dict(headers or {}), body)


def hang(seconds: float, then: Reply | None = None) -> Reply:
    """Hold the request `seconds`, then answer as `then` (200 by default)."""
    base = then or Reply()
    return Reply(base.status, base.headers, base.body, delay=seconds, action=base.action)


def hold(gate: threading.Event, then: Reply | None = None) -> Reply:
    """Hold the request until the test sets `gate`, then answer as `then`."""
    base = then or Reply()
    return Reply(base.status, base.headers, base.body, base.delay, gate, base.action)


def reset() -> Reply:
    """Close the connection without answering (the client sees a reset)."""
    return Reply(action="reset")


def redirect(location: str, code: int = 302) -> Reply:
    return Reply(code, {"Location": location}, b"")


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    target: str  # the request-target exactly as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes
    number: int  # its place among all requests this receiver saw, from 0
    arrived: float = 0.0  # time.monotonic() when it arrived

    @property
    def path(self) -> str:
        """The raw path, still percent-encoded."""
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        """The raw query string, still percent-encoded."""
        return urlsplit(self.target).query

    def query_pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True, strict_parsing=bool(self.query))

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def header_map(self) -> dict[str, str]:
        """Headers by lower-cased name (the last one wins), as a verifier wants them."""
        return {key.lower(): value for key, value in self.headers}

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class _Script:
    """Replies for one path: taken in turn, the last one repeating."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self._replies = list(replies)
        self._taken = 0

    def next(self) -> Reply:
        reply = self._replies[min(self._taken, len(self._replies) - 1)]
        self._taken += 1
        return reply


class Receiver:
    """A real HTTP server on 127.0.0.1; see the module's docstring."""

    def __init__(self, default: Reply | None = None) -> None:
        self._default = default or Reply()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._scripts: dict[str, _Script] = {}
        self._requests: list[Recorded] = []
        self._answered = 0
        self._listeners: list[Callable[[Recorded], None]] = []
        self.errors: list[BaseException] = []  # unexpected errors in handlers
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _Server((HOST, 0), _Handler)
        self._server.receiver = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- setting it up -------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to `path` (without query) with `replies` in turn; the last
        one repeats. Unscripted paths get the default reply (200)."""
        assert replies, "a script needs at least one reply"
        with self._lock:
            self._scripts[path] = _Script(replies)

    def on_request(self, listener: Callable[[Recorded], None]) -> None:
        """Call `listener` with each request on arrival, before it is answered."""
        with self._lock:
            self._listeners.append(listener)

    # -- what it saw -------------------------------------------------------------------

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    @property
    def answered(self) -> int:
        """How many requests were answered (the answer written, whatever the client did)."""
        with self._lock:
            return self._answered

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = DEADLINE
    ) -> list[Recorded]:
        """Wait until at least `count` requests (to `path`) arrived; fail clearly after
        `timeout` seconds."""
        self.wait_until(
            lambda seen: sum(1 for r in seen if path is None or r.path == path) >= count,
            f"{count} request(s)" + (f" to {path}" if path else ""),
            timeout,
        )
        return self.requests(path)

    def wait_until(
        self, condition: Callable[[list[Recorded]], bool], what: str, timeout: float = DEADLINE
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{r.method} {r.target}" for r in self._requests]
                    raise AssertionError(
                        f"the receiver did not see {what} within {timeout:g}s; "
                        f"it saw {len(seen)}: {seen[:20]}"
                    )
                self._changed.wait(min(left, 0.5))

    # -- shutting down -----------------------------------------------------------------

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()  # held requests let go at once
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # a keep-alive connection waiting for its next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins every connection's thread
        self._thread.join(DEADLINE)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- called from the handler threads ------------------------------------------------

    def _respond(self, handler: _Handler) -> None:
        """Record one request and answer it by its path's script."""
        _, reply = self._record(handler, self._scripted)
        self._hold(reply)
        if reply.action == "reset":
            handler.reset()
            return
        handler.answer(reply.status, reply.headers, reply.body)
        self._done()

    def _scripted(self, record: Recorded) -> Reply:
        script = self._scripts.get(record.path)
        return script.next() if script is not None else self._default

    def _record(self, handler: _Handler, choose: Callable[[Recorded], T]) -> tuple[Recorded, T]:
        """Read the request's body, record it, `choose` its answer (under the lock, so
        answers are taken in arrival order), and tell the listeners."""
        body = handler.read_body()
        with self._changed:
            record = Recorded(
                handler.command,
                handler.path,
                tuple(handler.headers.items()),
                body,
                len(self._requests),
                time.monotonic(),
            )
            self._requests.append(record)
            chosen = choose(record)
            listeners = list(self._listeners)
            self._changed.notify_all()
        for listener in listeners:
            listener(record)
        return record, chosen

    def _hold(self, reply: Reply) -> None:
        if reply.gate is not None:
            deadline = time.monotonic() + HOLD_CAP
            while not reply.gate.is_set() and not self._closing.is_set():
                if time.monotonic() > deadline:
                    break
                reply.gate.wait(0.02)
        if reply.delay:
            self._closing.wait(reply.delay)

    def _done(self) -> None:
        with self._changed:
            self._answered += 1
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close joins every handler thread
    request_queue_size = 128  # a fan-out connects at once; 5 would drop SYNs (1 s retries)
    block_on_close = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return  # the client went away (it timed out, or was killed): expected here
        if error is not None:
            self.receiver.errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = DEADLINE  # an idle keep-alive connection is dropped after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.receiver._lock:
            self.server.receiver._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.receiver._lock:
                self.server.receiver._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read the recorded requests instead

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def answer(self, code: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def reset(self) -> None:
        """Close the connection with a RST (linger 0), not a polite FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _handle(self) -> None:
        self.server.receiver._respond(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle
