"""Anonymity levels: every cell of the table, as header lists in and out."""

from __future__ import annotations

import pytest

from ferryman.http1.headers import forward_request_headers
from ferryman.pipeline.admit.anonymity import DEFAULT_IDENTIFYING, AnonymityPolicy, forwarded_for

VIA = b"1.1 proxy:3128 (ferryman)"
CLIENT_SENT = [
    (b"Host", b"example.com"),
    (b"User-Agent", b"ua"),
    (b"Via", b"1.1 upstream-proxy"),
    (b"X-Forwarded-For", b"203.0.113.7"),
    (b"Forwarded", b"for=203.0.113.7"),
    (b"X-Real-IP", b"203.0.113.7"),
    (b"From", b"me@example.com"),
    (b"x-client-ip", b"203.0.113.7"),
    (b"Client-IP", b"203.0.113.7"),
    (b"True-Client-IP", b"203.0.113.7"),
    (b"Proxy-Authorization", b"Basic YTpi"),
    (b"Accept", b"*/*"),
]


def at_origin(level: str, client_ip: str = "10.0.0.9", sent: list[tuple[bytes, bytes]] = CLIENT_SENT
              ) -> dict[bytes, list[bytes]]:
    """What the origin receives: the real header rewriter (Via on), then the anonymity policy."""
    policy = AnonymityPolicy.compile(level)
    headers, _ = forward_request_headers(sent, frozenset(), VIA)
    out: dict[bytes, list[bytes]] = {}
    for n, v in policy.apply(headers, client_ip):
        out.setdefault(n.lower(), []).append(v)
    return out


def test_transparent_adds_via_and_the_client_address() -> None:
    got = at_origin("transparent")
    assert got[b"via"] == [b"1.1 upstream-proxy, " + VIA]
    assert got[b"x-forwarded-for"] == [b"203.0.113.7, 10.0.0.9"]
    assert got[b"forwarded"] == [b"for=203.0.113.7, for=10.0.0.9"]
    assert got[b"x-real-ip"] == [b"203.0.113.7"]
    for name in (b"from", b"x-client-ip", b"client-ip", b"true-client-ip", b"user-agent", b"accept"):
        assert name in got
    assert b"proxy-authorization" not in got


def test_transparent_without_client_fields_and_ipv6() -> None:
    got = at_origin("transparent", "2001:db8::7", [(b"Accept", b"*/*")])
    assert got[b"x-forwarded-for"] == [b"2001:db8::7"]
    assert got[b"forwarded"] == [b'for="[2001:db8::7]"']
    assert got[b"via"] == [VIA]


def test_transparent_joins_several_client_fields() -> None:
    sent = [(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b" 2.2.2.2 "), (b"Forwarded", b"")]
    got = at_origin("transparent", "10.0.0.1", sent)
    assert got[b"x-forwarded-for"] == [b"1.1.1.1, 2.2.2.2, 10.0.0.1"]
    assert got[b"forwarded"] == [b"for=10.0.0.1"]


def test_anonymous_sends_via_only() -> None:
    got = at_origin("anonymous")
    assert got[b"via"] == [b"1.1 upstream-proxy, " + VIA]
    # nothing about the client is added; what the client itself sent goes on
    assert got[b"x-forwarded-for"] == [b"203.0.113.7"]
    assert got[b"forwarded"] == [b"for=203.0.113.7"]
    assert b"10.0.0.9" not in b"".join(v for vs in got.values() for v in vs)


def test_elite_sends_nothing_that_tells_a_proxy_or_the_client() -> None:
    got = at_origin("elite")
    for name in (b"via", b"x-forwarded-for", b"forwarded", b"x-real-ip", b"from", b"x-client-ip",
                 b"client-ip", b"true-client-ip", b"proxy-authorization"):
        assert name not in got, name
    assert got[b"user-agent"] == [b"ua"] and got[b"accept"] == [b"*/*"]
    assert b"10.0.0.9" not in b"".join(v for vs in got.values() for v in vs)


def test_elite_identifying_list_is_configurable() -> None:
    policy = AnonymityPolicy.compile("elite", ["X-Device-Id"])
    out = policy.apply([(b"From", b"a@b"), (b"X-DEVICE-ID", b"42"), (b"Via", b"x")], "10.0.0.1")
    assert out == [(b"From", b"a@b")]
    assert b"x-device-id" in policy.strip and b"from" not in policy.strip
    assert {n.lower().encode() for n in DEFAULT_IDENTIFYING} <= AnonymityPolicy.compile("elite").strip


def test_nothing_to_change_returns_the_same_list() -> None:
    headers = [(b"Accept", b"*/*")]
    assert AnonymityPolicy.compile("elite").apply(headers, "10.0.0.1") is headers
    assert AnonymityPolicy.compile("anonymous").apply(headers, "10.0.0.1") is headers


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="expected one of transparent, anonymous, elite"):
        AnonymityPolicy.compile("paranoid")
    with pytest.raises(ValueError, match="not a header field name"):
        AnonymityPolicy.compile("elite", ["X Bad"])


def test_forwarded_for() -> None:
    assert forwarded_for("10.0.0.1") == b"for=10.0.0.1"
    assert forwarded_for("::1") == b'for="[::1]"'


def test_elite_strips_in_one_pass_whatever_the_case_and_keeps_the_order() -> None:
    policy = AnonymityPolicy.compile("elite")
    headers = [(b"Accept", b"*/*"), (b"VIA", b"1.1 x"), (b"User-Agent", b"ua"), (b"x-real-ip", b"1.2.3.4"),
               (b"X-Forwarded-For", b"5.6.7.8"), (b"Host-Ish", b"h"), (b"FROM", b"a@b")]
    out = policy.apply(headers, "10.0.0.1")
    assert out == [(b"Accept", b"*/*"), (b"User-Agent", b"ua"), (b"Host-Ish", b"h")]
    assert headers[1] == (b"VIA", b"1.1 x")  # the input list is not changed
