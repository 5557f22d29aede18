"""The hop chain of a reverse-proxied request (pure): who the client is, and the
X-Forwarded-For/-Proto/-Host, Forwarded (RFC 7239) and X-Real-IP fields built from it.

Rules this module owns:

* **One record.**  The chain is a tuple of `Hop` (client first).  It is read
  from ONE incoming source (``reverse.forwarded_from``: X-Forwarded-For with
  -Proto/-Host, or Forwarded) and every outgoing field is written from it, so
  X-Forwarded-For and Forwarded always name the same hops in the same order.
* **Trust.**  What a peer says about earlier hops is only read when the peer is
  in ``reverse.trusted_proxies``; from anyone else the incoming fields (and
  X-Real-IP) are dropped and the chain is just the peer, so a backend can never
  be handed a forged first hop.
* **The real client** (nginx ``real_ip_recursive``): walk the chain from the
  right, starting at the trusted peer; every address that is itself a trusted
  proxy is skipped; the first untrusted one is the client.  An entry that is not
  an IP address ends the walk at the last address that was one.  If every hop
  is trusted, the leftmost is the client.  The client is what ``ip_hash``, ACLs
  and the access log use.
* ``X-Real-IP`` is set to that client when ``reverse.x_real_ip`` is on;
  otherwise it passes through from a trusted peer and is dropped from others.

Entries that are not addresses are carried as ``unknown`` (RFC 7239 6.3); ports
are not carried.  Field values are re-rendered, never copied, so a hop cannot
inject a field or a quote.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.http1.events import Headers

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FWD = b"forwarded"
_XRI = b"x-real-ip"
_NAMES = frozenset({_XFF, _XFP, _XFH, _FWD, _XRI})
_PROTO = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]{0,15}\Z")
_HOST = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:\[\]-]{1,255}\Z")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]{1,63}\Z")
_FWD_PAIR = re.compile(rb'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Hop:
    node: str  # an IP address (IPv6 without brackets), "unknown", or an obfuscated "_name"
    proto: bytes | None = None  # the scheme this hop was reached with
    host: bytes | None = None  # the Host this hop was asked for


Chain = tuple[Hop, ...]


def _ip(text: str) -> str | None:
    """An address as written in XFF or a Forwarded node, without port or brackets."""
    t = text.strip().strip('"')
    if t.startswith("["):
        t = t[1:].partition("]")[0]
    elif t.count(":") == 1:  # v4:port
        t = t.partition(":")[0]
    try:
        return str(ipaddress.ip_address(t))
    except ValueError:
        return None


def _node(text: str) -> str:
    ip = _ip(text)
    if ip is not None:
        return ip
    t = text.strip().strip('"')
    return t if _OBFUSCATED.match(t) else UNKNOWN


def _clean(value: bytes | None, pattern: re.Pattern[bytes]) -> bytes | None:
    if value is None:
        return None
    value = value.strip()
    return value if pattern.match(value) else None


def read_chain(headers: Headers, source: str) -> Chain:
    """The hops a trusted peer reports, client first (``source``: x-forwarded-for | forwarded)."""
    if source == "forwarded":
        return _read_forwarded(headers)
    nodes: list[str] = []
    proto = host = None
    for name, value in headers:
        n = name.lower()
        if n == _XFF:
            nodes.extend(_node(part) for part in value.decode("latin-1").split(",") if part.strip())
        elif n == _XFP and proto is None:
            proto = value.split(b",")[0]
        elif n == _XFH and host is None:
            host = value.split(b",")[0]
    if not nodes:
        return ()
    first = Hop(nodes[0], _clean(proto, _PROTO), _clean(host, _HOST))
    return (first, *(Hop(n) for n in nodes[1:]))


def _read_forwarded(headers: Headers) -> Chain:
    hops: list[Hop] = []
    for name, value in headers:
        if name.lower() != _FWD:
            continue
        for element in _split_elements(value):
            params: dict[bytes, bytes] = {}
            for m in _FWD_PAIR.finditer(element):
                v = m.group(2)
                if v.startswith(b'"'):
                    v = re.sub(rb"\\(.)", rb"\1", v[1:-1])
                params.setdefault(m.group(1).lower(), v)
            node = params.get(b"for")
            hops.append(Hop(
                _node(node.decode("latin-1")) if node is not None else UNKNOWN,
                _clean(params.get(b"proto"), _PROTO),
                _clean(params.get(b"host"), _HOST),
            ))
    return tuple(hops)


def _split_elements(value: bytes) -> list[bytes]:
    """Split a Forwarded value at the commas that are not inside a quoted-string."""
    out: list[bytes] = []
    start, quoted, i = 0, False, 0
    while i < len(value):
        c = value[i]
        if c == 0x5C and quoted:  # backslash: skip the escaped byte
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        elif c == 0x2C and not quoted:
            out.append(value[start:i])
            start = i + 1
        i += 1
    out.append(value[start:])
    return [e for e in out if e.strip()]


def real_client(chain: Chain, peer: str, trusted: Callable[[str], bool]) -> str:
    """The first untrusted address walking right to left from the (trusted) peer."""
    client = peer
    for hop in reversed(chain):
        ip = _ip(hop.node) if hop.node != UNKNOWN else None
        if ip is None:
            break  # not an address: believe nothing further left
        client = ip
        if not trusted(ip):
            break
    return client


def _fwd_node(node: str) -> str:
    # RFC 7239 6: IPv6 nodes are bracketed and the whole value quoted.
    return f'"[{node}]"' if ":" in node else node


def _fwd_host(host: bytes) -> bytes:
    return host if host.isalnum() else b'"' + host + b'"'


def _element(node: str, proto: bytes | None, host: bytes | None) -> bytes:
    """One RFC 7239 forwarded-element: ``for=NODE[;proto=P][;host=H]``."""
    e = b"for=" + _fwd_node(node).encode("latin-1")
    if proto is not None:
        e += b";proto=" + proto
    if host is not None:
        e += b";host=" + _fwd_host(host)
    return e


def add_forwarded(
    headers: Headers,
    peer: str,
    proto: str,
    host: bytes | None,
    incoming: Chain | None,
    real_ip: str | None = None,
) -> Headers:
    """``headers`` with the forwarding fields set for the next hop.

    ``incoming`` is what a trusted peer reported (`read_chain`), or None for an
    untrusted one.  ``real_ip``: set X-Real-IP to it (``reverse.x_real_ip``).
    """
    out: Headers = []
    keep_xri = incoming is not None and real_ip is None
    for name, value in headers:
        n = name.lower()
        if n in _NAMES and not (n == _XRI and keep_xri):
            continue
        out.append((name, value))
    proto_b = b"https" if proto == "https" else proto.encode()
    me = _element(peer, proto_b, host)
    if not incoming:  # the usual case: the peer is the whole chain
        out.append((b"X-Forwarded-For", peer.encode("latin-1")))
        out.append((b"X-Forwarded-Proto", proto_b))
        if host is not None:
            out.append((b"X-Forwarded-Host", host))
        out.append((b"Forwarded", me))
    else:
        first = incoming[0]
        nodes = [h.node for h in incoming]
        nodes.append(peer)
        out.append((b"X-Forwarded-For", ", ".join(nodes).encode("latin-1")))
        out.append((b"X-Forwarded-Proto", first.proto or proto_b))
        xfh = first.host or host
        if xfh is not None:
            out.append((b"X-Forwarded-Host", xfh))
        elements = [_element(h.node, h.proto, h.host) for h in incoming]
        elements.append(me)
        out.append((b"Forwarded", b", ".join(elements)))
    if real_ip is not None:
        out.append((b"X-Real-IP", real_ip.encode("latin-1")))
    return out
