"""Forward-proxy routing (pure): the request target -> where to connect.

RFC 9112 3.2.2: in absolute-form the target's authority wins over Host, and the
proxy rewrites Host to match it before forwarding.  CONNECT takes
authority-form only (3.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import httptools

from ferryman.errors import ClientProtocolError

_DEFAULT_PORTS = {b"http": 80, b"https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # "http" | "https" | "" for CONNECT
    host: str  # lower-case; IPv6 without brackets
    port: int
    path: bytes  # origin-form for the next hop ("/" when empty)
    authority: bytes  # Host value for the next hop


def _authority(host: str, port: int, default: int) -> bytes:
    h = f"[{host}]" if ":" in host else host
    return (h if port == default else f"{h}:{port}").encode("ascii")


def _check_host(host: str) -> str:
    # One trailing dot names the same host ("a.com." is "a.com"): strip it so the
    # ACL sees one spelling; empty labels are invalid.
    host = host.lower().removesuffix(".")
    if not host or len(host) > 253 or ".." in host or host.startswith("."):
        raise ClientProtocolError("invalid host in request target")
    return host


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
    host = _check_host(url.host.decode("ascii", "replace"))
    default = _DEFAULT_PORTS[scheme]
    port = default if url.port is None else url.port
    if not 0 < port < 65536:
        raise ClientProtocolError("invalid port in request target")
    path = url.path or b"/"
    if url.query is not None:
        path = path + b"?" + url.query
    return Target(scheme.decode(), host, port, path, _authority(host, port, default))


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
    host = _check_host(host)
    port = int(port_s)
    return Target("", host, port, b"", _authority(host, port, 0))
