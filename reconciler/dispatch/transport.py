"""httpx's interface over aiohttp's connection handling, sending URLs as rendered.

httpx-aiohttp hands aiohttp the URL as text, and aiohttp then decodes `%2E` and
collapses `.`/`..` segments: an event value of ".." in a path placeholder would
climb out of its segment. This transport hands aiohttp the URL already encoded,
so the request line is exactly what render() produced.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx
import yarl
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions


class ExactUrlTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        with map_aiohttp_exceptions():
            data: Any = request.content or None
            response = await self.client.request(
                method=request.method,
                url=_encoded(str(request.url)),
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=_client_timeout(
                    timeout.get("connect"), timeout.get("read"), timeout.get("pool")
                ),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )


def wire_host(url: str) -> str | None:
    """The host the connection is made to for `url`, as the sender hands it over:
    parsed by httpx (which IDNA-encodes it), then by yarl; None when it cannot be
    parsed, which the sender reports itself."""
    try:
        return _encoded(str(httpx.URL(url))).raw_host
    except (httpx.InvalidURL, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _encoded(url: str) -> yarl.URL:
    return yarl.URL(url, encoded=True)


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None, pool: float | None) -> ClientTimeout:
    return ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)
