"""Forward-proxy routing (pure): the request target -> where to connect.

RFC 9112 3.2.2: in absolute-form the target's authority wins over Host, and the
proxy rewrites Host to match it before forwarding.  CONNECT takes
authority-form only (3.2.3).

The destination host is parsed once, here, into one canonical spelling that the
rules, the cache key, DNS and the next hop's Host all see (`canonical_host`):
  - lower case; one trailing dot dropped (``a.com.`` is ``a.com``); an empty
    label (``a..com``, ``a.com..``, ``.a.com``) is a 400;
  - a host whose last label is a number is an IPv4 address in any of the forms
    ``inet_aton`` and the WHATWG URL standard accept (``2130706433``,
    ``0x7f000001``, ``127.1``, ``0177.0.0.1``), rewritten as ``127.0.0.1``; one
    that is not a valid address (``1.2.3.4.5``, ``256.1.1.1``, ``a.123``) is a 400;
  - an IPv6 literal is written in its compressed form.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

import httptools

from ferryman.errors import ClientProtocolError

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # "http" | "https" | "" for CONNECT
    host: str  # canonical (see the module docstring); IPv6 without brackets
    port: int
    path: bytes  # origin-form for the next hop ("/" when empty)
    authority: bytes  # Host value for the next hop
    ip: IPAddress | None = field(default=None, compare=False)  # the address, for an IP literal host


def _authority(host: str, port: int, default: int) -> bytes:
    h = f"[{host}]" if ":" in host else host
    return (h if port == default else f"{h}:{port}").encode("ascii")


_DIGITS = frozenset("0123456789")
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdef")


def _ipv4_number(part: str) -> int | None:
    """One part of a numeric IPv4 host (WHATWG "IPv4 number parser"), or None."""
    if part.startswith("0x"):
        digits, radix, allowed = part[2:], 16, _HEX
    elif len(part) > 1 and part[0] == "0":
        digits, radix, allowed = part[1:], 8, _OCTAL
    else:
        digits, radix, allowed = part, 10, _DIGITS
    if not digits:
        return 0 if radix == 16 else None  # "0x" is 0; an empty part is not a number
    if not allowed.issuperset(digits):
        return None
    return int(digits, radix)


def _ipv4(host: str) -> tuple[str, ipaddress.IPv4Address]:
    try:  # the usual dotted quad (inet_pton takes nothing else, no leading zeros): canonical already
        return host, ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, host))
    except OSError:
        pass
    parts = host.split(".")
    nums = [_ipv4_number(p) for p in parts]
    if len(parts) > 4 or None in nums:
        raise ClientProtocolError(f"invalid IPv4 address {host!r} in request target")
    values = [n for n in nums if n is not None]
    last = values.pop()
    if any(n > 255 for n in values) or last >= 256 ** (4 - len(values)):
        raise ClientProtocolError(f"invalid IPv4 address {host!r} in request target")
    for i, n in enumerate(values):
        last += n << (8 * (3 - i))
    ip = ipaddress.IPv4Address(last)
    return str(ip), ip


_CANONICAL: dict[str, tuple[str, IPAddress | None]] = {}  # a bounded memo of hosts seen
_CANONICAL_MAX = 4096


def canonical_host(raw: str) -> tuple[str, IPAddress | None]:
    """The destination host in its one canonical spelling, and its address if it is one.
    Remembered for the hosts seen last (a forward proxy sees the same few again and
    again; an address costs an `ipaddress` object to parse); refusals are not."""
    got = _CANONICAL.get(raw)
    if got is None:
        got = _canonical_host(raw)
        if len(_CANONICAL) >= _CANONICAL_MAX:
            _CANONICAL.clear()
        _CANONICAL[raw] = got
    return got


def _canonical_host(raw: str) -> tuple[str, IPAddress | None]:
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]  # one trailing dot names the same host
    if not host or len(host) > 253 or ".." in host or host[0] == "." or host[-1] == ".":
        raise ClientProtocolError("invalid host in request target")
    if ":" in host:
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise ClientProtocolError("invalid IPv6 address in request target") from None
        return str(ip6), ip6
    if host[-1] not in _HEX:
        return host, None  # a name: a number ends in a decimal or hex digit
    last = host[host.rfind(".") + 1 :]
    if _DIGITS.issuperset(last) or (last.startswith("0x") and _HEX.issuperset(last[2:])):
        return _ipv4(host)  # the last label is a number: an IPv4 address or nothing
    return host, None


def parse_absolute(target: bytes) -> Target:
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ClientProtocolError("invalid request target") from None
    scheme = (url.schema or b"").lower()
    if scheme not in _DEFAULT_PORTS:
        if not scheme:
            raise ClientProtocolError(
                "not a proxy request: ferryman forward listeners take absolute URLs"
            )
        raise ClientProtocolError(f"unsupported URL scheme {scheme.decode('latin-1')!r}")
    if url.userinfo:
        raise ClientProtocolError("userinfo in request target")
    if not url.host:
        raise ClientProtocolError("missing host in request target")
    host, ip = canonical_host(url.host.decode("ascii", "replace"))
    default = _DEFAULT_PORTS[scheme]
    port = default if url.port is None else url.port
    if not 0 < port < 65536:
        raise ClientProtocolError("invalid port in request target")
    path = url.path or b"/"
    if url.query is not None:
        path = path + b"?" + url.query
    return Target(scheme.decode(), host, port, path, _authority(host, port, default), ip)


def parse_authority(target: bytes) -> Target:
    """CONNECT host:port (port required)."""
    t = target.decode("ascii", "replace")
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ClientProtocolError("CONNECT target must be host:port")
        port_s = rest[1:]
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or ":" in host:
            raise ClientProtocolError("CONNECT target must be host:port")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ClientProtocolError("invalid port in CONNECT target")
    if "@" in host or "/" in host:
        raise ClientProtocolError("invalid host in CONNECT target")
    host, ip = canonical_host(host)
    port = int(port_s)
    return Target("", host, port, b"", _authority(host, port, 0), ip)
