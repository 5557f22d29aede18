"""Forward-proxy targets: absolute-form and CONNECT authority-form."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

import pytest

from ferryman.errors import ClientProtocolError
from ferryman.pipeline.route.router import Target, canonical_host, parse_absolute, parse_authority

# -- absolute-form ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            b"http://example.com/a/b",
            Target("http", "example.com", 80, b"/a/b", b"example.com"),
        ),
        (
            b"http://Example.COM/",
            Target("http", "example.com", 80, b"/", b"example.com"),
        ),
        (
            b"HTTP://example.com/",
            Target("http", "example.com", 80, b"/", b"example.com"),
        ),
        (
            b"http://example.com",
            Target("http", "example.com", 80, b"/", b"example.com"),
        ),
        (
            b"http://example.com:80/x",
            Target("http", "example.com", 80, b"/x", b"example.com"),
        ),
        (
            b"http://example.com:8080/x",
            Target("http", "example.com", 8080, b"/x", b"example.com:8080"),
        ),
        (
            b"https://example.com/x",
            Target("https", "example.com", 443, b"/x", b"example.com"),
        ),
        (
            b"https://example.com:443/x",
            Target("https", "example.com", 443, b"/x", b"example.com"),
        ),
        (
            b"https://example.com:80/x",
            Target("https", "example.com", 80, b"/x", b"example.com:80"),
        ),
        (
            b"http://[::1]:8080/x",
            Target("http", "::1", 8080, b"/x", b"[::1]:8080"),
        ),
        (
            b"http://[2001:DB8::1]/",
            Target("http", "2001:db8::1", 80, b"/", b"[2001:db8::1]"),
        ),
        (
            b"http://10.0.0.1:81/",
            Target("http", "10.0.0.1", 81, b"/", b"10.0.0.1:81"),
        ),
    ],
)
def test_parse_absolute(url: bytes, expected: Target) -> None:
    assert parse_absolute(url) == expected


def test_query_is_kept_and_fragment_dropped() -> None:
    t = parse_absolute(b"http://example.com/search?q=a+b&x=%20#section")
    assert t.path == b"/search?q=a+b&x=%20"


def test_query_on_empty_path() -> None:
    assert parse_absolute(b"http://example.com?q=1").path == b"/?q=1"


def test_target_is_a_frozen_value() -> None:
    t = parse_absolute(b"http://example.com/")
    assert t == parse_absolute(b"http://EXAMPLE.com:80/")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.host = "evil.com"  # type: ignore[misc]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(b"/just/a/path", id="origin-form"),
        pytest.param(b"ftp://example.com/", id="ftp"),
        pytest.param(b"ws://example.com/", id="ws"),
        pytest.param(b"http://user:pw@example.com/", id="userinfo"),
        pytest.param(b"http://user@example.com/", id="user-only"),
        pytest.param(b"http:///path", id="no-host"),
        pytest.param(b"http://example.com:99999/", id="port-out-of-range"),
        pytest.param(b"http://example.com:abc/", id="port-not-a-number"),
        pytest.param(b"http://" + b"a" * 254 + b"/", id="host-too-long"),
        pytest.param(b"http://exa mple.com/", id="space-in-host"),
        pytest.param(b"*", id="asterisk"),
    ],
)
def test_parse_absolute_rejects(url: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        parse_absolute(url)


def test_origin_form_error_explains_proxy_requirement() -> None:
    with pytest.raises(ClientProtocolError, match="absolute"):
        parse_absolute(b"/index.html")


def test_host_of_253_characters_is_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(host) == 253
    assert parse_absolute(b"http://" + host.encode() + b"/").host == host


@pytest.mark.parametrize(
    ("parse", "target"),
    [(parse_absolute, b"http://Example.com./"), (parse_authority, b"example.com.:443")],
    ids=["absolute", "authority"],
)
def test_trailing_dot_is_normalised(parse: Callable[[bytes], Target], target: bytes) -> None:
    assert parse(target).host == "example.com"


# -- authority-form (CONNECT) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (b"example.com:443", Target("", "example.com", 443, b"", b"example.com:443")),
        (b"Example.COM:8443", Target("", "example.com", 8443, b"", b"example.com:8443")),
        (b"[::1]:443", Target("", "::1", 443, b"", b"[::1]:443")),
        (b"10.1.2.3:22", Target("", "10.1.2.3", 22, b"", b"10.1.2.3:22")),
        (b"h:1", Target("", "h", 1, b"", b"h:1")),
        (b"h:65535", Target("", "h", 65535, b"", b"h:65535")),
    ],
)
def test_parse_authority(authority: bytes, expected: Target) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    "authority",
    [
        pytest.param(b"example.com", id="no-port"),
        pytest.param(b"example.com:", id="empty-port"),
        pytest.param(b"example.com:0", id="port-zero"),
        pytest.param(b"example.com:65536", id="port-too-big"),
        pytest.param(b"example.com:abc", id="port-not-a-number"),
        pytest.param(b"example.com:+443", id="port-signed"),
        pytest.param(b"example.com:\xd9\xa1", id="port-non-ascii-digit"),
        pytest.param(b"[::1]", id="v6-no-port"),
        pytest.param(b"[::1", id="v6-unclosed"),
        pytest.param(b"::1:443", id="v6-unbracketed"),
        pytest.param(b"user@example.com:443", id="userinfo"),
        pytest.param(b"example.com/x:443", id="slash"),
        pytest.param(b":443", id="no-host"),
        pytest.param(b"a" * 254 + b":443", id="host-too-long"),
    ],
)
def test_parse_authority_rejects(authority: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        parse_authority(authority)


# -- canonical host: numeric IPv4 spellings, trailing dots ------------------------------


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("2130706434", "127.0.0.2"),
        ("0x7f000002", "127.0.0.2"),
        ("0X7F000002", "127.0.0.2"),
        ("127.2", "127.0.0.2"),
        ("127.0.2", "127.0.0.2"),
        ("0177.0.0.2", "127.0.0.2"),
        ("0x7f.0.0.2", "127.0.0.2"),
        ("0177.0x0.00.02", "127.0.0.2"),
        ("127.0.0.2", "127.0.0.2"),
        ("127.0.0.2.", "127.0.0.2"),
        ("0", "0.0.0.0"),
        ("017700000001", "127.0.0.1"),
        ("3232235777", "192.168.1.1"),
        ("4294967295", "255.255.255.255"),
        ("1.2.65535", "1.2.255.255"),
        ("::FFFF:127.0.0.2", str(ipaddress.ip_address("::ffff:127.0.0.2"))),
        ("0:0:0:0:0:0:0:1", "::1"),
    ],
)
def test_numeric_hosts_are_canonical_addresses(spelled: str, canonical: str) -> None:
    host, ip = canonical_host(spelled)
    assert host == canonical and ip == ipaddress.ip_address(canonical)
    # the same in both target forms, and the next hop's Host is the canonical one
    t = parse_absolute(b"http://%s/x" % (f"[{spelled}]" if ":" in spelled else spelled).encode())
    assert (t.host, t.ip) == (canonical, ipaddress.ip_address(canonical))
    assert t.authority == (f"[{canonical}]" if ":" in canonical else canonical).encode()
    c = parse_authority(b"%s:443" % (f"[{spelled}]" if ":" in spelled else spelled).encode())
    assert (c.host, c.ip) == (canonical, ipaddress.ip_address(canonical))


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4.5", "256.1.1.1", "1.256.1.1", "4294967296", "1.2.65536", "08.1.1.1", "0x1g.1", "a.123",
     "example.0x10", "1..2", "example.com..", "example.com...", ".example.com", "..", "."],
)
def test_invalid_hosts_are_refused(host: str) -> None:
    with pytest.raises(ClientProtocolError):
        canonical_host(host)
    with pytest.raises(ClientProtocolError):
        parse_absolute(b"http://%s/" % host.encode())
    with pytest.raises(ClientProtocolError):
        parse_authority(b"%s:443" % host.encode())


@pytest.mark.parametrize("host", ["example.com", "123abc.com", "a.b1", "x-1.0a", "localhost", "face", "a.b"])
def test_names_stay_names(host: str) -> None:
    assert canonical_host(host) == (host, None)
    assert canonical_host(host.upper() + ".") == (host, None)
