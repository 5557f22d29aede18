"""Hop-by-hop removal and Via handling for both directions."""

from __future__ import annotations

import pytest

from ferryman.http1.events import Headers
from ferryman.http1.headers import (
    HOP_BY_HOP,
    forward_request_headers,
    forward_response_headers,
    upgrade_offer,
)

VIA = b"1.1 proxy.local:3128 (ferryman)"

FIXED_HOP_BY_HOP = [
    b"Connection",
    b"Proxy-Connection",
    b"Keep-Alive",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
    b"Content-Length",
    b"Expect",
]


def names(headers: Headers) -> list[bytes]:
    return [n for n, _ in headers]


# -- requests ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXED_HOP_BY_HOP)
def test_request_drops_each_fixed_hop_by_hop_field(name: bytes) -> None:
    for spelled in (name, name.lower(), name.upper()):
        out, _ = forward_request_headers([(spelled, b"v"), (b"Accept", b"*/*")], frozenset(), None)
        assert out == [(b"Accept", b"*/*")]


def test_hop_by_hop_set_is_lowercase() -> None:
    assert {n.lower() for n in FIXED_HOP_BY_HOP} == set(HOP_BY_HOP)


def test_request_drops_host_because_serializer_writes_it() -> None:
    out, _ = forward_request_headers([(b"Host", b"a"), (b"X", b"1")], frozenset(), None)
    assert out == [(b"X", b"1")]


def test_request_drops_fields_named_in_connection() -> None:
    headers = [
        (b"Connection", b"X-Secret, Cookie"),
        (b"X-Secret", b"s"),
        (b"x-secret", b"t"),
        (b"COOKIE", b"c=1"),
        (b"X-Kept", b"k"),
    ]
    out, _ = forward_request_headers(headers, frozenset({b"x-secret", b"cookie"}), None)
    assert out == [(b"X-Kept", b"k")]


def test_request_keeps_end_to_end_fields_in_order_and_case() -> None:
    headers = [
        (b"User-Agent", b"curl/8"),
        (b"Accept", b"*/*"),
        (b"Connection", b"keep-alive"),
        (b"X-MiXeD", b"v"),
        (b"Cookie", b"a=1"),
    ]
    out, _ = forward_request_headers(headers, frozenset({b"keep-alive"}), None)
    assert out == [
        (b"User-Agent", b"curl/8"),
        (b"Accept", b"*/*"),
        (b"X-MiXeD", b"v"),
        (b"Cookie", b"a=1"),
    ]


def test_request_via_is_added_when_absent() -> None:
    out, looped = forward_request_headers([(b"Accept", b"*/*")], frozenset(), VIA)
    assert out == [(b"Accept", b"*/*"), (b"Via", VIA)]
    assert looped is False


def test_request_via_is_appended_to_existing_via_fields() -> None:
    headers = [
        (b"via", b"1.0 fred"),
        (b"Accept", b"*/*"),
        (b"Via", b"1.1 other.example:8080 (squid)"),
    ]
    out, looped = forward_request_headers(headers, frozenset(), VIA)
    assert looped is False
    assert out == [
        (b"Accept", b"*/*"),
        (b"Via", b"1.0 fred, 1.1 other.example:8080 (squid), " + VIA),
    ]
    assert names(out).count(b"Via") == 1


def test_request_via_disabled_keeps_existing_via_untouched() -> None:
    out, looped = forward_request_headers([(b"Via", b"1.0 fred")], frozenset(), None)
    assert out == [(b"Via", b"1.0 fred")]
    assert looped is False


def test_request_without_via_anywhere_adds_none() -> None:
    out, _ = forward_request_headers([(b"Accept", b"*/*")], frozenset(), None)
    assert b"Via" not in names(out)


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param([VIA], id="exact"),
        pytest.param([b"1.0 fred, 1.1 proxy.local:3128 (ferryman)"], id="in-list"),
        pytest.param([b"1.0 fred", b"1.1 proxy.local:3128"], id="second-field-no-comment"),
        pytest.param([b"HTTP/1.1 proxy.local:3128"], id="other-protocol-spelling"),
    ],
)
def test_request_via_loop_is_detected(incoming: list[bytes]) -> None:
    headers = [(b"Via", v) for v in incoming]
    _, looped = forward_request_headers(headers, frozenset(), VIA)
    assert looped is True


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(b"1.1 proxy.local:3129 (ferryman)", id="other-port"),
        pytest.param(b"1.1 proxy.local.example:3128", id="other-host"),
        pytest.param(b"1.1 fred (proxy.local:3128)", id="token-only-in-comment"),
    ],
)
def test_request_via_without_our_token_is_not_a_loop(incoming: bytes) -> None:
    _, looped = forward_request_headers([(b"Via", incoming)], frozenset(), VIA)
    assert looped is False


