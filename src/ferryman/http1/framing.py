"""RFC 9112 message-framing rules (pure).

These run on top of llhttp's own strict checks: llhttp already refuses
Content-Length together with Transfer-Encoding and malformed chunk sizes; the
rules here add what a *proxy* must enforce so that it and the next hop can
never frame a message differently (request smuggling).
"""

from __future__ import annotations

from ferryman.errors import ClientProtocolError, NotImplementedByProxy, UpstreamProtocolError
from ferryman.http1.events import F_CHUNKED, F_CLOSE, F_LENGTH, F_NONE, Framing, Headers

_TOKEN_SPLIT = b","


def connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    if len(values) == 1:
        one = values[0]
        if one.find(_TOKEN_SPLIT) < 0:  # the usual one token ("close", "keep-alive")
            tok = one.strip().lower()
            return frozenset((tok,)) if tok else frozenset()
    out: set[bytes] = set()
    for v in values:
        for tok in v.split(_TOKEN_SPLIT):
            tok = tok.strip().lower()
            if tok:
                out.add(tok)
    return frozenset(out)


def _content_length(values: list[bytes], err: type[Exception]) -> int:
    # RFC 9110 8.6: a list of identical values may be collapsed, anything else is fatal.
    if len(values) == 1:
        val = values[0]
        if val.isdigit() and len(val) <= 18:
            return int(val)  # the usual one plain value: what the rules below give it
    seen: set[bytes] = set()
    for v in values:
        for part in v.split(b","):
            seen.add(part.strip())
    if len(seen) != 1:
        raise err("conflicting Content-Length values")
    (val,) = seen
    if not val.isdigit() or len(val) > 18:
        raise err("invalid Content-Length")
    return int(val)


def request_framing(version: str, te: list[bytes], cl: list[bytes]) -> tuple[Framing, int]:
    if te:
        if version == "1.0":
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            raise ClientProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            raise ClientProtocolError("both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if not codings or codings[-1] != b"chunked":
            raise ClientProtocolError("Transfer-Encoding without final chunked")
        if len(codings) != 1:
            raise NotImplementedByProxy("unsupported transfer coding")
        return F_CHUNKED, -1
    if cl:
        # Content-Length: 0 stays LENGTH so the next hop sees it too (POST with
        # an empty body); the engine treats a zero length as no body.
        return F_LENGTH, _content_length(cl, ClientProtocolError)
    return F_NONE, 0


def response_framing(
    status: int, request_method: str, te: list[bytes], cl: list[bytes]
) -> tuple[Framing, int]:
    """RFC 9112 6.3, in order: no-body statuses/HEAD, then TE, then CL, then close."""
    if status < 200 or status in (204, 304) or request_method == "HEAD":
        if cl:
            # Still validate it: a garbage Content-Length is a broken upstream.
            n = _content_length(cl, UpstreamProtocolError)
            return F_NONE, n
        return F_NONE, 0
    if te:
        if cl:
            raise UpstreamProtocolError("both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if codings == [b"chunked"]:
            return F_CHUNKED, -1
        raise UpstreamProtocolError("unsupported transfer coding from upstream")
    if cl:
        return F_LENGTH, _content_length(cl, UpstreamProtocolError)
    return F_CLOSE, -1


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]
