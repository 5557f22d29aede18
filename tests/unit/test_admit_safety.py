"""SSRF guard: the default table under every spelling, laptop mode, the proxy itself."""

from __future__ import annotations

import ipaddress

import pytest

from ferryman.pipeline.admit.safety import (
    DEFAULT_REFUSED,
    SsrfGuard,
    SsrfVerdict,
    classify,
    embedded_ipv4,
    unmapped_ip,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("0:0:0:0:0:0:0:1", "loopback"),
        ("[::1]", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("0:0:0:0:0:ffff:7f00:0001", "loopback"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::127.0.0.1", "loopback"),  # NAT64
        ("2002:7f00:1::1", "loopback"),  # 6to4
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:192.168.0.1", "private"),
        ("2002:c0a8:101::", "private"),
        ("fc00::1", "unique-local"),
        ("fd12:3456:789a::1", "unique-local"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:a9fe:a9fe", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("0.0.0.0", "this-network"),
        ("0.1.2.3", "this-network"),
        ("::ffff:0.0.0.0", "this-network"),
        ("::", "this-network"),
    ],
)
def test_default_table_under_every_spelling(address: str, reason: str) -> None:
    assert classify(address) == reason


@pytest.mark.parametrize(
    "address",
    ["1.1.1.1", "172.15.255.255", "172.32.0.0", "192.169.0.1", "11.0.0.1", "169.253.255.255",
     "2606:4700::1111", "::ffff:8.8.8.8", "fec0::1", "ff02::1", "100.64.0.1", "64:ff9b::808:808"],
)
def test_public_addresses_are_not_classified(address: str) -> None:
    assert classify(address) is None


def test_classify_refuses_non_addresses() -> None:
    assert classify("localhost") == "not-an-address"
    assert classify("127.1") == "not-an-address"  # not a dialled form: route/router.canonical_host


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::ffff:127.0.0.1", "127.0.0.1"), ("::ffff:7f00:1", "127.0.0.1"),
     ("::1", "::1"), ("::127.0.0.1", "::7f00:1"), ("2001:DB8::1", "2001:db8::1")],
)
def test_unmapped_ip(text: str, expected: str) -> None:
    assert unmapped_ip(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", ["", "localhost", "127.1", "[::1]", "10.0.0.256", "127.0.0.1 "])
def test_unmapped_ip_takes_strict_literals_only(text: str) -> None:
    assert unmapped_ip(text) is None


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")
    assert embedded_ipv4(ipaddress.ip_address("::")) == ipaddress.ip_address("::")
    assert embedded_ipv4(ipaddress.ip_address("2001:db8::1")) == ipaddress.ip_address("2001:db8::1")


def test_table_matches_the_documented_rows() -> None:
    nets = {n for n, _ in DEFAULT_REFUSED}
    assert {"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
            "169.254.0.0/16", "fe80::/10", "0.0.0.0/8"} <= nets


OFFICE = ["10.0.0.0/8", "127.0.0.0/8"]
LAPTOP = ["127.0.0.0/8", "::1/128"]


def test_office_clients_refuse_private_unless_a_rule_allows_by_network() -> None:
    g = SsrfGuard.compile(OFFICE, [("0.0.0.0", 3128)])
    assert not g.laptop
    assert g.laptop_note() is not None
    assert g.check("10.1.1.1", 80) == SsrfVerdict(False, "private")
    assert g.check("169.254.169.254", 80) == SsrfVerdict(False, "link-local")
    assert g.check("10.1.1.1", 80, allowed_by_network=True) == SsrfVerdict(True, "private")
    assert g.check("93.184.216.34", 443) == SsrfVerdict(True)
    assert g.check("not an ip", 80) == SsrfVerdict(False, "not-an-address", True)


def test_laptop_mode_allows_private_and_loopback() -> None:
    for clients in (LAPTOP, ["127.0.0.1/32"], ["::1/128"], ["::ffff:127.0.0.1/128"]):
        g = SsrfGuard.compile(clients, [("127.0.0.1", 3128)])
        assert g.laptop, clients
        assert g.laptop_note() is None
        assert g.check("127.0.0.1", 8080).allowed
        assert g.check("192.168.1.10", 80).allowed
    assert not SsrfGuard.compile(["127.0.0.0/8", "192.168.0.0/16"], []).laptop
    assert not SsrfGuard.compile([], []).laptop


@pytest.mark.parametrize(
    "dest", ["127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "::", "0.1.2.3", "64:ff9b::7f00:1"]
)
def test_the_proxy_itself_is_refused_always(dest: str) -> None:
    g = SsrfGuard.compile(LAPTOP, [("127.0.0.1", 3128), ("127.0.0.1", 9900)])
    assert g.laptop
    for port in (3128, 9900):
        assert g.check(dest, port, allowed_by_network=True) == SsrfVerdict(False, "self", True)
    assert g.check(dest, 3129).reason != "self"


def test_wildcard_listener_is_reached_through_any_local_address() -> None:
    own = [("0.0.0.0", 3128), ("::", 3129), ("10.0.0.5", 9900)]
    g = SsrfGuard.compile(OFFICE, own, ["10.0.0.5", "fd00::5"])
    for dest in ("127.0.0.1", "127.3.2.1", "::1", "10.0.0.5", "fd00::5", "::ffff:10.0.0.5", "0.0.0.0"):
        assert g.check(dest, 3128, allowed_by_network=True).reason == "self", dest
        assert g.check(dest, 3129, allowed_by_network=True).reason == "self", dest
    assert g.check("10.0.0.5", 9900, True).reason == "self"
    assert g.check("10.0.0.6", 3128, True).allowed  # another machine's port 3128
    assert g.check("10.0.0.5", 9901, True).allowed
