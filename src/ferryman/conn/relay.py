"""The client connection's upstream side: relaying one response (head, body, end),
upgrades, and what happens when the upstream fails.

Mixed into `Downstream` (which owns the state used here); the rules are the
module docstring's of `downstream.py`: nothing is relayed that the parser did
not accept, every body is re-framed, a truncated body is never passed off as
complete, and a request is retried only when provably safe.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, cast

from ferryman.conn import connect
from ferryman.conn.exchange import OUT_CHUNK, OUT_NONE, OUT_RAW, Exchange
from ferryman.conn.timeouts import IDEMPOTENT, P_UPSTREAM, RESP
from ferryman.errors import (
    FerrymanError,
    NoHealthyUpstream,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.group import Lease

if TYPE_CHECKING:
    from ferryman.conn.downstream import Downstream
    from ferryman.conn.engine import Engine



class UpstreamRelay:
    # Provided by Downstream.
    transport: asyncio.Transport | None
    closed: bool
    cur: Exchange | None
    engine: Engine
    loop: asyncio.AbstractEventLoop
    reverse: bool
    tunnel_pending: list[bytes] | None
    _timer: asyncio.TimerHandle | None
    _phase: int
    _phase_timeout: float
    _last: float

    @property
    def _ds(self) -> Downstream:
        return cast("Downstream", self)  # this mixin only ever lives in a Downstream

    def finish(self, ex: Exchange) -> None: ...
    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None: ...
    def log(self, ex: Exchange) -> None: ...
    def _proxy(self, ex: Exchange) -> None: ...
    def send_to(self, ex: Exchange, lease: Lease | None) -> None: ...
    def _abort(self) -> None: ...
    def _on_timer(self) -> None: ...
    def _pause(self, why: int) -> None: ...
    def _resume(self, why: int) -> None: ...

    # --------------------------------------------------- upstream handler side
    def on_response_head(self, head: ResponseHead) -> None:
        ex = self.cur
        assert ex is not None and self.transport is not None
        plan = ex.ctx.plan
        d = ex.ctx.proxy
        via = plan.reverse.via if (self.reverse and plan.reverse) else plan.forward.via
        status = head.status
        if status < 200:
            if status == 101:
                if d is None or not d.upgrade:
                    raise UpstreamProtocolError("upstream switched protocols unasked")
                ex.resp = head
                ex.status = 101
                hdrs = forward_response_headers(head.headers, head.connection_tokens, via, head.version)
                extra = b"Connection: upgrade\r\n"
                for name, value in head.headers:
                    if name.lower() == b"upgrade":
                        extra += b"Upgrade: %s\r\n" % value
                data = ser.response_head(101, head.reason, hdrs, extra)
                ex.bytes_out += len(data)
                self.transport.write(data)
                return
            if ex.head.version == "1.1":
                hdrs = forward_response_headers(head.headers, head.connection_tokens, via, head.version)
                self.transport.write(ser.response_head(status, head.reason, hdrs, b""))
            return
        if ex.cache is not None and ex.cache.stored is not None and self.engine.cache is not None:
            # Our validation was answered: a 304 freshens the entry, a 5xx may let it be
            # served stale (stale-if-error); either way the client gets the stored entry and
            # this response is only read to its end so the connection can be reused.
            if self.engine.cache.takeover(self._ds, ex, head):
                ex.cache_takeover = True
                return
        ex.resp = head
        ex.status = status
        now = self.loop.time()
        ex.t_first = monotonic() - ex.t0
        self._phase = RESP
        self._phase_timeout = plan.timeouts.upstream_idle
        self._last = now
        if self._timer is None:
            self._timer = self.loop.call_later(self._phase_timeout, self._on_timer)
        drop = head.connection_tokens
        if d is not None and d.cache_rules is not None and d.cache_rules.hidden:
            drop = drop | d.cache_rules.hidden  # e.g. our own targeted field (RFC 9213), kept in the store
        hdrs = forward_response_headers(head.headers, drop, via, head.version)
        cache_extra = b""
        if ex.cache is not None and self.engine.cache is not None:
            stored = forward_response_headers(head.headers, head.connection_tokens, None)
            cache_extra = self.engine.cache.on_response_head(self._ds, ex, head, stored)
        keep = ex.keep_alive and ex.req_done and not self.engine.draining
        if d is not None and d.upgrade:
            keep = False  # the upgrade was refused; bytes after it are not HTTP
            self.tunnel_pending = None
        framing = head.framing
        if framing is Framing.LENGTH:
            extra = b"Content-Length: %d\r\n" % head.content_length
            ex.out_mode = OUT_RAW if head.content_length else OUT_NONE
        elif framing is Framing.NONE:
            # HEAD and 304 keep the representation's length as metadata.
            if status != 204 and head.content_length > 0:
                extra = b"Content-Length: %d\r\n" % head.content_length
            else:
                extra = b""
            ex.out_mode = OUT_NONE
        elif ex.head.version == "1.1":
            extra = b"Transfer-Encoding: chunked\r\n"
            ex.out_mode = OUT_CHUNK
        else:
            extra = b""
            ex.out_mode = OUT_RAW
            keep = False
        if not keep:
            extra += b"Connection: close\r\n"
        elif ex.head.version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        ex.keep_alive = keep
        data = ser.response_head(status, head.reason, hdrs, extra + cache_extra)
        ex.bytes_out += len(data)
        self.transport.write(data)

    def on_response_body(self, data: bytes) -> None:
        ex = self.cur
        assert ex is not None and self.transport is not None
        if ex.resp is None:
            if ex.cache_takeover:
                return
            raise UpstreamProtocolError("response body without a response head")
        if not data:
            return
        if ex.cache is not None and self.engine.cache is not None:
            self.engine.cache.on_response_body(ex, data)
        ex.bytes_out += len(data)
        if ex.out_mode == OUT_CHUNK:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)
        self._last = self.loop.time()

    def on_response_end(self) -> None:
        ex = self.cur
        assert ex is not None and self.transport is not None
        if ex.cache_takeover and ex.resp is None:
            # Our validation got its 304: the connection goes back, the cache serves the client.
            conn, ex.up.conn = ex.up.conn, None
            self._release_server(ex, ok=True)
            if conn is not None:
                if ex.up.key is None or conn.private:
                    conn.close()
                else:
                    self.engine.park(ex.up.key, conn)
            return
        if ex.resp is None or ex.status == 101:
            return  # the end of an interim (1xx) response; a 101 goes on as a tunnel
        if ex.cache is not None and self.engine.cache is not None:
            self.engine.cache.on_response_end(self._ds, ex)
        if ex.out_mode == OUT_CHUNK:
            self.transport.write(ser.LAST_CHUNK)
        conn = ex.up.conn
        ex.up.conn = None
        self._release_server(ex, ok=ex.status < 500)
        if conn is not None:
            key = ex.up.key
            if (
                ex.resp.keep_alive
                and not conn.private
                and ex.req_done
                and ex.head.method != "HEAD"
                and not self.engine.draining
                and key is not None
            ):
                self.engine.park(key, conn)
            else:
                conn.close()
        self.finish(ex)

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream accepted the Upgrade (101): both sides become a tunnel."""
        ex = self.cur
        assert ex is not None
        ex.up.conn = None
        self._release_server(ex, ok=True)
        conn.detach()
        connect.join_upgrade(self._ds, ex, conn, rest)

    def _release_server(self, ex: Exchange, ok: bool | None) -> None:
        """Hand the attempt's server slot back; the lease makes a second call a no-op."""
        lease = ex.up.lease
        if lease is not None:
            lease.release(monotonic(), ok)

    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None:
        ex = self.cur
        if ex is None or self.closed:
            return
        conn = ex.up.conn
        ex.up.conn = None
        if conn is not None:
            conn.close()
        if ex.resp is None:
            self._upstream_error(ex, exc, reached=True, got_bytes=got_bytes)
        else:
            # Mid-body: the client must see the truncation, never a "complete" body.
            self._release_server(ex, ok=False)
            if ex.cache is not None and self.engine.cache is not None:
                self.engine.cache.on_abort(ex, f"upstream failed mid-body: {exc.detail}")
            ex.error = exc.detail
            ex.keep_alive = False
            self.log(ex)
            self._abort()

    def _upstream_error(
        self, ex: Exchange, exc: FerrymanError, reached: bool, got_bytes: bool = False
    ) -> None:
        """Before any response byte: retry when provably safe, else answer with the error."""
        up = ex.up
        stale_pool = reached and up.reused and not got_bytes and isinstance(exc, UpstreamClosed)
        lease = up.lease
        last = lease.server.plan.index if lease is not None else None
        bodyless = not up.body_sent and ex.body_buffered == 0 and ex.req_done
        may = False
        d = ex.ctx.proxy
        method = ex.ctx.head.method
        if bodyless and not (d is not None and d.upgrade and reached):
            if stale_pool and up.attempts < 3 and method in IDEMPOTENT:
                # The pooled socket was dead; the origin may still have read the request,
                # so only idempotent methods are re-sent (RFC 9112 9.3.1).
                may = True
            elif up.group is not None and not got_bytes:
                never_sent = not reached or isinstance(exc, UpstreamConnectError)
                if never_sent or method in IDEMPOTENT:
                    may = up.group.may_retry(up.attempts)
        if may and stale_pool and lease is not None and lease.held:
            # A stale pooled socket is not the server's fault: re-send to the same server,
            # keeping its slot (under max_conns a queued request keeps its turn).
            up.head_sent = False
            try:
                self.send_to(ex, lease)
            except FerrymanError as exc2:
                self.fail(ex, exc2)
            return
        self._release_server(ex, ok=stale_pool)
        if may:
            if stale_pool and last is not None:
                up.tried = up.tried - {last}  # the same server may be tried again
            up.head_sent = False
            try:
                self._proxy(ex)
            except NoHealthyUpstream:
                # Every server was tried: report what actually went wrong (502/504);
                # 503 is kept for "nothing healthy before trying".
                self.fail(ex, exc)
            except FerrymanError as exc2:
                self.fail(ex, exc2)
            return
        self.fail(ex, exc)

    def upstream_pause_writing(self) -> None:
        self._pause(P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self._resume(P_UPSTREAM)

