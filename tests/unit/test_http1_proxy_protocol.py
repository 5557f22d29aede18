"""PROXY protocol v1/v2 parse and build (HAProxy proxy-protocol.txt)."""

from __future__ import annotations

import pytest

from ferryman.errors import ClientProtocolError
from ferryman.http1 import proxy_protocol as pp


def test_v1_tcp4_and_rest_of_stream() -> None:
    buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\nGET / HTTP/1.1\r\n"
    used, src = pp.parse(buf)
    assert src == ("192.0.2.1", 40000)
    assert buf[used:] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_and_unknown() -> None:
    assert pp.parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")[1] == ("2001:db8::1", 1)
    assert pp.parse(b"PROXY UNKNOWN\r\n") == (15, None)


@pytest.mark.parametrize(
    "buf",
    [
        b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 1.1.1.1 1 2\r\n",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 70000 2\r\n",
        b"PROXY UDP4 1.1.1.1 1.1.1.1 1 2\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY " + b"x" * 200,
    ],
)
def test_malformed_headers_are_client_errors(buf: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        pp.parse(buf)


def test_partial_headers_ask_for_more() -> None:
    for partial in (b"PRO", b"PROXY TCP4 1.2.3.4", pp.V2_SIG[:5], pp.V2_SIG + b"\x21\x11"):
        with pytest.raises(pp.NeedMore):
            pp.parse(partial)


def test_v2_round_trip_ipv4_and_ipv6() -> None:
    for src, dst in ((("192.0.2.7", 1234), ("10.0.0.1", 80)), (("2001:db8::7", 9), ("2001:db8::1", 443))):
        data = pp.build_v2(src, dst) + b"GET"
        used, got = pp.parse(data)
        assert got == src and data[used:] == b"GET"


def test_v2_local_command_has_no_address() -> None:
    assert pp.parse(pp.V2_SIG + b"\x20\x00\x00\x00") == (16, None)


def test_v1_build_matches_spec_and_mixed_families_are_unknown() -> None:
    assert pp.build_v1(("192.0.2.1", 5), ("192.0.2.2", 80)) == b"PROXY TCP4 192.0.2.1 192.0.2.2 5 80\r\n"
    assert pp.build_v1(("::1", 5), ("192.0.2.2", 80)) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize(
    "buf",
    [
        pp.V2_SIG + b"\x2f\x11\x00\x0c" + bytes(12),  # command 0xF
        pp.V2_SIG + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        pp.V2_SIG + b"\x21\x11\x00\x04" + bytes(4),  # TCP4 block of 4 bytes
        pp.V2_SIG + b"\x21\x21\x00\x0c" + bytes(12),  # TCP6 block of 12 bytes
        pp.V2_SIG + b"\x21\x99\x00\x0c" + bytes(12),  # family 0x99
        pp.V2_SIG + b"\x21\x13\x00\x0c" + bytes(12),  # transport 3
        pp.V2_SIG + b"\x21\x11\x00\x04",  # too short, known before the block arrives
        b"PROXY TCP4 192.0.2.1 notanip 1000 80\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 +12 80\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1_0 80\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 10 -1\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 10  80\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 123456 80\r\n",
        b"PROXY TCP4 192.0.2.1 2001:db8::1 10 80\r\n",
        b"PROXY TCP6 2001:db8::1 192.0.2.1 10 80\r\n",
    ],
)
def test_strict_parser_rejects_what_the_spec_leaves_unspecified(buf: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        pp.parse(buf)


def test_v2_families_without_an_ip_address_are_taken_without_one() -> None:
    unix = pp.V2_SIG + b"\x21\x31" + (216).to_bytes(2, "big") + bytes(216)
    assert pp.parse(unix) == (16 + 216, None)
    unspec = pp.V2_SIG + b"\x21\x00\x00\x00"
    assert pp.parse(unspec) == (16, None)
    local_any = pp.V2_SIG + b"\x20\x11\x00\x00"  # LOCAL: the family is not looked at further
    assert pp.parse(local_any) == (16, None)


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    hdr = pp.build_v2(("192.0.2.1", 7), ("192.0.2.2", 443))
    tlv = b"\x04\x00\x02ok"  # a NOOP TLV
    length = int.from_bytes(hdr[14:16], "big") + len(tlv)
    data = hdr[:14] + length.to_bytes(2, "big") + hdr[16:] + tlv + b"GET"
    used, src = pp.parse(data)
    assert src == ("192.0.2.1", 7) and data[used:] == b"GET"
