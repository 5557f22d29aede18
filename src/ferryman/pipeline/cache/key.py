"""What identifies a stored response (pure): its keys, its validators and the syntax they share.

``policy.py`` decides *whether* to store and reuse; this module says *which* stored
response a message is about, and reads the field syntax both need:

================  ============================================================================
concern           rule
================  ============================================================================
primary key (2)   GET and HEAD share a key (a stored GET answers HEAD, RFC 9110 9.3.2; HEAD
                  responses are never stored); scheme and host lower-cased, userinfo dropped,
                  the default port and leading zeros removed (RFC 9110 4.2.3); empty path ->
                  ``/``; ``%XX`` of an unreserved character decoded, others upper-cased (RFC
                  3986 6.2.2.2); nothing else (path case matters).  Reverse mode keys the
                  client's Host and the routed path (`conn/cache_flow.py`), not the route's
                  rewrite nor its ``host_header``, so PURGE and the admin purge name public URLs
variant (4.1)     Vary names lower-cased and sorted, ``*`` -> ``None`` (never matches); values
                  of all field lines joined with ``", "``, whitespace collapsed, empty members
                  dropped; Accept-Encoding/-Language/-Charset lower-cased, Accept-Encoding
                  members sorted (q-values, not order, rank them); an absent field is ``None``,
                  distinct from an empty one
validators (4.3)  ETag and Last-Modified make the conditional; a 304 selects the entry unless
                  its ETag / Last-Modified names another representation; the client's own
                  If-None-Match (weak comparison) beats If-Modified-Since (RFC 9110 13.2.2)
origin (4.4)      an unsafe method's 2xx/3xx invalidates its target, and Location /
                  Content-Location only within the target's origin
dates             IMF-fixdate, rfc850 and asctime read (RFC 9110 5.6.7); invalid -> ``None``;
                  ``http_date`` tolerates stray whitespace and month case, ``http_date_strict``
                  (Expires, RFC 9111 5.3) takes only the exact grammar
================  ============================================================================
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

from ferryman.http1.events import Headers
from ferryman.http1.framing import header_values

SecondaryKey = tuple[tuple[bytes, bytes | None], ...]

_DEFAULT_PORTS = (("http", b"80"), ("https", b"443"))
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CASELESS = frozenset({b"accept-encoding", b"accept-language", b"accept-charset"})
_UNORDERED = frozenset({b"accept-encoding"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
# RFC 9111 3.2: never taken from a 304 - the stored body and its framing do not change
_NO_UPDATE = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
    }
)
# RFC 9110 15.4.5: the fields a 304 carries when the 200 would have had them
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)


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


def request_key(scheme: str, authority: bytes, target: bytes) -> bytes:
    """The GET key of a request as forwarded: ``target`` in origin-form, or in absolute-form
    when it goes to a parent proxy, where the URL itself names scheme and authority.

    Either way the key is the one ``uri_key`` gives for the URL, so the admin purge, the
    PURGE method and a lookup agree with or without a parent.
    """
    if target[:1] != b"/":
        scheme_b, sep, rest = target.partition(b"://")
        if sep:
            slash = rest.find(b"/")
            auth, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            return cache_key("GET", scheme_b.decode("ascii", "replace"), auth, path)
    return cache_key("GET", scheme, authority, target)


def prefix_key(uri: str) -> bytes | None:
    """An admin purge prefix normalised like the keys it is matched against (scheme and host
    case, default port, ``%XX``); ``None`` if it is not an absolute http(s) URL."""
    return uri_key(uri)


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
    if target.find(b"%") < 0:  # not ``in``: see http1/parser.py on_url
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


# -- HTTP dates (RFC 9110 5.6.7) -----------------------------------------------------------------

_MONTHS = (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec")
_MONTH_NAMES = tuple(m.capitalize() for m in _MONTHS)
_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")


def http_date(value: bytes) -> float | None:
    """Epoch seconds of an IMF-fixdate, rfc850-date or asctime-date; ``None`` if it is none of them.

    Tolerant of whitespace, month case and a wrong weekday; a two-digit rfc850 year is
    19yy from 70 and 20yy below (a fixed pivot: the 50-year rule would need ``now``).
    """
    parts = value.split()
    if len(parts) == 6 and parts[0].endswith(b",") and parts[5] == b"GMT":  # Sun, 06 Nov 1994 08:49:37 GMT
        day, mon, year, clock = parts[1], parts[2], parts[3], parts[4]
        if len(year) != 4:
            return None
    elif len(parts) == 4 and parts[0].endswith(b",") and parts[3] == b"GMT":  # Sunday, 06-Nov-94 08:49:37 GMT
        dmy = parts[1].split(b"-")
        if len(dmy) != 3 or len(dmy[2]) != 2 or not dmy[2].isdigit():
            return None
        day, mon, clock = dmy[0], dmy[1], parts[2]
        year = (b"19" if dmy[2] >= b"70" else b"20") + dmy[2]
    elif len(parts) == 5:  # Sun Nov  6 08:49:37 1994
        mon, day, clock, year = parts[1], parts[2], parts[3], parts[4]
        if len(year) != 4:
            return None
    else:
        return None
    hms = clock.split(b":")
    if (
        len(day) > 2
        or not day.isdigit()
        or not year.isdigit()
        or len(hms) != 3
        or not all(len(x) == 2 and x.isdigit() for x in hms)
        or mon.lower() not in _MONTHS
    ):
        return None
    y, m, d = int(year), _MONTHS.index(mon.lower()) + 1, int(day)
    hh, mm, ss = int(hms[0]), int(hms[1]), int(hms[2])
    if y < 1 or not 1 <= d <= calendar.monthrange(y, m)[1] or hh > 23 or mm > 59 or ss > 60:
        return None
    return float(calendar.timegm((y, m, d, hh, mm, ss)))


_WKDAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_CLOCK = rb"\d\d:\d\d:\d\d"
_STRICT_DATE = re.compile(
    rb"(?:" + _WKDAY + rb", \d\d " + _MONTH + rb" \d{4} " + _CLOCK + rb" GMT"  # IMF-fixdate
    rb"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \d\d-" + _MONTH
    + rb"-\d\d " + _CLOCK + rb" GMT"  # rfc850-date
    rb"|" + _WKDAY + rb" " + _MONTH + rb" (?:\d\d| \d) " + _CLOCK + rb" \d{4})"  # asctime-date
)


def http_date_strict(value: bytes) -> float | None:
    """``http_date`` for a value that follows the HTTP-date grammar exactly (RFC 9110 5.6.7: case
    and single spaces matter), else ``None``; only the whitespace around the field value is
    not part of it.  RFC 9111 5.3 reads an invalid Expires as a time in the past, so a
    near-miss such as ``Thu,  01 Jan 2099 ...`` must not become a future date."""
    value = value.strip(b" \t")
    if _STRICT_DATE.fullmatch(value) is None:
        return None
    return http_date(value)


def format_http_date(t: float) -> bytes:
    """IMF-fixdate for epoch seconds, the only form a sender may generate (RFC 9110 5.6.7)."""
    tm = time.gmtime(min(max(t, 0.0), 253402300799.0))
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[tm.tm_wday], tm.tm_mday, _MONTH_NAMES[tm.tm_mon - 1], tm.tm_year,
        tm.tm_hour, tm.tm_min, tm.tm_sec,
    )  # fmt: skip


# -- validators (RFC 9111 4.3, RFC 9110 13) ------------------------------------------------------


def conditional_headers(stored_headers: Headers) -> Headers:
    """The validators to send for a stored response (4.3.1): its ETag and its Last-Modified."""
    out: Headers = []
    etag = _first(stored_headers, b"etag")
    if etag:
        out.append((b"If-None-Match", etag))
    lm = _first(stored_headers, b"last-modified")
    if lm and http_date(lm) is not None:
        out.append((b"If-Modified-Since", lm))
    return out


def validation_headers(req_headers: Headers, stored_headers: Headers) -> Headers:
    """The client's request fields with its own If-None-Match / If-Modified-Since replaced by ours.

    A 304 then vouches for the stored response, and ``client_conditional_304`` answers the
    client's conditionals from it.
    """
    out = [(n, v) for n, v in req_headers if n.lower() not in (b"if-none-match", b"if-modified-since")]
    return out + conditional_headers(stored_headers)


def update_from_304(stored_headers: Headers, resp_304_headers: Headers) -> Headers | None:
    """The stored fields freshened by a 304 (4.3.4, 3.2); ``None`` if it vouches for another response.

    The 304 answers a conditional built from this entry's validators, so one carrying no
    validator selects it; one whose ETag or Last-Modified differs does not, and the engine
    should fetch unconditionally.  Content-Length and framing fields are never replaced.
    """
    etag = _first(resp_304_headers, b"etag")
    if etag is not None:
        mine = _first(stored_headers, b"etag")
        if mine is None or _opaque(mine) != _opaque(etag):
            return None
    else:
        lm = _first(resp_304_headers, b"last-modified")
        if lm is not None and lm.strip() != (_first(stored_headers, b"last-modified") or b"").strip():
            return None
    new = [(n, v) for n, v in resp_304_headers if n.lower() not in _NO_UPDATE]
    replaced = {n.lower() for n, _ in new}
    return [(n, v) for n, v in stored_headers if n.lower() not in replaced] + new


def client_conditional_304(
    method: str, req_headers: Headers, status: int, stored_headers: Headers, received: float | None = None
) -> bool:
    """Whether the client's own conditionals let the cache answer 304 (RFC 9110 13.2.2, 9111 4.3.2).

    If-None-Match (weak comparison) wins over If-Modified-Since; If-Match and
    If-Unmodified-Since are not a cache's to evaluate.  Only GET/HEAD on a 2xx entry.
    Without Last-Modified the stored Date, then ``received``, stands in (4.3.2).
    """
    if (method != "GET" and method != "HEAD") or not 200 <= status < 300:
        return False
    inm = header_values(req_headers, b"if-none-match")
    if inm:
        etag = _first(stored_headers, b"etag")
        mine = None if etag is None else _opaque(etag)
        for value in inm:
            for member in split_list(value):
                tag = member.strip()
                if tag == b"*" or (mine is not None and tag and _opaque(tag) == mine):
                    return True
        return False
    ims = header_values(req_headers, b"if-modified-since")
    since = http_date(ims[0]) if len(ims) == 1 else None
    if since is None:
        return False
    modified = _date(stored_headers, b"last-modified")
    if modified is None:
        modified = _date(stored_headers, b"date")
    if modified is None:
        modified = received
    return modified is not None and modified <= since


def not_modified_headers(stored_headers: Headers) -> Headers:
    """The stored fields a 304 to the client must repeat (RFC 9110 15.4.5); Age is added by the caller."""
    return [(n, v) for n, v in stored_headers if n.lower() in _NOT_MODIFIED_FIELDS]


# -- invalidation (4.4) -------------------------------------------------------------------------


def invalidations(method: str, status: int, target_uri: str, resp_headers: Headers) -> list[str]:
    """Absolute URIs whose entries an unsafe request's 2xx/3xx answer invalidates (RFC 9111 4.4).

    The target URI always; Location and Content-Location (resolved against it) only when
    they share its origin, so one origin cannot purge another's entries.  ``uri_key``
    turns each into a cache key.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [target_uri]
    for name in (b"location", b"content-location"):
        for value in header_values(resp_headers, name):
            try:
                uri = urljoin(target_uri, value.strip().decode("ascii")).partition("#")[0]
            except (UnicodeDecodeError, ValueError):
                continue
            if uri not in out and same_origin(target_uri, uri):
                out.append(uri)
    return out


