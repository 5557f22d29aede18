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
