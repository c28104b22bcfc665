"""The private-address guard: every class of address it refuses, host names that
resolve to them, disguised spellings, and what a deployment may open.

Nothing here connects anywhere but loopback: the decision is tested as a function,
the resolver with a fake, and the connection guard against a receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from reconciler import addresses
from reconciler.dispatch.service import make_sender
from reconciler.dispatch.ssrf import GuardedResolver, NetworkPolicy, TargetRefused
from reconciler.dispatch.transport import ExactUrlTransport
from reconciler.render import RenderedRequest
from tests.support.receiver import Receiver

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.0.0.5": "private",
    "172.16.3.4": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local (cloud metadata lives there)",
    "fe80::1": "link-local (cloud metadata lives there)",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "100.64.0.1": "shared (carrier-grade NAT)",
    "100.127.255.254": "shared (carrier-grade NAT)",
    "fd12:3456::1": "unique-local",
    "240.0.0.1": "reserved",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped IPv6
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local (cloud metadata lives there)",
}


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_each_class_of_address_is_refused(address: str, kind: str) -> None:
    assert NetworkPolicy().refusal(address) == kind


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:85e5", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert NetworkPolicy().refusal(address) is None


def test_a_deployment_opens_private_networks_or_exactly_some_cidrs() -> None:
    assert NetworkPolicy(allow_private=True).refusal("10.0.0.5") is None
    policy = NetworkPolicy.from_options(False, ["10.20.0.0/16", "fd00:1234::/32"])
    assert policy.refusal("10.20.3.4") is None
    assert policy.refusal("fd00:1234::9") is None
    assert policy.refusal("10.21.0.1") == "private"
    assert policy.refusal("127.0.0.1") == "loopback"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_a_literal_address_in_the_url_is_refused_before_anything_is_sent(url: str) -> None:
    with pytest.raises(TargetRefused, match=r"^refused: .* address \(allow with"):
        NetworkPolicy().check_url(url)


def test_a_host_name_is_left_to_the_resolver() -> None:
    NetworkPolicy().check_url("https://hooks.example.com/x")  # no exception


class _FakeResolver(AbstractResolver):
    """Answers every name with fixed addresses, as a DNS server under attack might."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


def _resolve(resolver: GuardedResolver, host: str) -> list[ResolveResult]:
    return asyncio.run(resolver.resolve(host, 443))


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = GuardedResolver(NetworkPolicy(), _FakeResolver("10.1.2.3"))
    with pytest.raises(TargetRefused, match=r"internal\.example\.com resolves to 10\.1\.2\.3"):
        _resolve(resolver, "internal.example.com")


def test_only_the_allowed_addresses_of_a_name_are_connected_to() -> None:
    # A rebinding answer mixing a public and a private address: only the public one
    # is handed to the connector, which connects to exactly what it was given.
    resolver = GuardedResolver(NetworkPolicy(), _FakeResolver("127.0.0.1", "93.184.215.14"))
    assert [r["host"] for r in _resolve(resolver, "rebind.example.com")] == ["93.184.215.14"]


def test_the_real_system_resolver_is_guarded_too() -> None:
    resolver = GuardedResolver(NetworkPolicy())
    with pytest.raises(TargetRefused, match="localhost resolves to"):
        _resolve(resolver, "localhost")


def _send(url: str, policy: NetworkPolicy) -> str | None:
    async def go() -> str | None:
        sender = make_sender(2, policy)
        try:
            outcome = await sender.send(RenderedRequest("POST", url, {}, b"{}"), 5)
        finally:
            await sender.aclose()
        assert outcome.kind == "failed"
        return outcome.error

    return asyncio.run(go())


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9/hook",  # a name for the loopback address
        "http://2130706433:9/hook",  # 127.0.0.1 as one decimal number
        "http://0x7f.1:9/hook",  # hexadecimal and short forms
        "http://127.1:9/hook",
    ],
)
def test_disguised_spellings_of_127_0_0_1_fail_without_a_connection(url: str) -> None:
    error = _send(url, NetworkPolicy())
    assert error is not None
    assert error.startswith(("refused:", "the URL cannot be used:"))


def test_a_refused_target_is_a_permanent_failure_naming_the_reason() -> None:
    error = _send("http://localhost:9/hook", NetworkPolicy())
    assert error == (
        "refused: localhost resolves to 127.0.0.1, a loopback address "
        "(allow with --allow-private-networks or --allow-cidr)"
    )


def test_httpx_default_transport_is_not_what_the_dispatcher_uses() -> None:
    # The guard lives in the resolver of the transport make_sender builds.
    sender = make_sender(1, NetworkPolicy())
    try:
        assert isinstance(sender.transport, ExactUrlTransport)
    finally:
        asyncio.run(sender.aclose())


# -- every spelling of a host is judged as the address it is read as ---------------------

