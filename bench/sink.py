"""A minimal webhook receiver for benchmarks: raw asyncio, HTTP/1.1 keep-alive.

    .venv/bin/python bench/sink.py [--host 127.0.0.1] [--port 0] [--max-seconds 1800]

Prints "sink listening on http://HOST:PORT" once it accepts connections. Every
request answers 200 with a 2-byte body and is counted, except the control paths:

  GET  /_count   {"count", "first", "last", "cpu"}: requests counted since the last
                 reset, the wall-clock arrival (time.time()) of the first and the
                 last of them, and this process's CPU seconds (user + system);
  POST /_reset   zero the count; with ?record=1, also keep (arrival, body) of
                 every counted request until the next reset;
  GET  /_dump    the kept [arrival, body] pairs, as JSON;
  POST /_quit    stop.

Troubled receivers, for bench/bench_isolation.py (not counted above):

  /_t/hang/...          accepted and never answered, until the client hangs up;
  /_t/delay/MS/...      200 after MS milliseconds;
  /_t/status/CODE/...   CODE at once, with `Retry-After: 1`;
  /_t/ok/...            200 at once;
  GET /_trouble         per path under /_t/: {"requests", "open" (not answered,
                        connection still up), "max_open", "arrivals" (time.time()
                        of each request)}; zeroed by /_reset.

Request parsing is just enough for well-formed clients: a Content-Length body
or a chunked one, pipelined requests, keep-alive unless "Connection: close".
The process stops by itself after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_CLOSE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Trouble:
    """What one troubled path (under /_t/) was sent and still holds."""

    def __init__(self) -> None:
        self.requests = 0
        self.open = 0
        self.max_open = 0
        self.arrivals: list[float] = []

    def arrived(self, now: float) -> None:
        self.requests += 1
        self.arrivals.append(now)
        self.open += 1
        self.max_open = max(self.max_open, self.open)


class Stats:
    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.record = False
        self.kept: list[tuple[float, bytes]] = []
        self.trouble: dict[str, Trouble] = {}
        self.stop = asyncio.Event()

    def reset(self, record: bool) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.record = record
        self.kept = []
        self.trouble = {}


def _json_response(value: object) -> bytes:
    body = json.dumps(value).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
    ) + body


class SinkProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.held: Trouble | None = None  # the troubled request this connection holds

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    def _release(self) -> None:
        if self.held is not None:
            self.held.open -= 1
            self.held = None

    def _answer_later(self, response: bytes) -> None:
        if self.held is not None and self.transport is not None:
            self._release()
            self.transport.write(response)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:
            parsed = self._one_request()
            if parsed is None:
                break
            if parsed is False:
                out.append(_CLOSE)
                self.transport.write(b"".join(out))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                return
            out.append(parsed)
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _one_request(self) -> bytes | bool | None:
        """The response to the first complete request in the buffer (and consume it);
        None while incomplete; False on a request this sink cannot parse."""
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None if len(buf) < 65536 else False
        head = bytes(buf[:end])
        start = end + 4
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3:
            return False
        method, target = parts[0], parts[1]
        length = 0
        chunked = close = False
        for header in rest.split(b"\r\n"):
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if chunked:
            body_parts = []
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if len(buf) < eol + 2 + size + 2:
                    return None
                body_parts.append(bytes(buf[eol + 2 : eol + 2 + size]))
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(body_parts)
            consumed = pos
        else:
            if len(buf) < start + length:
                return None
            body = bytes(buf[start : start + length])
            consumed = start + length
        del buf[:consumed]
        response = self._handle(method, target, body)
        if close:
            self.transport.write(response)  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            self.buffer.clear()
            return None
        return response

    def _handle(self, method: bytes, target: bytes, body: bytes) -> bytes:
        stats = self.stats
        if target.startswith(b"/_"):
            path, _, query = target.partition(b"?")
            if path == b"/_count":
                cpu = os.times()
                return _json_response(
                    {
                        "count": stats.count,
                        "first": stats.first,
                        "last": stats.last,
                        "cpu": cpu.user + cpu.system,
                    }
                )
            if path == b"/_reset":
                stats.reset(b"record=1" in query)
                return _json_response({"reset": True})
            if path == b"/_dump":
                return _json_response(
                    [[t, b.decode("utf-8", errors="replace")] for t, b in stats.kept]
                )
            if path == b"/_quit":
                stats.stop.set()
                return _json_response({"quit": True})
            if path == b"/_trouble":
                return _json_response({k: vars(v) for k, v in stats.trouble.items()})
            if path.startswith(b"/_t/"):
                return self._troubled(path.decode("ascii", errors="replace"))
        now = time.time()
        if not stats.count:
            stats.first = now
        stats.count += 1
        stats.last = now
        if stats.record:
            stats.kept.append((now, body))
        return _OK

    def _troubled(self, path: str) -> bytes:
        """A request to a troubled path: b"" (nothing written now) or the answer."""
        trouble = self.stats.trouble.setdefault(path, Trouble())
        trouble.arrived(time.time())
        self.held = trouble
        kind, _, rest = path.removeprefix("/_t/").partition("/")
        if kind == "hang":
            return b""
        if kind == "delay":
            delay = int(rest.partition("/")[0]) / 1000
            asyncio.get_running_loop().call_later(delay, self._answer_later, _OK)
            return b""
        self._release()
        if kind == "status":
            code = int(rest.partition("/")[0])
            return b"HTTP/1.1 %d Trouble\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\nno" % code
        return _OK


async def serve(host: str, port: int, max_seconds: float) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(stats), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.wait_for(stats.stop.wait(), max_seconds)
    except TimeoutError:
        print("sink: --max-seconds reached, stopping", file=sys.stderr)
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
