"""Answers that do not come from an upstream response: cache hits, coalesced
followers, synthetic responses.  Mixed into `Downstream`, which owns the state
used here (transport, timers, exchange bookkeeping); kept apart so the client
Protocol stays readable.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from ferryman.conn.exchange import OUT_CHUNK, OUT_NONE, OUT_RAW, Exchange
from ferryman.errors import FerrymanError
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, Headers, ResponseHead
from ferryman.pipeline import respond
from ferryman.pipeline.cache.store import BodyReader

if TYPE_CHECKING:
    from ferryman.conn.engine import Engine


class Responder:
    # Provided by Downstream.
    transport: asyncio.Transport | None
    closed: bool
    cur: Exchange | None
    engine: Engine
    loop: asyncio.AbstractEventLoop
    write_paused: bool
    _writable: asyncio.Future[None] | None

    def finish(self, ex: Exchange) -> None: ...
    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None: ...
    def log(self, ex: Exchange) -> None: ...
    def disarm(self) -> None: ...
    def _proxy(self, ex: Exchange) -> None: ...
    def _abort(self) -> None: ...

    # ----------------------------------------------------- answering from cache
    def send_synthetic(self, ex: Exchange, status: int, text: str, extra: Headers = ()) -> None:  # type: ignore[assignment]
        if self.closed or self.transport is None:
            return
        if not ex.req_done:
            ex.keep_alive = False  # the unread body would be parsed as a request
        data = respond.message(status, text, close=not ex.keep_alive, extra=list(extra))
        ex.status = status
        ex.bytes_out += len(data)
        self.transport.write(data)
        self.finish(ex)

    def resume_proxy(self, ex: Exchange) -> None:
        """Continue to the upstream after the cache declined (miss found late, fill unusable)."""
        if self.closed or ex is not self.cur:
            return
        try:
            self._proxy(ex)
        except FerrymanError as exc:
            self.fail(ex, exc)

    def abort_after_partial(self, ex: Exchange, reason: str) -> None:
        ex.error = reason
        ex.keep_alive = False
        self.log(ex)
        self._abort()

    def begin_stream(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        has_body: bool, length: int | None = None,
    ) -> None:
        assert self.transport is not None
        self.disarm()
        keep = ex.keep_alive and ex.req_done and not self.engine.draining
        if not has_body:
            ex.out_mode = OUT_NONE
            if length is not None:
                extra += b"Content-Length: %d\r\n" % length
        elif length is not None:
            ex.out_mode = OUT_RAW
            extra += b"Content-Length: %d\r\n" % length
        elif ex.head.version == "1.1":
            ex.out_mode = OUT_CHUNK
            extra += b"Transfer-Encoding: chunked\r\n"
        else:
            ex.out_mode = OUT_RAW
            keep = False
        extra += b"Connection: close\r\n" if not keep else (
            b"Connection: keep-alive\r\n" if ex.head.version == "1.0" else b""
        )
        ex.keep_alive = keep
        ex.status = status
        ex.resp = ResponseHead(
            status, reason or b"", "1.1", [], Framing.LENGTH, length or 0, keep, frozenset()
        )
        ex.t_first = monotonic() - ex.t0
        data = ser.response_head(status, reason or b"", hdrs, extra)
        ex.bytes_out += len(data)
        self.transport.write(data)

    def stream_chunk(self, ex: Exchange, data: bytes) -> bool:
        if self.closed or self.transport is None or ex.out_mode == OUT_NONE:
            return not self.closed
        ex.bytes_out += len(data)
        if ex.out_mode == OUT_CHUNK:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)
        return True

    def end_stream(self, ex: Exchange) -> None:
        if self.closed or self.transport is None:
            return
        if ex.out_mode == OUT_CHUNK:
            self.transport.write(ser.LAST_CHUNK)
        self.finish(ex)

    def write_cached(
        self, ex: Exchange, status: int, reason: bytes, hdrs: Headers, extra: bytes,
        body: object, start: int, end: int,
    ) -> None:
        self.begin_stream(ex, status, reason, hdrs, extra, has_body=False)
        self.end_stream(ex)

    async def stream_cached(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        reader: BodyReader | None, start: int, end: int,
    ) -> None:
        self.begin_stream(ex, status, reason, hdrs, extra, reader is not None, end - start)
        if reader is not None and end > start:
            async for chunk in reader.read_range(start, end):
                if not self.stream_chunk(ex, chunk):
                    return
                if self.write_paused:
                    await self.wait_writable()
        self.end_stream(ex)

    async def wait_writable(self) -> None:
        if not self.write_paused or self.closed:
            return
        if self._writable is None:
            self._writable = self.loop.create_future()
        await self._writable

    def _wake_writable(self) -> None:
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

