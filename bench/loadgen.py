"""A cheap HTTP/1.1 load generator for benchmarks: raw asyncio, keep-alive connections.

    .venv/bin/python bench/loadgen.py URL --requests N --connections C [--rate R]
        [--body-kind event|webhook] [--batch B] [--header "Name: value"] [--max-seconds 300]
        [--organizations acme,globex]

Sends N POSTs to URL over C keep-alive connections and prints one JSON line:
first send and last answer (time.time()), answers by status, intake latency
percentiles (ms, from when a request was due to its answer), and this process's
CPU seconds.

  without --rate  closed loop: each connection sends its next request as soon as
                  the previous one is answered (as fast as the server takes them);
  with --rate R   open loop: request i is due at start + i/R; a due request goes
                  out on the first free connection. With --body-kind event the
                  event's description is the time it was due (time.time(), as
                  text), so a receiver can compute intake-to-delivery latency
                  without counting the generator's own queueing out.

Bodies: "event" is a POST /v1/events body for organization acme, or for each of
--organizations in turn (with --batch B, a POST /v1/events/batch body of B such
events); "webhook" is
a small JSON body like a rendered delivery (for a sink). Requests are built as
bytes, responses parsed just enough (status line, Content-Length or chunked), so
the generator spends little CPU of the machine it shares with what it measures.
Bounded: it stops after --max-seconds whatever happened, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._try_complete()

    def _try_complete(self) -> None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(buf[:end])
        start = end + 4
        status_line, _, rest = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        chunked = False
        for header in rest.split(b"\r\n"):
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if len(buf) < eol + 2 + size + 2:
                    return
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            consumed = pos
        else:
            if len(buf) < start + length:
                return
            consumed = start + length
        del buf[:consumed]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        return await self.waiter


def build_request(host: str, path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def make_body(
    kind: str, i: int, due: float, batch: int = 1, organizations: tuple[str, ...] = ("acme",)
) -> bytes:
    if kind == "event":
        event = {
            "type": "new_rule_violation",
            "organization": organizations[i % len(organizations)],
            "name": f"bench-rule-{i}",
            "description": repr(due),
        }
        return json.dumps(event if batch == 1 else {"events": [event] * batch}).encode()
    return json.dumps(
        {"id": f"evt_{i:032x}", "t": repr(due), "text": "New rule violation: bench-rule"}
    ).encode()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    loop = asyncio.get_running_loop()
    conns: list[Connection] = []
    for _ in range(args.connections):
        _, proto = await loop.create_connection(Connection, host, port)
        conns.append(proto)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    n = args.requests
    next_index = 0
    deadline = time.monotonic() + args.max_seconds
    started = time.time()
    rate = args.rate
    extra = "".join(f"{header.strip()}\r\n" for header in args.header)
    organizations = tuple(args.organizations.split(","))

    async def worker(conn: Connection) -> None:
        nonlocal next_index
        while next_index < n and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            due = started + i / rate if rate else time.time()
            if rate:
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            body = make_body(args.body_kind, i, due, args.batch, organizations)
            data = build_request(host, path, body, extra)
            try:
                status = await asyncio.wait_for(conn.request(data), 60)
            except (ConnectionError, TimeoutError) as exc:
                errors.append(str(exc) or type(exc).__name__)
                return
            latencies.append((time.time() - due) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in conns))
    finished = time.time()
    for conn in conns:
        conn.transport.close()  # type: ignore[union-attr]
    cpu = os.times()
    done = sum(statuses.values())
    return {
        "first_send": started,
        "last_answer": finished,
        "sent": next_index,
        "answered": done,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors[:5],
        "timed_out": time.monotonic() >= deadline and done < n,
        "rate": done / (finished - started) if finished > started else 0.0,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
        },
        "cpu": cpu.user + cpu.system,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (open loop)")
    parser.add_argument("--body-kind", choices=("event", "webhook"), default="event")
    parser.add_argument("--batch", type=int, default=1, help="events per POST (event bodies)")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument(
        "--organizations", default="acme", help="event bodies' organizations, in turn"
    )
    parser.add_argument(
        "--header", action="append", default=[], help='an extra header, "Name: value"'
    )
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0 if result["answered"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
