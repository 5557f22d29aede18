"""Answers that do not come from an upstream response: cache hits, coalesced
followers, ferryman's own answers.  One per client connection, composed into it
(`Downstream.responder`); it writes through the connection and moves its state
through `ClientConn.to`.
"""

from __future__ import annotations

import asyncio

from ferryman.conn.client import ClientConn
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.conn.state import State
from ferryman.errors import FerrymanError
from ferryman.http1 import outgoing
from ferryman.http1 import serialize as ser
from ferryman.http1.events import F_LENGTH, Headers, ResponseHead
from ferryman.pipeline import respond
from ferryman.pipeline.cache.store import BodyReader

WRITING, CLOSED = State.WRITING, State.CLOSED


def send_body(transport: asyncio.Transport, mode: int, data: bytes, head: bytes | None = None) -> None:
    """One piece of a body, re-framed (http1/outgoing.py): every body ferryman sends,
    to the client or to the upstream, goes through here.  ``head``: the message's head,
    not written yet, sent in the same write (one syscall for a small response)."""
    if mode == outgoing.CHUNK:
        frames = outgoing.frame(mode, data)
        transport.writelines(frames if head is None else (head, *frames))
    elif head is None:
        transport.write(data)
    elif len(data) <= 8192:
        transport.write(head + data)  # a copy of a few bytes beats a second syscall
    else:
        transport.writelines((head, data))

class Responder:
    __slots__ = ("conn", "engine")

    def __init__(self, conn: ClientConn, engine: Engine) -> None:
        self.conn = conn
        self.engine = engine

    def log_bare(self, client_ip: str, exc: FerrymanError) -> None:
        """The access log line of an error with no request to name (a head not read)."""
        lg = self.engine.log
        if lg.enabled:
            lg.log(client_ip, "", "-", "-", "1.1", exc.status, 0, 0, 0.0, None, None, "", "", exc.detail)

    def write_error(self, ex: Exchange | None, exc: FerrymanError) -> None:
        """The error answer from the one table (pipeline/respond.py), with no body after an
        answer to HEAD (RFC 9110 9.3.2)."""
        conn = self.conn
        tr = conn.transport
        assert tr is not None
        data = respond.error(exc)
        if ex is not None:
            if ex.ctx.head.method == "HEAD":
                data = respond.bodiless(data)
            ex.bytes_out += len(data)
        tr.write(data)

    def send_synthetic(self, ex: Exchange, status: int, text: str, extra: Headers = ()) -> None:  # type: ignore[assignment]
        conn = self.conn
        if conn.closed or conn.transport is None:
            return
        if not ex.req_done:
            ex.keep_alive = False  # the unread body would be parsed as a request
        data = respond.message(status, text, close=not ex.keep_alive, extra=list(extra))
        if ex.ctx.head.method == "HEAD":
            data = respond.bodiless(data)
        ex.status = status
        conn.write(ex, data)
        conn.finish(ex)

    def resume_proxy(self, ex: Exchange) -> None:
        """Continue to the upstream after the cache declined (miss found late, fill unusable)."""
        conn = self.conn
        if conn.closed or ex is not conn.cur:
            return
        try:
            conn.proxy(ex)
        except FerrymanError as exc:
            conn.fail(ex, exc)

    def abort_after_partial(self, ex: Exchange, reason: str) -> None:
        ex.error = reason
        ex.keep_alive = False
        self.conn.log(ex)
        self.conn.abort()

    def response_head(
        self, ex: Exchange, status: int, reason: bytes, hdrs: Headers, extra: bytes,
        has_body: bool, length: int | None, tail: bytes = b"",
    ) -> bytes:
        """A response head's bytes: the one place that frames what ferryman sends the client
        (relayed, cached, or its own streamed answers) and settles keep-alive.  ``extra``
        lines go before the framing lines, ``tail`` after them.  The caller writes them
        (the relay with the first piece of the body: one write, see `UpstreamRelay.held`)."""
        keep = ex.keep_alive and ex.req_done and not self.engine.draining
        mode, lines, keep = outgoing.response(ex.ctx.head.version, has_body, length, keep)
        ex.out_mode = mode
        ex.keep_alive = keep
        ex.status = status
        return ser.response_head(status, reason, hdrs, extra + lines + tail)

    def begin_stream(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        has_body: bool, length: int | None = None,
    ) -> None:
        head = self._begin(ex, status, reason, hdrs, extra, has_body, length)
        if head is not None:
            self.conn.write(ex, head)

    def write_whole(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        body: bytes | None,
    ) -> None:
        """A whole answer whose body is in memory (a memory-cache hit): head and body leave
        in one write, then the exchange ends.  ``body`` None: no body (HEAD)."""
        head = self._begin(ex, status, reason, hdrs, extra, body is not None, len(body or b""))
        if head is None:
            return
        conn = self.conn
        assert conn.transport is not None
        ex.bytes_out += len(head)
        if body and ex.out_mode != outgoing.NONE:
            ex.bytes_out += len(body)
            send_body(conn.transport, ex.out_mode, body, head)
        else:
            conn.transport.write(head)
        if ex.out_mode == outgoing.CHUNK:
            conn.transport.write(ser.LAST_CHUNK)
        conn.finish(ex)

    def _begin(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        has_body: bool, length: int | None,
    ) -> bytes | None:
        """The answer starts: the state, the response's facts, and its head's bytes (not
        written); None when the client left while the answer was being looked up."""
        conn = self.conn
        if conn.state is CLOSED:
            return None
        conn.to(WRITING)
        ex.resp = resp = ResponseHead(
            status, reason or b"", "1.1", [], F_LENGTH, length or 0, ex.keep_alive, frozenset()
        )
        ex.t_first = conn.clock.time() - ex.t0
        head = self.response_head(ex, status, reason or b"", hdrs, extra, has_body, length)
        resp.keep_alive = ex.keep_alive
        return head

    def stream_chunk(self, ex: Exchange, data: bytes) -> bool:
        conn = self.conn
        if conn.closed or conn.transport is None or ex.out_mode == outgoing.NONE:
            return not conn.closed
        conn.write_body(ex, data)
        return True

    def end_stream(self, ex: Exchange) -> None:
        conn = self.conn
        if conn.closed or conn.transport is None:
            return
        if ex.out_mode == outgoing.CHUNK:
            conn.transport.write(ser.LAST_CHUNK)
        conn.finish(ex)

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
        conn = self.conn
        if reader is not None and end > start:
            async for chunk in reader.read_range(start, end):
                if not self.stream_chunk(ex, chunk):
                    return
                if conn.write_paused:
                    await conn.wait_writable()
        self.end_stream(ex)
