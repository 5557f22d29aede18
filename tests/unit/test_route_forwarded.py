"""The hop chain (issue 10.5, 10.6): X-Forwarded-* and Forwarded from one record, and the
real client found by walking it from the right past trusted proxies (nginx real_ip_recursive)."""

from __future__ import annotations

import ipaddress

import pytest

from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.route.forwarded import Hop, add_forwarded, read_chain, real_client

TRUSTED = ClientAcl((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")))
SPOOF = [(b"X-Forwarded-For", b"6.6.6.6"), (b"Forwarded", b"for=6.6.6.6"), (b"X-Forwarded-Proto", b"https"),
         (b"X-Real-IP", b"6.6.6.6")]


def fields(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in headers}


@pytest.mark.parametrize(
    ("xff", "peer", "client"),
    [
        (None, "10.0.0.1", "10.0.0.1"),  # a trusted peer that names nobody is the client
        ("203.0.113.5", "10.0.0.1", "203.0.113.5"),
        ("203.0.113.5, 10.0.0.2", "10.0.0.1", "203.0.113.5"),  # trusted hops skipped
        ("203.0.113.5, 198.51.100.7, 10.0.0.2", "10.0.0.1", "198.51.100.7"),  # first untrusted from the right
        ("10.9.9.9, 10.0.0.2", "10.0.0.1", "10.9.9.9"),  # all trusted: the leftmost
        ("203.0.113.5,10.0.0.2", "10.0.0.1", "203.0.113.5"),  # no space after the comma
        ("203.0.113.5:4711, [2001:db8::1]:80", "10.0.0.1", "2001:db8::1"),  # ports dropped
        ("2001:db8::5, 2001:db8:ffff::1", "10.0.0.1", "2001:db8::5"),
        ("203.0.113.5, garbage, 10.0.0.2", "10.0.0.1", "10.0.0.2"),  # not an address: stop at the last one
        ("unknown", "10.0.0.1", "10.0.0.1"),
        ("203.0.113.5, unknown", "10.0.0.1", "10.0.0.1"),
        ("", "10.0.0.1", "10.0.0.1"),
    ],
)
def test_real_client_walk(xff: str | None, peer: str, client: str) -> None:
    headers = [(b"X-Forwarded-For", xff.encode())] if xff is not None else []
    chain = read_chain(headers, "x-forwarded-for")
    assert real_client(chain, peer, TRUSTED.allows) == client


@pytest.mark.parametrize(
    ("fwd", "client"),
    [
        ("for=203.0.113.5", "203.0.113.5"),
        ('for="[2001:db8::9]:443";proto=https, for=10.0.0.2', "2001:db8::9"),
        ("for=203.0.113.5;proto=https, for=198.51.100.7;host=a.example, for=10.0.0.2", "198.51.100.7"),
        ('for=_hidden, for=10.0.0.2', "10.0.0.2"),  # an obfuscated node is not an address
        ('for="203.0.113.5";host="a,b.example", for=10.0.0.2', "203.0.113.5"),  # comma inside quotes
    ],
)
def test_real_client_walk_over_forwarded(fwd: str, client: str) -> None:
    chain = read_chain([(b"Forwarded", fwd.encode())], "forwarded")
    assert real_client(chain, "10.0.0.1", TRUSTED.allows) == client


def test_read_chain_takes_proto_and_host_for_the_first_hop() -> None:
    chain = read_chain(
        [(b"X-Forwarded-For", b"203.0.113.5, 10.0.0.2"), (b"X-Forwarded-Proto", b"https"),
         (b"X-Forwarded-Host", b"shop.example")], "x-forwarded-for")
    assert chain == (Hop("203.0.113.5", b"https", b"shop.example"), Hop("10.0.0.2"))


def test_untrusted_client_values_are_replaced() -> None:
    out = fields(add_forwarded(list(SPOOF), "192.0.2.9", "http", b"site.example", None))
    assert out[b"x-forwarded-for"] == b"192.0.2.9"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"site.example"
    assert out[b"forwarded"] == b'for=192.0.2.9;proto=http;host="site.example"'
    assert b"x-real-ip" not in out  # dropped from an untrusted client


def test_trusted_proxy_chain_is_one_record() -> None:
    """Issue 10.5: a balancer that sends only X-Forwarded-For/-Proto; Forwarded agrees with them."""
    hdrs = [(b"X-Forwarded-For", b"203.0.113.5"), (b"X-Forwarded-Proto", b"https")]
    out = fields(add_forwarded(hdrs, "10.1.2.3", "http", b"site", read_chain(hdrs, "x-forwarded-for")))
    assert out[b"x-forwarded-for"] == b"203.0.113.5, 10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"forwarded"] == b"for=203.0.113.5;proto=https, for=10.1.2.3;proto=http;host=site"


def test_the_other_incoming_field_is_not_mixed_in() -> None:
    """The chain comes from one source: a Forwarded that disagrees with X-Forwarded-For is replaced."""
    chain = read_chain(SPOOF, "x-forwarded-for")
    out = fields(add_forwarded(list(SPOOF), "10.1.2.3", "http", b"site", chain))
    assert out[b"x-forwarded-for"] == b"6.6.6.6, 10.1.2.3"
    assert out[b"forwarded"] == b"for=6.6.6.6;proto=https, for=10.1.2.3;proto=http;host=site"
    fchain = read_chain([(b"Forwarded", b'for="[2001:db8::7]";proto=https;host=shop.example')], "forwarded")
    out = fields(add_forwarded([(b"X-Forwarded-For", b"1.1.1.1")], "10.1.2.3", "http", b"site", fchain))
    assert out[b"x-forwarded-for"] == b"2001:db8::7, 10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"shop.example"
    assert out[b"forwarded"] == (
        b'for="[2001:db8::7]";proto=https;host="shop.example", for=10.1.2.3;proto=http;host=site'
    )


def test_garbage_is_rendered_not_copied() -> None:
    hdrs = [(b"X-Forwarded-For", b'1.2.3.4, x";by=evil'), (b"X-Forwarded-Proto", b"https;evil=1")]
    out = fields(add_forwarded(hdrs, "10.1.2.3", "http", None, read_chain(hdrs, "x-forwarded-for")))
    assert out[b"x-forwarded-for"] == b"1.2.3.4, unknown, 10.1.2.3"
    assert out[b"forwarded"] == b"for=1.2.3.4, for=unknown, for=10.1.2.3;proto=http"
    assert out[b"x-forwarded-proto"] == b"http"


def test_x_real_ip() -> None:
    chain = read_chain(SPOOF, "x-forwarded-for")
    kept = fields(add_forwarded(list(SPOOF), "10.1.2.3", "http", None, chain))
    assert kept[b"x-real-ip"] == b"6.6.6.6"  # from a trusted peer, passed on
    hdrs = add_forwarded(list(SPOOF), "10.1.2.3", "http", None, chain, real_ip="6.6.6.6")
    assert [v for k, v in hdrs if k.lower() == b"x-real-ip"] == [b"6.6.6.6"]  # set once, by ferryman
    hdrs = add_forwarded(list(SPOOF), "192.0.2.1", "http", None, None, real_ip="192.0.2.1")
    assert [v for k, v in hdrs if k.lower() == b"x-real-ip"] == [b"192.0.2.1"]


def test_ipv6_node_is_bracketed_and_quoted() -> None:
    out = fields(add_forwarded([], "2001:db8::1", "https", None, None))
    assert out[b"forwarded"] == b'for="[2001:db8::1]";proto=https'
    assert b"x-forwarded-host" not in out


def test_other_headers_pass_in_order() -> None:
    hdrs = [(b"Accept", b"*/*"), (b"X-Forwarded-For", b"1.1.1.1"), (b"User-Agent", b"t")]
    out = add_forwarded(hdrs, "192.0.2.1", "http", b"h", None)
    assert [k for k, _ in out][:2] == [b"Accept", b"User-Agent"]
