"""Keep the dispatcher from becoming a way into the network it runs in.

Every address a request would go to is checked: private, loopback, link-local
(cloud metadata at 169.254.169.254 included), multicast, reserved, unspecified,
shared (CGNAT), unique-local IPv6 and IPv4-mapped IPv6 forms of those are
refused unless the deployment allows them. Host names are checked in the
resolver that the HTTP client connects with, so the address checked is the
address connected to: a DNS answer that changes between check and connect
(rebinding) cannot slip past.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
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
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed) or self.allow_private:
            return None
        return address_kind(ip)

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is an address literal that is not allowed.

        (Host names are checked when they are resolved, by GuardedResolver.)
        """
        refused = _url_refusal(self, url)
        if refused is not None:
            raise TargetRefused(refused)


@functools.lru_cache(maxsize=4096)
def _url_refusal(policy: NetworkPolicy, url: str) -> str | None:
    """check_url's verdict, kept: most webhooks send every event to the same URL."""
    host = urlsplit(url).hostname or ""
    try:
        kind = policy.refusal(host)
    except ValueError:
        return None  # a name, not an address
    return None if kind is None else f"refused: {host} is a {kind} address ({ALLOW_HINT})"


def address_kind(ip: Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata lives there)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "unique-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


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
            kind = self.policy.refusal(first) if results else "unknown"
            raise TargetRefused(
                f"refused: {host} resolves to {first}, a {kind} address ({ALLOW_HINT})"
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
