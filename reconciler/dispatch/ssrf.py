"""Keep the dispatcher from becoming a way into the network it runs in.

Every address a request would go to is checked: private, loopback, link-local
(cloud metadata at 169.254.169.254 included), multicast, reserved, unspecified,
shared (CGNAT), unique-local IPv6, and the IPv4 address inside IPv4-mapped,
6to4, NAT64 and Teredo IPv6 ones, are refused unless the deployment allows them.

The check sits where the connection is made: host names in the resolver the
HTTP client connects with, and every address, a literal one included, in the
socket factory, just before the socket connects to it. So the address checked is
the address connected to: neither a DNS answer that changes between check and
connect (rebinding) nor a spelling that the client rewrites into an address
(`127。0。0。1`, `0x7f.1`) can slip past. `check_url` refuses the same URLs
before a request is built, reading the host as the sender will.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from reconciler.addresses import Address, Network, address_refusal, host_addresses
from reconciler.dispatch.transport import wire_host

AddrInfo = tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]
ALLOW_HINT = "allow with --allow-private-networks or --allow-cidr"


class TargetRefused(OSError):
    """The request's destination is not allowed; the message says which and why."""


@dataclass(frozen=True)
class NetworkPolicy:
    allow_private: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_options(cls, allow_private: bool, cidrs: Sequence[str]) -> NetworkPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def refusal(self, address: str) -> str | None:
        """Why `address` is refused (its kind), or None when it is allowed."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return self.address_refusal(ip)

    def address_refusal(self, ip: Address) -> str | None:
        if self.allow_private:
            return None
        return address_refusal(ip, self.allowed)

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host, in any reading of it, is an address that is not
        allowed: the host as written and as the sender hands it to the connection.

        (Host names are checked when they are resolved, by GuardedResolver, and every
        address again by guarded_socket when it is connected to.)
        """
        refused = _url_refusal(self, _up_to_path(url))
        if refused is not None:
            raise TargetRefused(refused)


def _up_to_path(url: str) -> str:
    """The scheme and authority of `url`: all that its host depends on (the authority
    ends at the first "/", "?" or "#", RFC 3986), so that a path or query that differs
    per event does not miss check_url's cache."""
    start = url.find("//")
    if start < 0:
        return url
    end = len(url)
    for mark in "/?#":
        found = url.find(mark, start + 2)
        if 0 <= found < end:
            end = found
    return url[:end]


@functools.lru_cache(maxsize=4096)
def _url_refusal(policy: NetworkPolicy, url: str) -> str | None:
    """check_url's verdict, kept: most webhooks send every event to the same host."""
    for host in _hosts(url):
        for ip in host_addresses(host):
            kind = policy.address_refusal(ip)
            if kind is None:
                continue
            if _as_written(host) == ip:
                return f"refused: {host} is {_a(kind)} address ({ALLOW_HINT})"
            return f"refused: {host} means {ip}, {_a(kind)} address ({ALLOW_HINT})"
    return None


def _as_written(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiouAEIOU" else "a ") + kind


def _hosts(url: str) -> list[str]:
    """The host of `url` as written (urlsplit keeps Unicode, brackets aside) and as the
    sender hands it to the connection (httpx's IDNA encoding, then yarl's)."""
    hosts = []
    with contextlib.suppress(ValueError):  # then the sender cannot parse it either
        hosts.append(urlsplit(url).hostname or "")
    sent = wire_host(url)
    if sent is not None and sent not in hosts:
        hosts.append(sent)
    return hosts


def guarded_socket(policy: NetworkPolicy) -> Callable[[AddrInfo], socket.socket]:
    """A socket factory for aiohttp's connector that refuses to make a socket for an
    address the policy does not allow. The connector calls it with the very address
    it is about to connect to, literal addresses included (those never reach the
    resolver)."""

    def make(addr_info: AddrInfo) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = str(sockaddr[0])
        try:
            kind = policy.refusal(address)
        except ValueError:  # never from a TCP connector; refused all the same
            kind = "unknown"
        if kind is not None:
            raise TargetRefused(f"refused: {address} is {_a(kind)} address ({ALLOW_HINT})")
        return socket.socket(family=family, type=type_, proto=proto)

    return make


class GuardedResolver(AbstractResolver):
    """Resolves like the system does, then keeps only the allowed addresses."""

    def __init__(self, policy: NetworkPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner  # the system's, made on first use: it binds to the running loop

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.inner is None:
            self.inner = ThreadedResolver()
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.refusal(r["host"]) is None]
        if not allowed:
            first = results[0]["host"] if results else "nothing"
            kind = (self.policy.refusal(first) if results else None) or "unknown"
            raise TargetRefused(
                f"refused: {host} resolves to {first}, {_a(kind)} address ({ALLOW_HINT})"
            )
        return allowed

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()


def refused_in(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused behind an exception that a transport wrapped, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TargetRefused):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)
        if isinstance(nested, TargetRefused):
            return nested
        current = current.__cause__ or current.__context__
    return None
