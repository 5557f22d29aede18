"""The body of an Upgrade request (pure): framed like any body, then the tunnel begins.

httptools ends an Upgrade request at its head (it asks llhttp to skip the body and
hands everything after the head over as "upgraded" bytes).  A request body sent
before the 101 belongs to the HTTP exchange, though (RFC 9110 7.8: the switch
happens after the 101 response, which comes after the request): it is relayed like
any other body, and only the bytes after it belong to the tunnel.

h11 frames that body (Content-Length or chunked, strictly, with its own limits on
chunk-size lines and trailers) and stops at its end, leaving what follows unread;
it is imported only when such a request arrives, so ordinary traffic pays nothing.
"""

from __future__ import annotations

from typing import Protocol

from ferryman.errors import ClientProtocolError
from ferryman.http1.events import Framing


class BodySink(Protocol):
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class UpgradeBody:
    """Feeds the body of one Upgrade request to ``sink``; `feed` reports where it ends."""

    __slots__ = ("_sink", "_conn")

    def __init__(self, sink: BodySink, framing: Framing, length: int, max_line: int) -> None:
        import h11  # only Upgrade requests with a body get here

        self._sink = sink
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_line)
        chunked = framing is Framing.CHUNKED
        frame = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
        # A stand-in head with the same framing: the real one was parsed and checked already.
        self._conn.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\n%s\r\n\r\n" % frame)
        self._next()

    def _next(self) -> object:
        import h11

        try:
            return self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ClientProtocolError(f"malformed request body: {exc}") from None

    def feed(self, data: bytes) -> int | None:
        """Pass on the body bytes in ``data``; the offset where the body ended, or None."""
        import h11

        self._conn.receive_data(data)
        while True:
            event = self._next()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Data):
                if event.data:
                    self._sink.on_request_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                # The end of the body lies in ``data``: what h11 left unread follows it.
                rest = len(self._conn.trailing_data[0])
                self._sink.on_request_end()
                return len(data) - rest
            else:  # pragma: no cover - h11 yields nothing else inside a request body
                raise ClientProtocolError(f"unexpected {type(event).__name__} in a request body")
