"""PROXY protocol v1 and v2 (HAProxy's spec), parse and build (pure).

A trusted L4 balancer in front of ferryman prepends one header per
connection naming the real client; ferryman reads it before any HTTP byte.
Sending it to an upstream makes that connection private to one client, so
such connections are never pooled (as HAProxy does for send-proxy).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from ferryman.errors import ClientProtocolError

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107


class NeedMore(Exception):
    """Not enough bytes yet to decide."""


def parse(buf: bytes) -> tuple[int, tuple[str, int] | None]:
    """Return (bytes consumed, (client ip, port) or None for LOCAL/UNKNOWN/UNSPEC).

    Strict, as the spec asks of receivers: anything it leaves unspecified is a
    ``ClientProtocolError`` (the connection is closed), never a guess.
    """
    if buf.startswith(b"PROXY "):
        end = buf.find(b"\r\n", 0, _V1_MAX + 1)
        if end < 0:
            if len(buf) > _V1_MAX:
                raise ClientProtocolError("PROXY v1 header too long")
            raise NeedMore
        return end + 2, _v1(buf[:end].split(b" "))
    if buf.startswith(V2_SIG):
        if len(buf) < 16:
            raise NeedMore
        ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
        if ver_cmd >> 4 != 2:
            raise ClientProtocolError("unsupported PROXY protocol version")
        cmd = ver_cmd & 0xF
        if cmd > 1:
            raise ClientProtocolError(f"unknown PROXY v2 command {cmd:#x}")
        if fam not in _V2_FAMILIES:
            raise ClientProtocolError(f"unknown PROXY v2 address family {fam:#04x}")
        total = 16 + length
        if cmd == 1 and length < _V2_FAMILIES[fam]:
            raise ClientProtocolError(f"PROXY v2 address block too short for family {fam:#04x}")
        if len(buf) < total:
            raise NeedMore
        if cmd == 0:  # LOCAL: health check from the balancer itself
            return total, None
        body = buf[16:total]
        af = fam >> 4
        if af == 1:
            return total, (socket.inet_ntop(socket.AF_INET, body[:4]), struct.unpack("!H", body[8:10])[0])
        if af == 2:
            return total, (socket.inet_ntop(socket.AF_INET6, body[:16]), struct.unpack("!H", body[32:34])[0])
        return total, None  # UNSPEC or UNIX: no IP address to take
    if len(buf) < len(V2_SIG) and (V2_SIG.startswith(buf) or b"PROXY ".startswith(buf[:6])):
        raise NeedMore
    raise ClientProtocolError("expected a PROXY protocol header")


# v2 family/transport byte -> minimal address block length (spec 2.2: AF_UNSPEC,
# INET, INET6, UNIX x UNSPEC, STREAM, DGRAM); any other byte is invalid.
_V2_FAMILIES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


def _v1(parts: list[bytes]) -> tuple[str, int] | None:
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return None  # the rest of the line is to be ignored (spec 2.1)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ClientProtocolError("malformed PROXY v1 header")
    want = 4 if parts[1] == b"TCP4" else 6
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ClientProtocolError("malformed PROXY v1 address") from None
    if src.version != want or dst.version != want:
        raise ClientProtocolError("PROXY v1 address does not match its family")
    ports = []
    for p in parts[4:6]:
        # Decimal digits only: int() would also take "+12", "1_0" and " 7".
        if not (0 < len(p) <= 5 and p.isdigit()) or int(p) > 65535:
            raise ClientProtocolError("malformed PROXY v1 port")
        ports.append(int(p))
    return str(src), ports[0]


def build_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    fam = b"TCP6" if ":" in src[0] else b"TCP4"
    if (":" in dst[0]) != (fam == b"TCP6"):
        return b"PROXY UNKNOWN\r\n"
    return b"PROXY %s %s %s %d %d\r\n" % (fam, src[0].encode(), dst[0].encode(), src[1], dst[1])


def build_v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    v6 = ":" in src[0]
    if v6 != (":" in dst[0]):
        return V2_SIG + b"\x20\x00\x00\x00"  # LOCAL
    af = socket.AF_INET6 if v6 else socket.AF_INET
    addrs = socket.inet_pton(af, src[0]) + socket.inet_pton(af, dst[0]) + struct.pack("!HH", src[1], dst[1])
    return V2_SIG + bytes((0x21, 0x21 if v6 else 0x11)) + struct.pack("!H", len(addrs)) + addrs
