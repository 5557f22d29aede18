"""Cache lookup values: the stored entry, and how a request is answered from it.

Pure (values in, values out; ``now`` passed in): the client edge (`conn/cache_flow.py`)
picks an entry with `index.EntryIndex.select` (Vary, RFC 9111 4.1) and `policy.lookup`
(freshness), then asks this module what to send: the status, the header fields, the
byte range (RFC 9110 14: Range, If-Range) and the Cache-Status member.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferryman.http1.events import Headers
from ferryman.http1.headers import forward_response_headers
from ferryman.pipeline.cache import policy


@dataclass(slots=True)
class Stored:
    """One entry a cache process knows: its policy view, variant and store version."""

    entry: policy.Entry
    variant: bytes
    version: int = 0  # the store's record version this entry was read from or filled as
    block: bytes | None = None  # the stored fields as wire bytes for `block_via`, built on first hit
    block_via: bytes | None = None


# (headers, extra header bytes, status, first byte, end byte) of an answer from an entry
Answer = tuple[Headers, bytes, int, int, int]

_CONDITIONAL = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since"})
_VALIDATORS = (b"if-none-match", b"if-modified-since")


def conditional(headers: Headers) -> bool:
    """Does the request need more than the plain stored response (ranges, client validators)?"""
    return any(n.lower() in _CONDITIONAL for n, _ in headers)


def has_range(headers: Headers) -> bool:
    return any(n.lower() == b"range" for n, _ in headers)


def validating(fields: Headers, stale: Stored) -> Headers:
    """The request's fields with our validators in place of the client's (RFC 9111 4.3.1)."""
    kept = [(n, v) for n, v in fields if n.lower() not in _VALIDATORS]
    return kept + policy.conditional_headers(stale.entry.headers)


def status_field(
    hit: bool, fwd: str | None, stored: bool, ttl: float | None = None, detail: str | None = None
) -> bytes:
    """A whole ``Cache-Status`` header line (RFC 9211)."""
    return b"Cache-Status: " + policy.cache_status(hit, fwd, stored, ttl=ttl, detail=detail) + b"\r\n"


def if_range_holds(req_headers: Headers, stored: Headers) -> bool:
    """RFC 9110 13.1.5: a Range with If-Range applies only if the validator matches strongly."""
    values = [v.strip() for n, v in req_headers if n.lower() == b"if-range"]
    if not values:
        return True
    want = values[0]
    for n, v in stored:
        name = n.lower()
        if name == b"etag" and want.startswith((b'"', b"W/")):
            return not want.startswith(b"W/") and not v.strip().startswith(b"W/") and v.strip() == want
        if name == b"last-modified" and not want.startswith((b'"', b"W/")):
            return v.strip() == want
    return False


def range_of(headers: Headers, size: int) -> tuple[int, int] | str | None:
    """A single byte range (RFC 9110 14.1.2); multiple ranges are answered in full."""
    for name, value in headers:
        if name.lower() != b"range":
            continue
        unit, _, spec = value.strip().partition(b"=")
        if unit.strip().lower() != b"bytes" or b"," in spec:
            return None
        first, dash, last = spec.strip().partition(b"-")
        if not dash:
            return None
        try:
            if not first:
                n = int(last)
                if n <= 0:
                    return "bad"
                return (max(0, size - n), size)
            a = int(first)
            b = int(last) + 1 if last else size
        except ValueError:
            return None
        if a >= size:
            return "bad"
        return (a, min(b, size)) if b > a else None
    return None


def answer(
    method: str, req_headers: Headers, entry: policy.Entry, size: int, look: policy.Lookup, hit: bool,
    via: bytes | None, drop: frozenset[bytes], now: float,
) -> Answer:
    """Headers, extra bytes, status and byte range for answering a request from ``entry``.

    304 when the client's own validators match, 416 for a range past the end, 206 for
    one satisfiable range of a GET (If-Range permitting), else the stored status and the
    whole body.
    """
    headers = policy.strip_fields(entry.headers, look.strip) if look.strip else entry.headers
    age = int(entry.age(now))
    status_member = policy.cache_status(hit, None if hit else "stale", False, ttl=entry.lifetime - age)
    hdrs = forward_response_headers(headers, drop, via)  # our Age replaces the stored one (4.2.3)
    extra = b"Age: %d\r\nCache-Status: %s\r\n" % (age, status_member)
    if policy.client_conditional_304(method, req_headers, entry.status, entry.headers, entry.response_time):
        return policy.not_modified_headers(hdrs), extra, 304, 0, 0
    rng = None
    # Range is defined for GET only: any other method's Range is ignored (RFC 9110 14.2).
    if method == "GET" and entry.status == 200 and if_range_holds(req_headers, entry.headers):
        rng = range_of(req_headers, size)
    if rng == "bad":
        return hdrs, extra, 416, 0, 0
    if isinstance(rng, tuple):
        start, end = rng
        extra += b"Content-Range: bytes %d-%d/%d\r\n" % (start, end - 1, size)
        return hdrs, extra, 206, start, end
    return hdrs, extra, entry.status, 0, size
