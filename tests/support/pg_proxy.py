"""A TCP proxy on loopback between dispatchers and the PostgreSQL server, with faults
on demand: added latency, a link that stalls (stops forwarding, never closes) right
after a claim reaches the server, and a claim whose commit the server makes but
whose answer comes back late. The fault-injection tests and bench/bench_faults.py
use it.

It reads PostgreSQL's protocol only as bytes: a claim is the statement that leases
the deliveries it picked (CLAIM_UPDATE, sent only when it picked some), its commit
the next COMMIT on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

CLAIM_UPDATE = b"SET status = 'in_flight', lease_owner"
COMMIT = b"COMMIT"


@dataclass
class _Link:
    """One client connection and the server connection it is forwarded to."""

    flowing: asyncio.Event
    hold_until: float = 0.0  # server -> client is held until then (loop time)
    claimed: bool = False  # a claim went through; its COMMIT is the trap's
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class Proxy:
    """Start with `start()`, use `port`, stop with `close()` (or as a context manager).
    Faults: `latency` (seconds added to every chunk, each way), `stall_after_claim()`,
    `late_commit_after_claim(seconds)`, `release()`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency = 0.0
        self.port = 0
        self.tripped = threading.Event()  # the armed fault happened
        self._trap: tuple[str, float] | None = None  # ("stall" | "late", seconds)
        self._links: list[_Link] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    # -- control, from the test's thread ------------------------------------------

    def start(self) -> Proxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stall_after_claim(self) -> None:
        """The next claim reaches the server; then its connection forwards nothing
        more, either way, until `release()`: the server's transaction sits idle with
        the rows locked, the dispatcher waits for an answer that does not come."""
        self.tripped.clear()
        self._trap = ("stall", 0.0)

    def late_commit_after_claim(self, seconds: float) -> None:
        """The next claim and its COMMIT reach the server, which commits; its answer
        reaches the dispatcher `seconds` later."""
        self.tripped.clear()
        self._trap = ("late", seconds)

    def release(self) -> None:
        """Every stalled connection forwards again (what it held first)."""
        self._trap = None

        def go() -> None:
            for link in self._links:
                link.flowing.set()

        self._loop.call_soon_threadsafe(go)

    def close(self) -> None:
        """Cut every connection, stop, and close the loop (nothing left pending)."""

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for link in self._links:
                link.flowing.set()
                for writer in link.writers:
                    writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding, on the proxy's loop -----------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(asyncio.Event(), writers=[client_w, server_w])
        link.flowing.set()
        self._links.append(link)
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, link, upstream=True),
                self._pump(server_r, client_w, link, upstream=False),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # close(): ended here, so the server's callback finds no error to log
        finally:
            for writer in link.writers:
                writer.transport.abort()
            self._links.remove(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.latency:
                await asyncio.sleep(self.latency)
            await link.flowing.wait()
            if upstream:
                window, tail = tail + data, data[-64:]
                self._spring(link, window, loop.time())
            else:
                wait = link.hold_until - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    def _spring(self, link: _Link, window: bytes, now: float) -> None:
        """Before `window` goes to the server: set the trap off if this is its moment.
        (Before, not after: the server's answer may come back while the write drains.)"""
        trap = self._trap
        if trap is None:
            return
        kind, seconds = trap
        if CLAIM_UPDATE in window:
            link.claimed = True
            if kind == "stall":
                self._trap = None
                link.flowing.clear()  # this chunk still goes; nothing after it
                self.tripped.set()
        elif link.claimed and COMMIT in window and kind == "late":
            self._trap = None
            link.hold_until = now + seconds
            self.tripped.set()
