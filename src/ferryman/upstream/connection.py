"""One connection to an upstream (origin or parent proxy), as an asyncio Protocol.

It moves bytes and reports parser callbacks to its current handler (the
client connection it serves); it decides nothing about the exchange.

State table:
    connecting -> idle (in pool) | busy (handler set)
    busy  -> idle     when the response ended, the request was fully sent and
                       both sides allow keep-alive (decided by the handler)
    busy  -> closed   on any error, close-delimited body, HEAD, or early response
    idle  -> closed   on idle timeout, on any byte or EOF from the upstream

Reading is paused only on behalf of a handler (its client cannot take more
bytes): `detach` resumes it, so an idle connection always reads, notices the
upstream's EOF, and the next request on it is never stuck behind a pause it
did not make.  The pool refuses a connection that is not `idle_ready`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Protocol

from ferryman.errors import FerrymanError, UpstreamClosed
from ferryman.http1.events import ResponseHead
from ferryman.http1.parser import ResponseParser


class UpstreamHandler(Protocol):
    # A relayed head the handler holds back to send with the body (one write to its
    # client, not two); `flush` writes it, and is called at the end of each read.
    held: bytes | None

    def flush(self) -> None: ...
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None: ...
    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "key", "transport", "parser", "handler", "closed", "got_bytes", "requests", "private",
        "paused", "_max_header", "_max_headers",
    )

    def __init__(self, key: Hashable, max_header_size: int, max_headers: int) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.handler: UpstreamHandler | None = None
        self.closed = False
        self.got_bytes = False
        self.requests = 0
        self.private = False  # carries one client's PROXY header: never pooled
        self.paused = False  # reading paused for the handler's slow client
        self._max_header = max_header_size
        self._max_headers = max_headers
        self.parser = ResponseParser(self, max_header_size, max_headers)

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    @property
    def idle_ready(self) -> bool:
        """May sit in the pool: alive, no handler, reading (not paused)."""
        return self.handler is None and not self.paused and self.usable

    # -- driven by the handler ---------------------------------------------
    def attach(self, handler: UpstreamHandler, method: str) -> None:
        self.handler = handler
        self.got_bytes = False
        self.requests += 1
        self.parser.request_method = method

    def detach(self) -> None:
        self.handler = None
        self.resume_reading()

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.handler = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.handler = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport  # type: ignore[assignment]  # (no cast(): a call less)

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            # Bytes on an idle connection are never a valid response: drop it.
            self.close()
            return
        self.got_bytes = True
        try:
            off = self.parser.feed(data)
        except FerrymanError as exc:
            h = self.handler
            self.abort()
            if h is not None:
                h.upstream_failed(exc, True)
            return
        if off is not None:
            # 101 Switching Protocols: this socket is a tunnel now, never pooled.
            h = self.handler
            self.handler = None
            self.closed = True
            if h is not None:
                h.on_upgrade(self, data[off:])
        else:
            h = self.handler
            if h is None:
                if self.parser.in_head:
                    self.close()  # bytes after a complete response: never a valid next response
            elif h.held is not None:
                h.flush()  # the head came without body bytes in this read

    def eof_received(self) -> bool | None:
        handler = self.handler
        if handler is not None:
            # A close-delimited body ends here; llhttp learns it from an empty feed.
            try:
                self.parser.finish()
            except FerrymanError as exc:
                h = self.handler
                self.close()
                if h is not None:
                    h.upstream_failed(exc, self.got_bytes)
                return None
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        h = self.handler
        self.handler = None
        if h is not None:
            h.upstream_failed(UpstreamClosed("upstream closed the connection"), self.got_bytes)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.upstream_resume_writing()

    # -- parser sink: straight through to the handler ----------------------
    # Anything parsed while no request is outstanding is unsolicited: the
    # connection can no longer be framed reliably and is closed, never pooled.
    def on_response_head(self, head: ResponseHead) -> None:
        if self.handler is not None:
            self.handler.on_response_head(head)
        else:
            self.close()

    def on_response_body(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.on_response_body(data)
        else:
            self.close()

    def on_response_end(self) -> None:
        if self.handler is not None:
            self.handler.on_response_end()
        else:
            self.close()
