"""X-Forwarded-* and RFC 7239 Forwarded: believed only from trusted proxies."""

from __future__ import annotations

import ipaddress

from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.route.forwarded import add_forwarded

TRUSTED = ClientAcl((ipaddress.ip_network("10.0.0.0/8"),))
SPOOF = [(b"X-Forwarded-For", b"6.6.6.6"), (b"Forwarded", b"for=6.6.6.6"), (b"X-Forwarded-Proto", b"https")]


def fields(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in headers}


def test_untrusted_client_values_are_replaced() -> None:
    out = fields(add_forwarded(list(SPOOF), "192.0.2.9", "http", b"site.example", TRUSTED))
    assert out[b"x-forwarded-for"] == b"192.0.2.9"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"site.example"
    assert out[b"forwarded"] == b'for=192.0.2.9;proto=http;host="site.example"'


def test_trusted_proxy_values_are_kept_and_appended() -> None:
    out = fields(add_forwarded(list(SPOOF), "10.1.2.3", "http", b"site", TRUSTED))
    assert out[b"x-forwarded-for"] == b"6.6.6.6, 10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"forwarded"] == b"for=6.6.6.6, for=10.1.2.3;proto=http;host=site"


def test_ipv6_node_is_bracketed_and_quoted() -> None:
    out = fields(add_forwarded([], "2001:db8::1", "https", None, None))
    assert out[b"forwarded"] == b'for="[2001:db8::1]";proto=https'
    assert b"x-forwarded-host" not in out


def test_other_headers_pass_in_order() -> None:
    hdrs = [(b"Accept", b"*/*"), (b"X-Forwarded-For", b"1.1.1.1"), (b"User-Agent", b"t")]
    out = add_forwarded(hdrs, "192.0.2.1", "http", b"h", None)
    assert [k for k, _ in out][:2] == [b"Accept", b"User-Agent"]
