"""X-Forwarded-For/-Proto/-Host and RFC 7239 Forwarded for the reverse proxy (pure).

Rule: what a client says about itself is only believed when the client is a
trusted proxy (`reverse.trusted_proxies`).  From anyone else the incoming
values are dropped and replaced by what ferryman saw, so a backend reading
X-Forwarded-For can never be handed a forged first hop.
"""

from __future__ import annotations

from ferryman.http1.events import Headers
from ferryman.pipeline.admit.acl import ClientAcl

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FWD = b"forwarded"
_NAMES = frozenset({_XFF, _XFP, _XFH, _FWD})


def _node(ip: str) -> str:
    # RFC 7239 6: IPv6 nodes are bracketed and the whole value quoted.
    return f'"[{ip}]"' if ":" in ip else ip


def add_forwarded(
    headers: Headers,
    client_ip: str,
    proto: str,
    host: bytes | None,
    trusted: ClientAcl | None,
) -> Headers:
    """Return ``headers`` with the forwarding fields set for the next hop."""
    believe = trusted is not None and trusted.allows(client_ip)
    xff: list[bytes] = []
    fwd: list[bytes] = []
    xfp: bytes | None = None
    xfh: bytes | None = None
    out: Headers = []
    for name, value in headers:
        n = name.lower()
        if n in _NAMES:
            if believe:
                if n == _XFF:
                    xff.append(value)
                elif n == _FWD:
                    fwd.append(value)
                elif n == _XFP and xfp is None:
                    xfp = value
                elif n == _XFH and xfh is None:
                    xfh = value
            continue
        out.append((name, value))
    ip = client_ip.encode("ascii", "replace")
    xff.append(ip)
    out.append((b"X-Forwarded-For", b", ".join(xff)))
    out.append((b"X-Forwarded-Proto", xfp if xfp is not None else proto.encode()))
    if host is not None or xfh is not None:
        out.append((b"X-Forwarded-Host", xfh if xfh is not None else host or b""))
    elem = f"for={_node(client_ip)};proto={proto}"
    if host is not None:
        h = host.decode("latin-1")
        elem += f';host="{h}"' if (":" in h or not h.isalnum()) else f";host={h}"
    fwd.append(elem.encode("latin-1"))
    out.append((b"Forwarded", b", ".join(fwd)))
    return out