# -- field syntax --------------------------------------------------------------------------------


def split_list(value: bytes) -> list[bytes]:
    """Split on commas outside quoted strings (a quoted no-cache field list or ETag may hold commas)."""
    if b'"' not in value:
        return value.split(b",")
    out: list[bytes] = []
    start, quoted, escaped = 0, False, False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if c == 0x5C:
                escaped = True
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x2C:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return out


def unquote(arg: bytes) -> bytes | None:
    """The content of a token or quoted-string argument; ``None`` if the quotes are unbalanced."""
    if not arg.startswith(b'"'):
        return arg
    if len(arg) < 2 or not arg.endswith(b'"'):
        return None
    inner = arg[1:-1]
    if b"\\" not in inner:
        return inner
    out = bytearray()
    escaped = False
    for c in inner:
        if c == 0x5C and not escaped:
            escaped = True
            continue
        escaped = False
        out.append(c)
    return bytes(out)


def _opaque(etag: bytes) -> bytes:
    """The opaque-tag of an entity-tag, weak prefix removed (weak comparison, RFC 9110 8.8.3.2)."""
    etag = etag.strip()
    return etag[2:] if etag[:2] == b"W/" else etag


def _first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v.strip()
    return None


def _date(headers: Headers, name: bytes) -> float | None:
    value = _first(headers, name)
    return None if value is None else http_date(value)
