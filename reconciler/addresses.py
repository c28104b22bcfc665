"""Which address a URL's host means, however it is spelled, and whether it is public.

A host reaches the connection only after URL parsers, IDNA codecs and resolvers
have rewritten it: `127。0。0。1` (ideographic full stops) becomes `127.0.0.1`,
`0x7f.1` and `2130706433` are read by the C library as 127.0.0.1, `%31` is `1`,
`[::1]` loses its brackets, `fe80::1%eth0` its zone, `127.0.0.1.` its root dot.
`readings` gives every spelling a host may be read as, so that a guard judges
the address the stack connects to and not the text it was handed.

Some IPv6 addresses only carry an IPv4 one to a gateway that sends it on
(IPv4-mapped, 6to4, NAT64, Teredo): `address_refusal` judges the IPv4 address
inside, whatever Python's `ipaddress` calls the wrapper (which changes between
Python versions).

Standard library only: `validate` uses it, and must not pay for importing an
HTTP client.
"""

from __future__ import annotations

import contextlib
import ipaddress
import unicodedata
from collections.abc import Iterable, Iterator
from urllib.parse import unquote

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix, RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use, RFC 8215
# The full stops IDNA (UTS #46, RFC 3490) reads as ".".
_FULL_STOPS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_IPV4_CHARACTERS = frozenset("0123456789abcdefxABCDEFX.")
_MAX_READINGS = 64  # a host has a handful; this bounds a hostile one


def readings(host: str) -> frozenset[str]:
    """`host` and every spelling a URL parser, IDNA codec or resolver may turn it
    into: lower case, percent-decoded, IDNA-mapped (Unicode full stops, full-width
    and other compatibility digits), without brackets, zone id or trailing dots.
    Each rewriting is applied to the results of the others, until nothing new comes."""
    seen: set[str] = set()
    pending = [host]
    while pending and len(seen) < _MAX_READINGS:
        text = pending.pop()
        if text in seen:
            continue
        seen.add(text)
        pending.extend(spelling for spelling in _rewritings(text) if spelling not in seen)
    return frozenset(seen)


def _rewritings(text: str) -> Iterator[str]:
    yield text.lower()
    if "%" in text:
        yield unquote(text)
        if ":" in text:
            yield text.split("%", 1)[0]  # an IPv6 zone id: fe80::1%eth0, %25eth0
    if text.startswith("[") and text.endswith("]"):
        yield text[1:-1]
    if text.endswith("."):
        yield text.rstrip(".")
    if not text.isascii():
        yield text.translate(_FULL_STOPS)
        yield unicodedata.normalize("NFKC", text)
        with contextlib.suppress(UnicodeError):
            yield text.encode("idna").decode("ascii")  # nameprep, as IDNA 2003 reads it


def parse_address(text: str) -> Address | None:
    """The address `text` spells, in the standard forms or the legacy IPv4 ones
    that inet_aton and the WHATWG URL standard still accept (`2130706433`,
    `0x7f.1`, `0177.0.0.1`, `127.1`); None for a name."""
    # Most hosts are names: tell them apart without the cost of a ValueError.
    if ":" not in text and not _IPV4_CHARACTERS.issuperset(text):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _legacy_ipv4(text)


def host_addresses(host: str) -> list[Address]:
    """Every address some reading of `host` spells, without repeats."""
    found: dict[Address, None] = {}
    for reading in sorted(readings(host)):
        address = parse_address(reading)
        if address is not None:
            found.setdefault(_without_scope(address))
    return list(found)


def is_loopback_name(host: str) -> bool:
    """`localhost` or a name under it, in any spelling (resolvers answer 127.0.0.1)."""
    return any(r == "localhost" or r.endswith(".localhost") for r in readings(host))


def address_refusal(ip: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why the dispatcher refuses `ip` (its kind), or None when it may be connected
    to: a public address, or one inside a network the deployment opened. An IPv4
    address carried inside an IPv6 one is judged itself."""
    allowed = tuple(allowed)
    if _within(ip, allowed):
        return None
    carried = _carried_ipv4(ip)
    if carried is None:
        return address_kind(ip)
    wrapper, inner = carried
    if not inner:  # the wrapper says where the IPv4 address is; no public one is there
        return wrapper
    for address in inner:
        if _within(address, allowed):
            continue
        kind = address_kind(address)
        if kind is not None:
            return kind if wrapper == "IPv4-mapped" else f"{wrapper}-wrapped {kind}"
    return None


def address_kind(ip: Address) -> str | None:
    """What kind of non-public address `ip` is, or None when it is public."""
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
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def _carried_ipv4(ip: Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """(the kind of wrapper, the IPv4 addresses it carries) for an IPv6 address that
    a gateway turns into IPv4 traffic; None for any other address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", [ip.ipv4_mapped]
    if ip.sixtofour is not None:  # 2002::/16
        return "6to4", [ip.sixtofour]
    if ip.teredo is not None:  # 2001::/32: the Teredo server and the client behind it
        server, client = ip.teredo
        return "Teredo", [client, server]
    if ip in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip in _NAT64_LOCAL:
        # Local-use: where the IPv4 address sits depends on the prefix length each
        # network chose, and no public receiver lives behind it.
        return "local-use NAT64", []
    return None


def _within(ip: Address, networks: tuple[Network, ...]) -> bool:
    return any(ip.version == network.version and ip in network for network in networks)


def _without_scope(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(int(ip))
    return ip


def _legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The WHATWG URL standard's IPv4 parser: one to four parts, each decimal, octal
    (leading 0) or hexadecimal (0x), the last filling the bytes that are left."""
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    if any(number > 255 for number in numbers[:-1]):
        return None
    if numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int | None:
    if not part or not part.isascii():
        return None
    base = 10
    if part[:2].lower() == "0x":
        part, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, base = part[1:], 8
    if not part:
        return 0
    try:
        return int(part, base) if part.isalnum() else None
    except ValueError:
        return None
