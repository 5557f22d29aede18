"""Bytes for the wire (pure): status lines, heads, chunk framing.

Responses ferryman writes itself are built in `pipeline/respond.py` on top of these.
"""

from __future__ import annotations

from ferryman.errors import reason
from ferryman.http1.events import F_CHUNKED, F_LENGTH, Framing, Headers

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int, reason_phrase: bytes | None = None) -> bytes:
    if reason_phrase:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase)
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode())
    return line


def framing_header(framing: Framing, length: int) -> bytes:
    if framing is F_LENGTH:
        return b"Content-Length: %d\r\n" % length
    if framing is F_CHUNKED:
        return b"Transfer-Encoding: chunked\r\n"
    return b""


def request_head(
    method: str, target: bytes, host: bytes, headers: Headers, framing: Framing, length: int
) -> bytes:
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, CRLF]
    for name, value in headers:
        parts += (name, b": ", value, CRLF)  # joined once below: no bytes formatting per field
    parts.append(framing_header(framing, length))
    parts.append(CRLF)
    return b"".join(parts)


def response_head(
    status: int, reason_phrase: bytes, headers: Headers, extra: bytes
) -> bytes:
    parts = [status_line(status, reason_phrase)]
    for name, value in headers:
        parts += (name, b": ", value, CRLF)
    parts.append(extra)
    parts.append(CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    if not data:
        return b""  # an empty chunk would be the last-chunk marker
    return b"%x\r\n%s\r\n" % (len(data), data)
