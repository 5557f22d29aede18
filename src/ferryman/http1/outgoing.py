"""How ferryman frames the messages it sends (pure): every body is re-framed here.

`response` decides, for one response to a client speaking ``version``, how its
body is delimited (Content-Length, chunked, or until close) and whether the
connection stays open, and gives the header lines that say so; `frame` gives
the bytes of one piece of body in that mode.  Relayed, cached and synthetic
responses all go through them, as do request bodies sent upstream (chunked
when the client's was).
"""

from __future__ import annotations

from typing import Final

NONE: Final = 0  # no body is sent
RAW: Final = 1  # the bytes as they are (Content-Length, or until close)
CHUNK: Final = 2  # chunked transfer coding

_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def response(version: str, has_body: bool, length: int | None, keep: bool) -> tuple[int, bytes, bool]:
    """(body mode, framing and Connection header lines, keep-alive) of a response.

    ``length`` is the body's length when known (for a bodiless answer to HEAD or a 304,
    the representation's length, sent as metadata); an HTTP/1.0 client gets a body of
    unknown length until the connection closes, never chunked.
    """
    if not has_body:
        mode = NONE
        lines = b"" if length is None else b"Content-Length: %d\r\n" % length
    elif length is not None:
        mode = RAW
        lines = b"Content-Length: %d\r\n" % length
    elif version == "1.1":
        mode = CHUNK
        lines = _CHUNKED
    else:
        mode = RAW
        lines = b""
        keep = False
    if not keep:
        return mode, lines + _CLOSE, False
    if version == "1.0":
        return mode, lines + _KEEP_ALIVE, True
    return mode, lines, True


def frame(mode: int, data: bytes) -> tuple[bytes, ...]:
    """The wire pieces of one non-empty piece of body (``()`` when no body is sent)."""
    if mode == CHUNK:
        return (b"%x\r\n" % len(data), data, b"\r\n")
    if mode == RAW:
        return (data,)
    return ()
