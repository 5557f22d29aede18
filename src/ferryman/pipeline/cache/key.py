"""Cache keys (pure): which stored responses a request may be answered from.

RFC 9111 section 2 makes the primary key the method and the target URI, and section 4.1
adds a secondary key from the request fields a response's ``Vary`` names.  Both are
normalised here, once, so that requests meaning the same thing find the same entry:

==================  ========================================================================
part                normalisation (and why it is safe)
==================  ========================================================================
method              GET and HEAD share a key: a stored GET answers HEAD (RFC 9110 9.3.2) and
                    HEAD responses are never stored; other methods get their own prefix
scheme, host        lower-cased (RFC 3986 6.2.2.1); userinfo dropped (never part of a target)
port                the scheme's default port removed, leading zeros dropped (RFC 9110 4.2.3)
path and query      empty path -> ``/``; ``%XX`` of an unreserved character decoded, other
                    ``%xx`` upper-cased (RFC 3986 6.2.2.2); nothing else (case matters)
Vary fields         names lower-cased and sorted, ``*`` -> ``None`` (never matches, 4.1)
Vary values         all field lines of a name joined with ``", "``, whitespace collapsed,
                    empty list members dropped; Accept-Encoding / -Language / -Charset are
                    case-insensitive and lower-cased, Accept-Encoding members sorted (order
                    is not significant: q-values rank them)
==================  ========================================================================

An absent request field is ``None`` in the secondary key, distinct from an empty one, so a
response varying on ``Cookie`` for a request without cookies is not served to one with.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from ferryman.http1.events import Headers

SecondaryKey = tuple[tuple[bytes, bytes | None], ...]

_DEFAULT_PORTS = (("http", b"80"), ("https", b"443"))
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CASELESS = frozenset({b"accept-encoding", b"accept-language", b"accept-charset"})
_UNORDERED = frozenset({b"accept-encoding"})


def cache_key(method: str, scheme: str, authority: bytes, path_and_query: bytes) -> bytes:
    """The primary key, ``b"http://example.com/a?b"``, for a request's target URI (RFC 9111 2).

    ``authority`` is the Host (or absolute-form authority) and ``path_and_query`` the
    origin-form target.  Only GET and HEAD are looked up; another method's key is prefixed
    with its name so that it can never collide with a stored GET.
    """
    s = scheme.lower()
    key = s.encode("ascii", "replace") + b"://" + _authority(s, authority) + _path(path_and_query)
    if method == "GET" or method == "HEAD":
        return key
    return method.encode("ascii", "replace") + b" " + key


def uri_key(uri: str) -> bytes | None:
    """The GET key of an absolute http(s) URI (what ``invalidations`` returns), ``None`` if not one."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        return cache_key("GET", parts.scheme, parts.netloc.encode("ascii"), target.encode("ascii"))
    except UnicodeEncodeError:
        return None


def same_origin(uri_a: str, uri_b: str) -> bool:
    """Whether two absolute URIs share scheme, host and port (RFC 6454 origin, default ports equal).

    RFC 9111 4.4 lets a cache invalidate Location / Content-Location only within the
    target's origin, so that one site cannot purge another's entries.
    """
    a, b = _origin(uri_a), _origin(uri_b)
    return a is not None and a == b


def vary_fields(vary_values: Iterable[bytes]) -> tuple[bytes, ...] | None:
    """The lower-cased, sorted, de-duplicated field names a response varies on; ``None`` for ``*``."""
    names: set[bytes] = set()
    for value in vary_values:
        for part in value.split(b","):
            name = part.strip().lower()
            if name == b"*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def secondary_key(fields: tuple[bytes, ...], req_headers: Headers) -> SecondaryKey:
    """The normalised values of ``fields`` (from ``vary_fields``) in a request (RFC 9111 4.1).

    Two requests select the same stored response exactly when their keys are equal.
    """
    if not fields:
        return ()
    found: dict[bytes, list[bytes]] = {}
    for name, value in req_headers:
        n = name.lower()
        if n in fields:
            found.setdefault(n, []).append(value)
    return tuple((f, _normalise(f, found[f]) if f in found else None) for f in fields)


def vary_key(vary_values: Iterable[bytes], req_headers: Headers) -> SecondaryKey | None:
    """``secondary_key`` straight from a response's Vary values; ``None`` when it is ``Vary: *``."""
    fields = vary_fields(vary_values)
    return None if fields is None else secondary_key(fields, req_headers)


def variant(key: SecondaryKey) -> bytes:
    """A secondary key as the bytes a store files variants under; ``b""`` when nothing varies.

    One line per field (a field value cannot hold a line feed); an absent field is its bare
    name, so it stays distinct from an empty one (``name:``).
    """
    return b"\n".join(n if v is None else n + b":" + v for n, v in key)


def _normalise(name: bytes, values: list[bytes]) -> bytes:
    members = [b" ".join(m.split()) for v in values for m in v.split(b",")]
    members = [m for m in members if m]
    if name in _CASELESS:
        members = [m.lower() for m in members]
    if name in _UNORDERED:
        members.sort()
    return b", ".join(members)


def _authority(scheme: str, authority: bytes) -> bytes:
    host = authority.rpartition(b"@")[2].strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return host
        name, port = host[: end + 1], host[end + 2 :] if host[end + 1 : end + 2] == b":" else b""
    elif host.count(b":") == 1:
        name, _, port = host.partition(b":")
    else:
        return host
    if port.isdigit():
        port = str(int(port)).encode() if len(port) < 8 else port
    if not port or (scheme, port) in _DEFAULT_PORTS:
        return name
    return name + b":" + port


def _path(target: bytes) -> bytes:
    if not target or target[:1] == b"?":
        target = b"/" + target
    if b"%" not in target:
        return target
    pieces = target.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX and piece[1] in _HEX:
            code = int(piece[:2], 16)
            if code in _UNRESERVED:
                out.append(bytes((code,)) + piece[2:])
            else:
                out.append(b"%" + piece[:2].upper() + piece[2:])
        else:
            out.append(b"%" + piece)
    return b"".join(out)


def _origin(uri: str) -> tuple[str, bytes] | None:
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc.encode("ascii")
    except (ValueError, UnicodeEncodeError):
        return None
    scheme = parts.scheme.lower()
    if not scheme or not netloc:
        return None
    return scheme, _authority(scheme, netloc)
