"""`HOST:PORT` parsing shared by the schema and the compiler (no pydantic here)."""

from __future__ import annotations


def split_hostport(v: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``:port`` (meaning all interfaces)."""
    v = v.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {v!r}")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif v.count(":") == 1:
        host, _, port_s = v.partition(":")
    elif v.count(":") > 1:
        raise ValueError(f"IPv6 addresses need brackets, as in [::1]:3128, got {v!r}")
    else:
        host, port_s = v, ""
    if not port_s:
        if default_port is None:
            raise ValueError(f"missing port in {v!r} (expected HOST:PORT)")
        port = default_port
    else:
        if not port_s.isdigit():
            raise ValueError(f"port must be a number in {v!r}")
        port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return (host or "0.0.0.0", port)


def split_proxy_url(url: str, default_port: int = 3128) -> tuple[str, int, bytes | None]:
    """``http://[user:password@]host[:port][/]`` -> (host, port, the ``Proxy-Authorization``
    value for the userinfo or None).  The userinfo may be percent-encoded."""
    import base64
    from urllib.parse import unquote_to_bytes

    if not url.startswith("http://"):
        raise ValueError("expected an http:// URL such as http://10.0.0.1:3128")
    rest = url[len("http://") :].rstrip("/")
    if "/" in rest or "?" in rest or "#" in rest:
        raise ValueError("a proxy URL has no path, query or fragment")
    userinfo, at, hostport = rest.rpartition("@")
    credentials = None
    if at:
        user, colon, password = userinfo.partition(":")
        if not user or not colon:
            raise ValueError("userinfo must be user:password")
        raw = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
        if any(b < 0x20 or b == 0x7F for b in raw):
            raise ValueError("userinfo holds control characters")
        credentials = b"Basic " + base64.b64encode(raw)
    host, port = split_hostport(hostport, default_port)
    return host, port, credentials