def test_request_loop_detection_is_off_when_via_is_off() -> None:
    _, looped = forward_request_headers([(b"Via", VIA)], frozenset(), None)
    assert looped is False


def test_request_input_is_not_mutated() -> None:
    headers = [(b"Connection", b"close"), (b"Via", b"1.0 a"), (b"X", b"1")]
    before = list(headers)
    forward_request_headers(headers, frozenset({b"close"}), VIA)
    assert headers == before


# -- responses -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXED_HOP_BY_HOP)
def test_response_drops_each_fixed_hop_by_hop_field(name: bytes) -> None:
    out = forward_response_headers([(name, b"v"), (b"ETag", b'"x"')], frozenset(), None)
    assert out == [(b"ETag", b'"x"')]


def test_response_drops_fields_named_in_connection() -> None:
    headers = [(b"Connection", b"X-Internal"), (b"X-Internal", b"1"), (b"Server", b"s")]
    out = forward_response_headers(headers, frozenset({b"x-internal"}), None)
    assert out == [(b"Server", b"s")]


def test_response_keeps_end_to_end_fields() -> None:
    headers = [
        (b"Date", b"d"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Type", b"text/html"),
    ]
    assert forward_response_headers(headers, frozenset(), None) == headers


def test_response_via_appended() -> None:
    out = forward_response_headers(
        [(b"Via", b"1.1 origin-cdn"), (b"Server", b"s")], frozenset(), VIA
    )
    assert out == [(b"Server", b"s"), (b"Via", b"1.1 origin-cdn, " + VIA)]


def test_response_via_added_when_absent() -> None:
    out = forward_response_headers([(b"Server", b"s")], frozenset(), VIA)
    assert out == [(b"Server", b"s"), (b"Via", VIA)]


def test_response_host_field_is_not_special() -> None:
    # Only requests get Host rewritten; a (strange) Host in a response passes.
    out = forward_response_headers([(b"Host", b"h")], frozenset(), None)
    assert out == [(b"Host", b"h")]


# -- Upgrade allow-list (h2c smuggling) ------------------------------------------------

WS = frozenset({b"websocket"})


@pytest.mark.parametrize(
    ("offer", "allowed", "sent"),
    [
        (b"websocket", WS, b"websocket"),
        (b"WebSocket", WS, b"WebSocket"),
        (b"h2c", WS, None),
        (b"h2c", frozenset({b"h2c", b"websocket"}), None),  # never, whatever the list says
        (b"H2C", frozenset({b"h2c"}), None),
        (b"h2c, websocket", WS, b"websocket"),
        (b"websocket, h2c", WS, b"websocket"),
        (b"foo/2, websocket", frozenset({b"foo", b"websocket"}), b"foo/2, websocket"),
        (b"foo/2", WS, None),
        (b"websocket", frozenset(), None),
        (b" , ,", WS, None),
    ],
)
def test_upgrade_offer(offer: bytes, allowed: frozenset[bytes], sent: bytes | None) -> None:
    assert upgrade_offer(offer, allowed) == sent


def test_request_always_drops_http2_settings() -> None:
    headers = [(b"HTTP2-Settings", b"AAMA"), (b"Upgrade", b"h2c"), (b"Accept", b"*/*")]
    out, _ = forward_request_headers(headers, frozenset({b"upgrade", b"http2-settings"}), None)
    assert out == [(b"Accept", b"*/*")]
    out, _ = forward_request_headers([(b"http2-settings", b"x")], frozenset(), None)
    assert out == []


def test_request_sends_only_the_allowed_upgrade() -> None:
    headers = [(b"Upgrade", b"websocket"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"x"), (b"A", b"1")]
    out, _ = forward_request_headers(headers, frozenset({b"upgrade"}), None, upgrade=b"websocket")
    assert out == [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade"), (b"A", b"1")]
