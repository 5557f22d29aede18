"""The client connection: an asyncio Protocol that carries out the request's phases.

Rules this module owns:
- one exchange is served at a time; pipelined requests queue behind it and
  reading pauses until they are reached (responses leave in request order);
- every request ends in exactly one response or one error, and is logged once;
- a connection that saw an error is closed, never reused;
- bytes are only relayed after the parser accepted them, and every body is
  re-framed by ferryman, so the next hop can never frame it differently.

Connection life (timer phase in brackets):
    idle [client_idle / first: client_header] -> head [client_header]
      -> body [client_body, activity] -> wait [upstream_header]
      -> response [upstream_idle, activity] -> idle | closed
    CONNECT: head -> dialing -> tunnel (conn/tunnel.py owns it from there)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import cast

from ferryman.config.compile import ListenerPlan, Plan
from ferryman.conn.engine import Engine
from ferryman.conn.tunnel import RelaySide, Tunnel
from ferryman.errors import (
    BodyTooLarge,
    ClientProtocolError,
    ClientTimeout,
    FerrymanError,
    Forbidden,
    LoopDetected,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, RequestHead, ResponseHead
from ferryman.http1.headers import forward_request_headers, forward_response_headers
from ferryman.http1.parser import RequestParser
from ferryman.pipeline.route.router import Target, parse_absolute, parse_authority
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.dial import open_connection

log = logging.getLogger("ferryman")

# timer phases
IDLE, HEAD, BODY, WAIT, RESP, TUNNEL = range(6)
# reasons to stop reading from the client
_P_BUFFER, _P_UPSTREAM, _P_PIPELINE = 1, 2, 4
_BUFFER_HIGH = 256 * 1024
# how the response body is written to the client
_OUT_NONE, _OUT_RAW, _OUT_CHUNK = 0, 1, 2

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Exchange:
    """Per-request state; lives from the request head to the log line."""

    __slots__ = (
        "head", "plan", "target", "t0", "key", "conn", "reused", "retried", "req_bytes",
        "body_buf", "body_buffered", "req_done", "resp", "out_mode", "status",
        "bytes_in", "bytes_out", "t_connect", "t_first", "keep_alive", "task",
        "head_sent", "upstream_label", "error", "logged",
    )

    def __init__(self, head: RequestHead, now: float) -> None:
        self.head = head
        self.plan: Plan | None = None
        self.target: Target | None = None
        self.t0 = now
        self.key: tuple[str, str, int] | None = None
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self.req_bytes = b""
        self.body_buf: list[bytes] = []
        self.body_buffered = 0
        self.req_done = head.framing is Framing.NONE
        self.resp: ResponseHead | None = None
        self.out_mode = _OUT_NONE
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_connect: float | None = None
        self.t_first: float | None = None
        self.keep_alive = head.keep_alive
        self.task: asyncio.Task[None] | None = None
        self.head_sent = False
        self.upstream_label = ""
        self.error = ""
        self.logged = False


class Downstream(asyncio.Protocol):
    def __init__(self, engine: Engine, listener: ListenerPlan) -> None:
        self.engine = engine
        self.listener = listener
        self.loop = engine.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.client_allowed = False
        limits = engine.plan.limits
        self.parser = RequestParser(
            self, limits.max_header_size, limits.max_url_length, limits.max_headers
        )
        self.cur: Exchange | None = None  # being served
        self.rx: Exchange | None = None  # being read by the parser
        self.queue: deque[Exchange] = deque()
        self.closed = False
        self.write_paused = False
        self._paused = 0
        self._timer: asyncio.TimerHandle | None = None
        self._phase = IDLE
        self._phase_timeout = 0.0
        self._last = 0.0
        self._tunnel_pending: list[bytes] | None = None
        self.tunnel: Tunnel | None = None

    # ------------------------------------------------------------------ timers
    def _arm(self, phase: int, timeout: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._phase = phase
        self._phase_timeout = timeout
        self._last = self.loop.time()
        self._timer = self.loop.call_later(timeout, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase in (BODY, RESP):
            # Activity deadlines: re-arm for the remainder if bytes moved meanwhile.
            left = self._last + self._phase_timeout - self.loop.time()
            if left > 0.001:
                self._timer = self.loop.call_later(left, self._on_timer)
                return
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            self._fail(self.rx, ClientTimeout("timed out reading the request header"))
        elif phase == BODY:
            self._fail(self.cur, ClientTimeout("timed out reading the request body"))
        elif phase == WAIT:
            t = self._phase_timeout
            self._fail(self.cur, UpstreamTimeout(f"upstream sent no response within {t:g}s"))
        elif phase == RESP:
            self._fail(self.cur, UpstreamTimeout("upstream stalled while sending the response"))

    # ------------------------------------------------------------ read pausing
    def _pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0])
        self.client_allowed = self.engine.plan.forward.clients.allows(self.client_ip)
        self.transport.set_write_buffer_limits(high=256 * 1024)
        self.engine.connections.add(self)
        self._arm(IDLE, self.engine.plan.timeouts.client_header)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._tunnel_pending is not None:
            self._tunnel_pending.append(data)
            return
        if self._phase == IDLE and self.cur is None:
            self._arm(HEAD, self.engine.plan.timeouts.client_header)
        try:
            off = self.parser.feed(data)
        except FerrymanError as exc:
            self._fail(self.rx if self.rx is not None else self.cur, exc)
            return
        if off is not None and not self.closed:
            ex = self.rx
            rest = data[off:]
            if ex is not None and ex.head.method == "CONNECT":
                if self._tunnel_pending is None:
                    # CONNECT behind a pipelined request: not supported.
                    self._fail(ex, ClientProtocolError("CONNECT pipelined behind a request"))
                elif rest:
                    self._tunnel_pending.append(rest)
            elif rest:
                # An Upgrade request: ferryman does not upgrade in forward mode
                # (the Upgrade field was stripped), so parsing simply goes on.
                self.data_received(rest)

    def eof_received(self) -> bool | None:
        # A client that half-closes after a complete request still gets its
        # response (RFC 9112 9.6); close once it is written.
        if self.cur is not None and self.rx is self.cur and self.cur.req_done:
            self.cur.keep_alive = False
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.engine.connections.discard(self)
        ex = self.cur
        if ex is not None and self.tunnel is None:
            if ex.task is not None:
                ex.task.cancel()
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            if not ex.status:
                ex.status = 499
                ex.error = ex.error or "client closed the connection"
            self._log(ex)
        self.cur = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.cur
        if ex is not None and ex.conn is not None and ex.conn.transport is not None:
            ex.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.cur
        if ex is not None and ex.conn is not None and ex.conn.transport is not None:
            ex.conn.transport.resume_reading()

    # ------------------------------------------------------ request parsing sink
    def on_request_head(self, head: RequestHead) -> None:
        ex = Exchange(head, monotonic())
        self.rx = ex
        if self.cur is None:
            self.cur = ex
            self._start(ex)
        else:
            self.queue.append(ex)
            self._pause(_P_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        ex = self.rx
        assert ex is not None
        if not data:
            return  # an empty chunk upstream would end a chunked body early
        ex.bytes_in += len(data)
        limit = ex.plan.limits.max_body_size if ex.plan else self.engine.plan.limits.max_body_size
        if limit and ex.bytes_in > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        conn = ex.conn
        if conn is not None and ex.head_sent:
            if ex.head.framing is Framing.CHUNKED:
                assert conn.transport is not None
                conn.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                conn.write(data)
            self._last = self.loop.time()
        else:
            ex.body_buf.append(data)
            ex.body_buffered += len(data)
            if ex.body_buffered > _BUFFER_HIGH:
                self._pause(_P_BUFFER)

    def on_request_end(self) -> None:
        ex = self.rx
        assert ex is not None
        ex.req_done = True
        if ex is self.cur and ex.conn is not None and ex.head_sent:
            if ex.head.framing is Framing.CHUNKED:
                ex.conn.write(ser.LAST_CHUNK)
            if ex.resp is None:
                self._arm(WAIT, ex.plan.timeouts.upstream_header if ex.plan else 60.0)

    # ------------------------------------------------------------- phases
    def _start(self, ex: Exchange) -> None:
        """Admit and route one request, then find it an upstream connection."""
        plan = ex.plan = self.engine.plan
        fwd = plan.forward
        head = ex.head
        if not self.client_allowed:
            raise Forbidden(
                f"client {self.client_ip} may not use this proxy (rule: forward.clients)"
            )
        if head.method == "CONNECT":
            target = ex.target = parse_authority(head.target)
            if target.port not in fwd.connect_ports:
                raise Forbidden(
                    f"CONNECT to port {target.port} is not allowed (rule: forward.connect_ports)"
                )
            verdict = fwd.acl.check("CONNECT", target.host, target.port)
            if not verdict.allowed:
                raise Forbidden(f"access to {target.host} denied (rule: {verdict.rule})")
            self._disarm()
            self._phase = TUNNEL
            self._tunnel_pending = []
            ex.task = self.loop.create_task(self._open_tunnel(ex))
            return
        target = ex.target = parse_absolute(head.target)
        verdict = fwd.acl.check(head.method, target.host, target.port)
        if not verdict.allowed:
            raise Forbidden(f"access to {target.host} denied (rule: {verdict.rule})")
        headers, looped = forward_request_headers(head.headers, head.connection_tokens, fwd.via)
        if looped:
            raise LoopDetected("forwarding loop detected (our own Via came back)")
        if fwd.parent is not None:
            key = ("parent", fwd.parent[0], fwd.parent[1])
            req_target = b"%s://%s%s" % (target.scheme.encode(), target.authority, target.path)
        else:
            key = (target.scheme, target.host, target.port)
            req_target = target.path
        ex.key = key
        ex.upstream_label = f"{key[1]}:{key[2]}"
        ex.req_bytes = ser.request_head(
            head.method, req_target, target.authority, headers, head.framing,
            head.content_length,
        )
        if not ex.req_done:
            self._arm(BODY, plan.timeouts.client_body)
        else:
            self._disarm()
        conn = self.engine.pool.acquire(key)
        if conn is not None:
            ex.reused = True
            self._attach(ex, conn)
        else:
            ex.task = self.loop.create_task(self._dial(ex))

    async def _dial(self, ex: Exchange) -> None:
        assert ex.plan is not None and ex.target is not None and ex.key is not None
        plan = ex.plan
        target = ex.target
        t0 = monotonic()
        parent = plan.forward.parent
        host, port = parent if parent is not None else (target.host, target.port)
        key = ex.key
        limits = plan.limits
        try:
            addrs = await self.engine.resolver.resolve(host, port)
            if parent is None and any(self.engine.is_self(str(a[1][0]), port) for a in addrs):
                raise LoopDetected(f"request aimed at ferryman itself ({host}:{port})")
            tls = parent is None and target.scheme == "https"
            _, proto = await open_connection(
                addrs,
                lambda: UpstreamConnection(key, limits.max_header_size, limits.max_headers),
                plan.timeouts.upstream_connect,
                self.engine.tls_context if tls else None,
                target.host if tls else None,
            )
        except FerrymanError as exc:
            ex.task = None
            if ex is self.cur and not self.closed:
                self._fail(ex, exc)
            return
        ex.task = None
        assert isinstance(proto, UpstreamConnection)
        if ex.t_connect is None:
            ex.t_connect = monotonic() - t0
        if ex is not self.cur or self.closed:
            proto.close()
            return
        self._attach(ex, proto)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.conn = conn
        conn.attach(self, ex.head.method)
        if self.write_paused and conn.transport is not None:
            conn.transport.pause_reading()
        conn.write(ex.req_bytes)
        ex.head_sent = True
        if ex.head.expect_continue and not ex.req_done and ex.head.version == "1.1":
            assert self.transport is not None
            self.transport.write(ser.CONTINUE_100)
        if ex.body_buf:
            chunked = ex.head.framing is Framing.CHUNKED
            for data in ex.body_buf:
                if chunked:
                    assert conn.transport is not None
                    conn.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
                else:
                    conn.write(data)
            ex.body_buf = []
            ex.body_buffered = 0
            self._resume(_P_BUFFER)
        if ex.req_done:
            if ex.head.framing is Framing.CHUNKED:
                conn.write(ser.LAST_CHUNK)
            assert ex.plan is not None
            self._arm(WAIT, ex.plan.timeouts.upstream_header)

    # --------------------------------------------------- upstream handler side
    def on_response_head(self, head: ResponseHead) -> None:
        ex = self.cur
        assert ex is not None and ex.plan is not None and self.transport is not None
        via = ex.plan.forward.via
        status = head.status
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError("upstream switched protocols unasked")
            if ex.head.version == "1.1":
                hdrs = forward_response_headers(head.headers, head.connection_tokens, via)
                self.transport.write(ser.response_head(status, head.reason, hdrs, b""))
            return
        ex.resp = head
        ex.status = status
        now = self.loop.time()
        ex.t_first = monotonic() - ex.t0
        self._phase = RESP
        self._phase_timeout = ex.plan.timeouts.upstream_idle
        self._last = now
        if self._timer is None:
            self._timer = self.loop.call_later(self._phase_timeout, self._on_timer)
        hdrs = forward_response_headers(head.headers, head.connection_tokens, via)
        keep = ex.keep_alive and ex.req_done and not self.engine.draining
        framing = head.framing
        if framing is Framing.LENGTH:
            extra = b"Content-Length: %d\r\n" % head.content_length
            ex.out_mode = _OUT_RAW if head.content_length else _OUT_NONE
        elif framing is Framing.NONE:
            # HEAD and 304 keep the representation's length as metadata.
            if status != 204 and head.content_length > 0:
                extra = b"Content-Length: %d\r\n" % head.content_length
            else:
                extra = b""
            ex.out_mode = _OUT_NONE
        elif ex.head.version == "1.1":
            extra = b"Transfer-Encoding: chunked\r\n"
            ex.out_mode = _OUT_CHUNK
        else:
            extra = b""
            ex.out_mode = _OUT_RAW
            keep = False
        if not keep:
            extra += b"Connection: close\r\n"
        elif ex.head.version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        ex.keep_alive = keep
        data = ser.response_head(status, head.reason, hdrs, extra)
        ex.bytes_out += len(data)
        self.transport.write(data)

    def on_response_body(self, data: bytes) -> None:
        ex = self.cur
        assert ex is not None and self.transport is not None
        if not data:
            return
        ex.bytes_out += len(data)
        if ex.out_mode == _OUT_CHUNK:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)
        self._last = self.loop.time()

    def on_response_end(self) -> None:
        ex = self.cur
        assert ex is not None and self.transport is not None
        if ex.resp is None:
            return  # the end of an interim (1xx) response
        if ex.out_mode == _OUT_CHUNK:
            self.transport.write(ser.LAST_CHUNK)
        conn = ex.conn
        ex.conn = None
        if conn is not None:
            key = ex.key
            if (
                ex.resp.keep_alive
                and ex.req_done
                and ex.head.method != "HEAD"
                and not self.engine.draining
                and key is not None
            ):
                conn.detach()
                if not self.engine.pool.release(key, conn, self.loop.time()):
                    conn.close()
            else:
                conn.close()
        self._finish(ex)

    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None:
        ex = self.cur
        if ex is None or self.closed:
            return
        conn = ex.conn
        ex.conn = None
        if conn is not None:
            conn.close()
        if ex.resp is None:
            if (
                ex.reused
                and not got_bytes
                and not ex.retried
                and isinstance(exc, UpstreamClosed)
                and ex.body_buffered == 0
                and ex.head.content_length <= 0
                and ex.head.framing is not Framing.CHUNKED
            ):
                # A pooled connection the origin had closed just as we reused it:
                # the request provably never got an answer; try once on a new one.
                ex.retried = True
                ex.reused = False
                ex.head_sent = False
                ex.task = self.loop.create_task(self._dial(ex))
                return
            self._fail(ex, exc)
        else:
            # Mid-body: the client must see the truncation, never a "complete" body.
            ex.error = exc.detail
            ex.keep_alive = False
            self._log(ex)
            self._abort()

    def upstream_pause_writing(self) -> None:
        self._pause(_P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self._resume(_P_UPSTREAM)

    # ------------------------------------------------------------- endings
    def _finish(self, ex: Exchange) -> None:
        self._log(ex)
        self.cur = None
        if self.rx is ex:
            self.rx = None
        if not ex.keep_alive or self.closed:
            self._close()
            return
        if self.queue:
            nxt = self.cur = self.queue.popleft()
            if not self.queue:
                self._resume(_P_PIPELINE)
            try:
                self._start(nxt)
            except FerrymanError as exc:
                self._fail(nxt, exc)
            return
        self._arm(IDLE, ex.plan.timeouts.client_idle if ex.plan else 60.0)
        if self.engine.draining:
            self._close()

    def _fail(self, ex: Exchange | None, exc: FerrymanError) -> None:
        """End the exchange with a synthetic error response and close the connection."""
        if self.closed:
            return
        if ex is not None:
            if ex.task is not None:
                ex.task.cancel()
                ex.task = None
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
        started = ex is not None and ex.resp is not None
        if not started and self.transport is not None:
            body = f"ferryman: {exc.status} {type(exc).__name__}: {exc.detail}"
            data = ser.simple_response(exc.status, body, close=True)
            self.transport.write(data)
            if ex is not None:
                ex.bytes_out += len(data)
        if ex is not None:
            if not started:
                ex.status = exc.status
            ex.error = exc.detail
            ex.keep_alive = False
            self._log(ex)
        elif self.transport is not None:
            self._log_bare(exc)
        if started:
            self._abort()
        else:
            self._close()

    def _close(self) -> None:
        self._disarm()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _abort(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.closed = True
            self.transport.close()

    def _log(self, ex: Exchange) -> None:
        if ex.logged:
            return
        ex.logged = True
        lg = self.engine.log
        if not lg.enabled:
            return
        head = ex.head
        lg.log(
            self.client_ip, "", head.method, head.target.decode("latin-1"), head.version,
            ex.status, ex.bytes_in, ex.bytes_out, monotonic() - ex.t0,
            ex.t_connect, ex.t_first, "", ex.upstream_label, ex.error,
        )

    def _log_bare(self, exc: FerrymanError) -> None:
        lg = self.engine.log
        if lg.enabled:
            lg.log(self.client_ip, "", "-", "-", "1.1", exc.status, 0, 0, 0.0, None, None,
                   "", "", exc.detail)

    # ------------------------------------------------------------- CONNECT
    async def _open_tunnel(self, ex: Exchange) -> None:
        assert ex.plan is not None and ex.target is not None and self.transport is not None
        plan = ex.plan
        target = ex.target
        parent = plan.forward.parent
        t0 = monotonic()
        try:
            host, port = parent if parent is not None else (target.host, target.port)
            addrs = await self.engine.resolver.resolve(host, port)
            if parent is None and any(self.engine.is_self(str(a[1][0]), port) for a in addrs):
                raise LoopDetected(f"CONNECT aimed at ferryman itself ({host}:{port})")
            up_tr, up = await open_connection(addrs, RelaySide, plan.timeouts.upstream_connect)
            assert isinstance(up, RelaySide)
            ex.upstream_label = f"{host}:{port}"
            ex.t_connect = monotonic() - t0
            if parent is not None:
                waiter: asyncio.Future[tuple[bytes, bytes]] = self.loop.create_future()
                up.head_waiter = waiter
                up_tr.write(
                    b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.authority, target.authority)
                )
                try:
                    async with asyncio.timeout(plan.timeouts.upstream_header):
                        head, rest = await waiter
                except TimeoutError:
                    up_tr.close()
                    raise UpstreamTimeout("parent proxy did not answer CONNECT") from None
                except (OSError, ValueError) as err:
                    up_tr.close()
                    raise UpstreamConnectError(f"parent proxy failed CONNECT: {err}") from None
                status_line = head.split(b"\r\n", 1)[0]
                parts = status_line.split(b" ", 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
                    up_tr.close()
                    raise UpstreamConnectError(
                        "parent proxy refused CONNECT: " + status_line.decode("latin-1")[:100]
                    )
                if rest:
                    up.pending.append(rest)
        except FerrymanError as exc:
            ex.task = None
            self._tunnel_pending = None
            if not self.closed:
                self._fail(ex, exc)
            return
        ex.task = None
        if self.closed:
            up_tr.close()
            return
        ex.status = 200
        ex.t_first = monotonic() - ex.t0
        self.transport.write(_ESTABLISHED)
        client = RelaySide()
        client.transport = self.transport
        client.pending = self._tunnel_pending or []
        self._tunnel_pending = None
        for data in client.pending:
            client.bytes_read += len(data)
        self.tunnel = Tunnel(client, up, plan.timeouts.tunnel_idle, lambda t: self._tunnel_closed(ex, t))
        self.transport.set_protocol(client)
        self._paused = 0
        self.transport.resume_reading()
        self.tunnel.start()

    def _tunnel_closed(self, ex: Exchange, tunnel: Tunnel) -> None:
        ex.bytes_in = tunnel.bytes_from_client
        ex.bytes_out = tunnel.bytes_from_upstream
        self.closed = True
        self.engine.connections.discard(self)
        self.cur = None
        self._log(ex)

    # ------------------------------------------------------------- draining
    def drain(self) -> None:
        """Stop keep-alive: close now if idle, else after the current response."""
        if self.cur is None and self.tunnel is None:
            self._close()

    def force_close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.transport is not None:
            self._abort()