# (URL, the address it must be refused as, as the refusal shows it). Each is a spelling
# that a URL parser, the IDNA codec of the HTTP client or the C library's resolver turns
# into the address.
SPELLINGS = [
    ("http://127.0.0.1/x", "127.0.0.1"),
    ("http://127\u30020\u30020\u30021/x", "127.0.0.1"),  # ideographic full stops
    ("http://127\uff0e0\uff0e0\uff0e1/x", "127.0.0.1"),  # full-width full stops
    ("http://127\uff610\uff610\uff611/x", "127.0.0.1"),  # half-width ideographic
    ("http://10\u30020\u30020\u30025:8080/x", "10.0.0.5"),
    ("http://\uff11\uff12\uff17.0.0.1/x", "127.0.0.1"),  # full-width digits
    ("http://\u2460\u2461\u2466.0.0.1/x", "127.0.0.1"),  # circled digits (NFKC)
    ("http://%31%32%37.0.0.1/x", "127.0.0.1"),  # percent-encoded
    ("http://127.0.0.1%2e/x", "127.0.0.1"),
    ("http://127.0.0.1./x", "127.0.0.1"),  # the root's trailing dot
    ("http://169.254.169.254./latest/meta-data/", "169.254.169.254"),
    ("http://2130706433/x", "127.0.0.1"),  # one decimal number
    ("http://0x7f000001/x", "127.0.0.1"),  # one hexadecimal number
    ("http://0x7f.1/x", "127.0.0.1"),  # hexadecimal and short
    ("http://0X7F.0.0.1/x", "127.0.0.1"),  # upper case
    ("http://0177.0.0.1/x", "127.0.0.1"),  # octal
    ("http://017700000001/x", "127.0.0.1"),
    ("http://127.1/x", "127.0.0.1"),  # short
    ("http://0/x", "0.0.0.0"),
    ("http://[::1]/x", "::1"),  # brackets
    ("http://[::1]:8080/x", "::1"),
    ("http://[0:0:0:0:0:0:0:1]/x", "0:0:0:0:0:0:0:1"),
    ("http://[fe80::1%25eth0]/x", "fe80::1"),  # an IPv6 zone id
    ("http://[FE80::1%25ETH0]/x", "fe80::1"),
    ("http://[::ffff:127.0.0.1]/x", "::ffff:127.0.0.1"),  # IPv4-mapped
    ("http://[::FFFF:7F00:1]/x", "::ffff:7f00:1"),
    ("http://[::ffff:169.254.169.254]/x", "::ffff:169.254.169.254"),
    ("http://a@127.0.0.1/x", "127.0.0.1"),  # userinfo before the real host
    ("http://user:pass@[::1]:80/x", "::1"),
    ("http://hooks.example.com@127.0.0.1/x", "127.0.0.1"),
    ("http://a\\@127.0.0.1/x", "127.0.0.1"),  # a backslash in the userinfo
]

# Spellings whose host is public, or a name the resolver judges when it is looked up.
NOT_ADDRESSES = [
    "https://hooks.example.com/x",
    "http://127.0.0.1:80@hooks.example.com/x",  # the host is the name after the @
    "http://8.8.8.8/x",
    "http://0x08.0x08.0x08.0x08/x",  # 8.8.8.8 in hexadecimal: public
    "http://134744072/x",  # 8.8.8.8 as one number
    "http://[2606:4700::6810:85e5]/x",
    "http://127-0-0-1.example.com/x",
    "http://cafe.example/x",  # hexadecimal letters, but a name
]


@pytest.mark.parametrize(("url", "address"), SPELLINGS)
def test_every_spelling_of_a_private_address_is_refused_as_that_address(
    url: str, address: str
) -> None:
    with pytest.raises(TargetRefused) as refused:
        NetworkPolicy().check_url(url)
    message = str(refused.value)
    assert message.startswith("refused: ")
    assert message.endswith(" address (allow with --allow-private-networks or --allow-cidr)")
    assert f" {address} is " in message or f" means {address}, " in message


@pytest.mark.parametrize("url", NOT_ADDRESSES)
def test_public_addresses_and_names_pass_the_url_check(url: str) -> None:
    NetworkPolicy().check_url(url)  # no exception; names are judged when resolved


def test_a_disguised_spelling_says_which_address_it_means() -> None:
    with pytest.raises(TargetRefused) as refused:
        NetworkPolicy().check_url("http://127\u30020\u30020\u30021:8080/x")
    assert str(refused.value) == (
        "refused: 127\u30020\u30020\u30021 means 127.0.0.1, a loopback address "
        "(allow with --allow-private-networks or --allow-cidr)"
    )


