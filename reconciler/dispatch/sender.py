"""Send one request and say what happened; httpx errors never leave this module.

`Sender.send` -> `_send_once`: every transport error, timeout and status becomes an
Outcome that the worker turns into delivered, retry, failed or paused.

The sender speaks httpx (an `httpx.Request` to an httpx transport, an
`httpx.Response` back), so pytest-httpx reaches it, but it hands the request to the
transport itself instead of going through `httpx.AsyncClient`: the client's
machinery (merging defaults, auth and redirect flows, event hooks, cookies) does
nothing a webhook needs and cost about 40% of the CPU of every request
(docs/benchmarks.md, Dispatcher). Redirects are therefore never followed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

import httpx

from reconciler import __version__
from reconciler.dispatch.ssrf import refused_in
from reconciler.render import RenderedRequest
from reconciler.secrets import mask_url
from reconciler.store.queue import EXCERPT_LIMIT

Kind = Literal["delivered", "retry", "failed", "gone"]
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(500, 600))
CONNECT_TIMEOUT = 10.0
USER_AGENT = f"reconciler/{__version__} (webhook dispatcher)"
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
_KEPT_HEADERS = ("content-type", "retry-after", "location", "content-length", "server", "date")


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    duration_ms: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    excerpt: str = ""
    error: str | None = None
    retry_after: str | None = None  # the raw header, on 429 and 503


class Sender:
    """Sends rendered requests through one httpx transport and its connection pool."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        headers: Mapping[str, str] = DEFAULT_HEADERS,
    ) -> None:
        self.transport = transport
        self.headers = dict(headers)

    async def send(self, request: RenderedRequest, timeout: float) -> Outcome:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status, headers, excerpt = await self._send_once(request, timeout)
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            return _transport_failure(exc, started, timeout, request.url)
        except (UnicodeError, ValueError) as exc:
            # The request cannot be built (a header value outside Latin-1, a bad host
            # label): no retry will change that.
            kind = type(exc).__name__
            return _failure("failed", started, f"the request cannot be sent as written ({kind})")
        duration = (time.perf_counter() - started) * 1000
        return _classify(status, headers, excerpt, duration)

    async def _send_once(
        self, request: RenderedRequest, timeout: float
    ) -> tuple[int, dict[str, str], str]:
        """Send, then read at most EXCERPT_LIMIT bytes of the answer: an endless or huge
        response costs one excerpt, not the process's memory."""
        outgoing = httpx.Request(
            request.method,
            _parsed_url(request.url),
            headers=self._headers(request.headers),
            content=request.body,
            extensions={"timeout": _timeouts(timeout)},
        )
        response = await self.transport.handle_async_request(outgoing)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= EXCERPT_LIMIT:
                    break
        finally:
            await response.aclose()
        body = b"".join(chunks)[:EXCERPT_LIMIT]
        headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
        # PostgreSQL text cannot hold NUL: it becomes U+FFFD, as undecodable bytes do.
        excerpt = body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        return response.status_code, headers, excerpt

    def _headers(self, own: Mapping[str, str]) -> dict[str, str]:
        """The dispatcher's defaults, unless the definition sets the same header
        (in any case of its name)."""
        names = {name.lower() for name in own}
        merged = {k: v for k, v in self.headers.items() if k.lower() not in names}
        merged.update(own)
        return merged

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    """Most webhooks post every event to the same URL: parse it once."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _timeouts(timeout: float) -> dict[str, float]:
    connect = min(timeout, CONNECT_TIMEOUT)
    return {"connect": connect, "read": timeout, "write": timeout, "pool": timeout}


def _transport_failure(exc: BaseException, started: float, timeout: float, url: str) -> Outcome:
    """What a transport error means for the delivery. Transports label errors
    loosely (a refused connection can arrive as a connect timeout), so the chain of
    causes decides."""
    refused = refused_in(exc)
    if refused is not None:
        return _failure("failed", started, str(refused))
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return _failure("failed", started, _scrub(f"the URL cannot be used: {exc}", url))
    connection = _connection_error_in(exc)
    if connection is not None:
        reason = connection.strerror or type(connection).__name__
        return _failure("retry", started, f"connection failed: {reason}")
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return _failure("retry", started, f"timed out after {timeout:g}s")
    if isinstance(exc, httpx.ConnectError):
        return _failure("retry", started, _scrub(f"connection failed: {exc}", url))
    detail = str(exc) or type(exc).__name__
    return _failure("retry", started, _scrub(f"transport error: {detail}", url))


def _connection_error_in(exc: BaseException) -> OSError | None:
    """A refused or reset connection somewhere behind `exc`, if any."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return None
        nested = getattr(current, "os_error", None)
        for candidate in (current, nested):
            if isinstance(candidate, ConnectionError):
                return candidate
        current = current.__cause__ or current.__context__
    return None


def _classify(status: int, headers: dict[str, str], excerpt: str, duration: float) -> Outcome:
    retry_after = headers.get("retry-after") if status in (429, 503) else None
    if 200 <= status < 300:
        return Outcome("delivered", duration, status, headers, excerpt)
    if status == 410:
        return Outcome("gone", duration, status, headers, excerpt, "HTTP 410 Gone")
    if status in RETRYABLE_STATUSES:
        return Outcome("retry", duration, status, headers, excerpt, f"HTTP {status}", retry_after)
    if 300 <= status < 400:
        return Outcome(
            "failed",
            duration,
            status,
            headers,
            excerpt,
            f"HTTP {status}: redirects are not followed",
        )
    return Outcome("failed", duration, status, headers, excerpt, f"HTTP {status}")


def _failure(kind: Kind, started: float, error: str) -> Outcome:
    return Outcome(kind, (time.perf_counter() - started) * 1000, error=error)


def _scrub(message: str, url: str) -> str:
    """Transport errors may quote the URL; its secret parts never reach the log."""
    masked = mask_url(url)
    if url in message:
        message = message.replace(url, masked)
    path = urlsplit(url).path
    if len(path) > 1 and path in message:
        message = message.replace(path, "/****")
    return message
