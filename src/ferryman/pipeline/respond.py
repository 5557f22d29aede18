"""Every response ferryman writes itself (pure): errors, redirects, fixed bodies,
the tunnel's 200, 100 Continue, admin answers, proxy-auth 407 challenges and 429s.

Rules this module owns:
- an error's status comes from the one table (`errors.py`: the exception's class);
  nothing here or elsewhere picks a status for an error;
- a synthetic text or error answer carries ``Cache-Control: no-store`` (no cache
  between us and the client keeps an error or a challenge);
- ``Retry-After`` goes with 503 and 429 (`RETRY_AFTER`);
- ``Connection: close`` is written here, when the caller says the connection ends;
- no other module spells a status line: relayed and cached heads go through
  `http1/serialize.response_head`, and these through `serialize.status_line`.

Responses that never change (the tunnel's 200, 100 Continue) are built once.
"""

from __future__ import annotations

import json as _json

from ferryman.errors import FerrymanError, ProxyAuthRequired, RateLimited
from ferryman.http1.events import Headers
from ferryman.http1.serialize import CRLF, status_line

CONTINUE_100 = status_line(100) + CRLF
TUNNEL_ESTABLISHED = status_line(200, b"Connection established") + CRLF

RETRY_AFTER: dict[int, bytes] = {503: b"5", 429: b"5"}  # seconds a client should wait

_TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
_NO_STORE = b"Cache-Control: no-store\r\n"
_CLOSE = b"Connection: close\r\n"


def text(status: int, message: str, close: bool, extra: Headers = ()) -> bytes:  # type: ignore[assignment]
    """A short plain-text answer (never stored by caches); ``extra`` fields go in the head."""
    body = (message + "\n").encode("utf-8", "replace")
    parts = [status_line(status), _TEXT, b"Content-Length: %d\r\n" % len(body), _NO_STORE]
    for name, value in extra:
        parts.append(b"%s: %s\r\n" % (name, value))
    retry = RETRY_AFTER.get(status)
    if retry is not None and not any(n.lower() == b"retry-after" for n, _ in extra):
        parts.append(b"Retry-After: %s\r\n" % retry)
    if close:
        parts.append(_CLOSE)
    parts.append(CRLF)
    parts.append(body)
    return b"".join(parts)


def error(exc: FerrymanError, close: bool = True, extra: Headers = ()) -> bytes:  # type: ignore[assignment]
    """The answer to a request that ended in ``exc``: its status from the error table."""
    return text(exc.status, f"ferryman: {exc.status} {type(exc).__name__}: {exc.detail}", close, extra)


def challenge(exc: ProxyAuthRequired, proxy_authenticate: bytes, close: bool) -> bytes:
    """A 407 asking for proxy credentials (``Proxy-Authenticate: <proxy_authenticate>``)."""
    return error(exc, close, [(b"Proxy-Authenticate", proxy_authenticate)])


def retry_later(exc: RateLimited, retry_after: int, close: bool) -> bytes:
    """A 429 with the seconds the client should wait in ``Retry-After``."""
    return error(exc, close, [(b"Retry-After", b"%d" % max(1, retry_after))])


def bodiless(data: bytes) -> bytes:
    """A whole answer built here without its body: what a HEAD request gets (RFC 9110
    9.3.2), its Content-Length kept as metadata.  A body sent anyway would be read by the
    client as the start of the next response."""
    return data[: data.find(b"\r\n\r\n") + 4]


def message(status: int, detail: str, close: bool, extra: Headers = ()) -> bytes:  # type: ignore[assignment]
    """A ferryman answer that is not an error of the table (cache: purge results, 504
    only-if-cached, 416): ``ferryman: <detail>``."""
    return text(status, f"ferryman: {detail}", close, extra)


def redirect(status: int, location: str) -> bytes:
    """A route's redirect (reverse ``redirect`` action)."""
    return text(status, f"moved to {location}", False, [(b"Location", location.encode("latin-1"))])


def fixed(status: int, content_type: bytes, body: bytes) -> bytes:
    """A fixed response: a route's ``respond`` action, admin documents."""
    head = b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type, len(body))
    return b"".join((status_line(status), head, body))


def json(status: int, obj: object) -> bytes:
    """An admin API answer."""
    return fixed(status, b"application/json", _json.dumps(obj, indent=1).encode() + b"\n")