def test_an_allowed_network_opens_every_spelling_of_its_addresses() -> None:
    policy = NetworkPolicy.from_options(False, ["127.0.0.1/32"])
    for url in (
        "http://127\u30020\u30020\u30021/x",
        "http://2130706433/x",
        "http://[::ffff:7f00:1]/",
    ):
        policy.check_url(url)  # no exception
    with pytest.raises(TargetRefused):
        policy.check_url("http://127\u30020\u30020\u30022/x")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127\u30020\u30020\u30021", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("%31%32%37.0.0.1", "127.0.0.1"),
        ("\uff11\uff10.0.0.1", "10.0.0.1"),
        ("4294967296", None),  # past the last IPv4 address: a name
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
        ("hooks.example.com", None),
    ],
)
def test_a_host_reads_as_the_address_the_stack_connects_to(host: str, address: str | None) -> None:
    expected = [] if address is None else [ipaddress.ip_address(address)]
    assert addresses.host_addresses(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "LOCALHOST",
        "localhost.",
        "api.localhost",
        "\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3",
    ],
)
def test_every_spelling_of_localhost_is_a_loopback_name(host: str) -> None:
    assert addresses.is_loopback_name(host)


# -- IPv6 addresses that carry an IPv4 one: the IPv4 address is judged -----------------

CARRIED = [
    # 6to4 (2002::/16): the IPv4 address is bits 16-48
    ("2002:7f00:1::", "6to4-wrapped loopback"),
    ("2002:a00:5::1", "6to4-wrapped private"),
    ("2002:a9fe:a9fe::", "6to4-wrapped link-local (cloud metadata lives there)"),
    ("2002:808:808::1", None),  # 8.8.8.8: public
    # NAT64, the well-known prefix (64:ff9b::/96): the last 32 bits
    ("64:ff9b::7f00:1", "NAT64-wrapped loopback"),
    ("64:ff9b::a00:5", "NAT64-wrapped private"),
    ("64:ff9b::a9fe:a9fe", "NAT64-wrapped link-local (cloud metadata lives there)"),
    ("64:ff9b::808:808", None),
    # NAT64, local-use (64:ff9b:1::/48): each network places the IPv4 address itself
    ("64:ff9b:1::808:808", "local-use NAT64"),
    # Teredo (2001::/32): server, then the client's address inverted in the last 32 bits
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo-wrapped loopback"),  # client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "Teredo-wrapped private"),  # client 10.0.0.5
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "Teredo-wrapped private"),  # server 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),  # server 65.54.227.120, client 8.8.8.8
]


@pytest.mark.parametrize(("address", "kind"), CARRIED)
def test_an_ipv4_address_carried_in_ipv6_is_judged_itself(address: str, kind: str | None) -> None:
    assert NetworkPolicy().refusal(address) == kind
    if kind is not None:
        with pytest.raises(TargetRefused, match=re.escape(f" {kind} address")):
            NetworkPolicy().check_url(f"http://[{address}]/x")


def test_opening_the_carried_ipv4_network_opens_its_wrapped_forms() -> None:
    policy = NetworkPolicy.from_options(False, ["10.0.0.0/8"])
    assert policy.refusal("2002:a00:5::1") is None
    assert policy.refusal("64:ff9b::a00:5") is None
    assert policy.refusal("2002:7f00:1::") == "6to4-wrapped loopback"
    assert NetworkPolicy.from_options(False, ["64:ff9b:1::/48"]).refusal("64:ff9b:1::1") is None


def test_a_name_resolving_to_a_wrapped_private_address_is_refused() -> None:
    resolver = GuardedResolver(NetworkPolicy(), _FakeResolver("2002:a00:5::1", "64:ff9b::7f00:1"))
    with pytest.raises(TargetRefused, match=r"resolves to 2002:a00:5::1, a 6to4-wrapped private"):
        _resolve(resolver, "six.example.com")


# -- the connection itself: an address is checked where it is connected to -------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
        assert not running.errors, running.errors


def _sent(url: str, policy: NetworkPolicy) -> tuple[str, str | None]:
    """Hand `url` straight to the sender, past the worker's own URL check."""

    async def go() -> tuple[str, str | None]:
        sender = make_sender(2, policy)
        try:
            outcome = await sender.send(RenderedRequest("POST", url, {}, b"{}"), 5)
        finally:
            await sender.aclose()
        return outcome.kind, outcome.error

    return asyncio.run(go())


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127\u30020\u30020\u30021",
    "127\uff0e0\uff0e0\uff0e1",
    "127\uff610\uff610\uff611",
    "a@127.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_the_sender_refuses_to_connect_to_any_spelling_of_loopback(
    receiver: Receiver, host: str
) -> None:
    kind, error = _sent(f"http://{host}:{receiver.port}/hook", NetworkPolicy())
    assert (kind, error) == (
        "failed",
        "refused: 127.0.0.1 is a loopback address "
        "(allow with --allow-private-networks or --allow-cidr)",
    )
    assert receiver.requests() == []


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_the_same_spellings_reach_loopback_once_the_deployment_allows_it(
    receiver: Receiver, host: str
) -> None:
    # The test above means something only if these URLs do lead to the receiver.
    allowed = NetworkPolicy.from_options(False, ["127.0.0.1/32"])
    assert _sent(f"http://{host}:{receiver.port}/hook", allowed) == ("delivered", None)
    assert len(receiver.requests("/hook")) == 1
