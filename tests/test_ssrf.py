"""The private-address guard: every class of address it refuses, host names that
resolve to them, disguised spellings, and what a deployment may open."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from reconciler.dispatch.service import make_sender
from reconciler.dispatch.ssrf import GuardedResolver, NetworkPolicy, TargetRefused
from reconciler.dispatch.transport import ExactUrlTransport
from reconciler.render import RenderedRequest

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
