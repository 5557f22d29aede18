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
    CONNECT, or a 101 answer to an Upgrade: -> tunnel (conn/tunnel.py owns it)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import cast

from ferryman.conn import connect, queueing
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.conn.relay import UpstreamRelay
from ferryman.conn.responder import Responder
from ferryman.conn.timeouts import BODY, HEAD, IDLE, P_BUFFER, P_PIPELINE, RESP, TUNNEL, WAIT
from ferryman.conn.tunnel import Tunnel
from ferryman.errors import (
    BodyTooLarge,
    ClientTimeout,
    FerrymanError,
    NoHealthyUpstream,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ferryman.http1 import proxy_protocol
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, RequestHead
from ferryman.http1.parser import RequestParser
from ferryman.pipeline import respond
from ferryman.pipeline.admit.address import AddressCheck
from ferryman.pipeline.context import Client, RequestContext
from ferryman.pipeline.plan import ListenerPlan
from ferryman.pipeline.stage import (
    CONTINUE,
    Authenticate,
    CacheLookup,
    Connect,
    Decision,
    Respond,
    run,
    run_after,
    run_resolved,
)
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.dial import open_connection
from ferryman.upstream.group import Lease

log = logging.getLogger("ferryman")


def started_resp(ex: Exchange) -> bool:
    return ex.resp is not None


def _peer_allowed(conn: UpstreamConnection, check: AddressCheck) -> bool:
    peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    return peer is not None and check.allows(str(peer[0]))

_BUFFER_HIGH = 256 * 1024


class Downstream(UpstreamRelay, Responder, asyncio.Protocol):
    def __init__(self, engine: Engine, listener: ListenerPlan) -> None:
        self.engine = engine
        self.listener = listener
        self.reverse = listener.mode == "reverse"
        self.tls = listener.tls is not None
        self.loop = engine.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.client = Client(listener)
        limits = engine.plan.limits
        self.parser = RequestParser(self, limits.max_header_size, limits.max_url_length, limits.max_headers)
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
        self.tunnel_pending: list[bytes] | None = None
        self.tunnel: Tunnel | None = None
        self.client_port = 0
        self.tunnel_eof = False
        self._fresh = True  # no byte received yet: the timer armed at accept is the head timer
        self._writable: asyncio.Future[None] | None = None
        self.proxied: tuple[str, int] | None = None  # the client named by a PROXY header (conn/accept.py)

    # ------------------------------------------------------------------ timers
    def _arm(self, phase: int, timeout: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._phase = phase
        self._phase_timeout = timeout
        self._last = self.loop.time()
        self._timer = self.loop.call_later(timeout, self._on_timer)

    def disarm(self) -> None:
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
            self.close()
        elif phase == HEAD:
            self.fail(self.rx, ClientTimeout("timed out reading the request header"))
        elif phase == BODY:
            self.fail(self.cur, ClientTimeout("timed out reading the request body"))
        elif phase == WAIT:
            t = self._phase_timeout
            self.fail(self.cur, UpstreamTimeout(f"upstream sent no response within {t:g}s"))
        elif phase == RESP:
            self.fail(self.cur, UpstreamTimeout("upstream stalled while sending the response"))

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
        self.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0])
            self.client_port = int(peer[1])
        if self.proxied is not None:
            self.client_ip, self.client_port = self.proxied
        self.client.peer, self.client.port = self.client_ip, self.client_port
        plan = self.engine.plan
        tr.set_write_buffer_limits(high=256 * 1024)
        self.engine.connections.add(self)
        self._arm(IDLE, plan.timeouts.client_header)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.tunnel_pending is not None:
            self.tunnel_pending.append(data)
            return
        if self._phase == IDLE and self.cur is None:
            t = self.engine.plan.timeouts.client_header
            if self._fresh:
                self._phase = HEAD  # the accept-time timer already counts client_header
            else:
                self._arm(HEAD, t)
        self._fresh = False
        try:
            off = self.parser.feed(data)
        except FerrymanError as exc:
            self.fail(self.rx if self.rx is not None else self.cur, exc)
            return
        if off is not None and not self.closed:
            # CONNECT or Upgrade: what follows the head belongs to the tunnel.
            ex = self.rx
            rest = data[off:]
            if ex is not None and ex is self.cur and self.tunnel_pending is not None:
                if rest:
                    self.tunnel_pending.append(rest)
            elif ex is not None and ex.head.upgrade is not None:
                self.tunnel_pending = [rest] if rest else []
            else:
                self.fail(ex, UpstreamProtocolError("tunnel request pipelined behind a request"))

    def eof_received(self) -> bool | None:
        if self.tunnel_pending is not None:
            self.tunnel_eof = True  # replayed to the tunnel once it is joined
            return True
        # A client that half-closes after a complete request still gets its
        # response (RFC 9112 9.6); close once it is written.
        if self.cur is not None and self.rx is self.cur and self.cur.req_done:
            self.cur.keep_alive = False
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.disarm()
        self.engine.connections.discard(self)
        ex = self.cur
        if ex is not None and self.tunnel is None:
            up = ex.up
            if ex.task is not None:
                ex.task.cancel()
            if up.queued is not None:
                up.queued.cancel()
            handed = (
                up.conn is not None and ex.cache is not None and self.engine.cache is not None
                and self.engine.cache.continue_without_client(ex)
            )
            if handed:
                up.conn = None  # the fill goes on for the followers; the cache owns the socket now
            if up.conn is not None:
                up.conn.abort()
                up.conn = None
            self._release_server(ex, ok=None)  # the client left: no verdict on the server
            if not ex.status:
                ex.status = 499
            ex.error = ex.error or "client closed the connection before the response completed"
            if ex.cache is not None and self.engine.cache is not None and not handed:
                self.engine.cache.on_abort(ex, "the client left and no other client waits for the fill")
            self.log(ex)
        self.cur = None
        self.queue.clear()
        self._wake_writable()

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.cur
        if ex is not None and ex.up.conn is not None:
            ex.up.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writable()
        ex = self.cur
        if ex is not None and ex.up.conn is not None:
            ex.up.conn.resume_reading()

    # ------------------------------------------------------ request parsing sink
    def on_request_head(self, head: RequestHead) -> None:
        ex = Exchange(RequestContext(self.client, head, self.engine.plan), monotonic())
        self.rx = ex
        if self.cur is None:
            self.cur = ex
            self._start(ex)
        else:
            self.queue.append(ex)
            self._pause(P_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        ex = self.rx
        if ex is None:
            return  # already answered (synthetic/cache) and finished: the body is discarded
        if not data:
            return  # an empty chunk upstream would end a chunked body early
        ex.bytes_in += len(data)
        limit = ex.ctx.plan.limits.max_body_size
        if limit and ex.bytes_in > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        up = ex.up
        conn = up.conn
        if conn is not None and up.head_sent:
            up.body_sent = True
            if ex.ctx.head.framing is Framing.CHUNKED:
                assert conn.transport is not None
                conn.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                conn.write(data)
            self._last = self.loop.time()
        else:
            ex.body_buf.append(data)
            ex.body_buffered += len(data)
            if ex.body_buffered > _BUFFER_HIGH:
                self._pause(P_BUFFER)

    def on_request_end(self) -> None:
        ex = self.rx
        if ex is None:
            return  # answered before its message ended (synthetic response, cache)
        ex.req_done = True
        up = ex.up
        if ex is self.cur and up.conn is not None and up.head_sent:
            if ex.ctx.head.framing is Framing.CHUNKED:
                up.conn.write(ser.LAST_CHUNK)
            if ex.resp is None:
                self._arm(WAIT, ex.ctx.plan.timeouts.upstream_header)

    # ------------------------------------------------------------- phases
    def _start(self, ex: Exchange) -> None:
        """Run the request's phases (admit, route, cache), then carry out their decision."""
        ctx = ex.ctx
        plan = ctx.plan = self.engine.plan
        phases = ex.phases = self.engine.phases(plan, self.reverse)
        self._decide(ex, run(phases.request, ctx))

    def _decide(self, ex: Exchange, decision: Decision) -> None:
        """Carry out what the phases decided."""
        ctx = ex.ctx
        plan = ctx.plan
        if type(decision) is Authenticate:
            self._suspend(ex, decision)
            return
        ctx_proxy = ctx.proxy
        if ex.head.upgrade is not None and not (ctx_proxy is not None and ctx_proxy.upgrade):
            # A refused upgrade (or one answered here): the parser handed what follows this
            # head to a tunnel that will not exist, so the connection ends with this exchange.
            ex.keep_alive = False
        if isinstance(decision, Respond):
            if decision.error is not None:
                raise decision.error  # refused: answered from the error table, connection closed
            self._respond_synthetic(ex, decision)
            return
        if isinstance(decision, Connect):
            self.disarm()
            self._phase = TUNNEL
            if self.tunnel_pending is None:  # else bytes came while a password was checked
                self.tunnel_pending = []
            self._pause(P_BUFFER)  # nothing more from the client until the tunnel is up
            ex.task = self.loop.create_task(connect.open_connect_tunnel(self, ex, decision))
            return
        proxy = ctx_proxy
        if proxy is None:
            raise FerrymanError(f"no phase decided what to do with the request ({decision!r})")
        ex.ctx.route = proxy.route
        if not ex.req_done:
            self._arm(BODY, plan.timeouts.client_body)
        else:
            self.disarm()
        if type(decision) is CacheLookup:
            cache, rules = self.engine.cache, proxy.cache_rules
            if cache is not None and rules is not None:
                if cache.on_request(self, ex, proxy, rules, decision.scheme):
                    return
        self._proxy(ex)

    def _suspend(self, ex: Exchange, d: Authenticate) -> None:
        """A password to check: off the loop; the request waits (its body is buffered,
        pipelined requests queue), then its phases go on after the one that asked."""
        if ex.head.method == "CONNECT" and self.tunnel_pending is None:
            self.tunnel_pending = []  # what follows the head waits for the tunnel (or the 407)
            self._pause(P_BUFFER)
        ex.task = self.loop.create_task(self._authenticate(ex, d))

    async def _authenticate(self, ex: Exchange, d: Authenticate) -> None:
        ok = await self.engine.auth.verify(d.step)
        ex.task = None
        if ex is not self.cur or self.closed:
            return
        ctx = ex.ctx
        try:
            decision = d.resume(ctx, d.step, ok)
            if decision is CONTINUE:
                assert ex.phases is not None
                decision = run_after(ex.phases.request, d.phase, ctx)
            self._decide(ex, decision)
        except FerrymanError as exc:
            self.fail(ex, exc)

    def _respond_synthetic(self, ex: Exchange, d: Respond) -> None:
        assert self.transport is not None
        ex.status = d.status
        ex.ctx.route = d.route
        ex.bytes_out = len(d.data)
        self.transport.write(d.data)
        if not ex.req_done or d.close or ex.head.method == "CONNECT":
            # an unread body would be parsed as a request; after a CONNECT head the
            # parser has handed the stream to a tunnel that will not exist
            ex.keep_alive = False
        self.finish(ex)

    def _proxy(self, ex: Exchange) -> None:
        """Pick the next hop (again, on a retry) and send the request there; when every
        healthy server is full, wait in the upstream's queue (conn/queueing.py)."""
        d = ex.ctx.proxy
        assert d is not None
        if d.group is None:
            self.send_to(ex, None)
            return
        group = self.engine.groups.get(d.group)
        if group is None:
            raise NoHealthyUpstream(f"upstream {d.group!r} is not available")
        up = ex.up
        now = monotonic()
        if up.lease is not None:
            up.lease.release(now, None)  # normally released already: a no-op then
        up.group = group
        lease = group.acquire(ex.ctx.client_ip, ex.ctx.head, now, up.tried)
        if lease is not None:
            self.send_to(ex, lease)
        elif group.saturated(up.tried):
            queueing.enqueue(self, ex, group)
        else:
            raise NoHealthyUpstream(f"no healthy server in upstream {d.group!r}")

    def send_to(self, ex: Exchange, lease: Lease | None) -> None:
        """Send the request to the server ``lease`` holds, or to the forward next hop."""
        ctx, up = ex.ctx, ex.up
        d = ctx.proxy
        assert d is not None
        host = d.host
        if lease is not None:
            server = lease.server
            up.lease = lease
            up.tried = up.tried | {server.plan.index}
            key = server.key
            if d.host_from_server:
                host = server.plan.authority
        else:
            assert d.next_hop is not None
            key = d.next_hop
        up.attempts += 1
        up.key = key
        up.label = f"{key[1]}:{key[2]}"
        head = ctx.head
        ex.req_bytes = ser.request_head(
            d.method, d.target, host, d.fields(), head.framing, head.content_length
        )
        private = d.upgrade or (up.group is not None and up.group.plan.send_proxy is not None)
        conn = None if private else self.engine.pool.acquire(key)
        if conn is not None and d.address_check is not None and not _peer_allowed(conn, d.address_check):
            conn.close()  # dialled for a request the rules treat differently: dial (and check) anew
            conn = None
        if conn is not None:
            up.reused = True
            self._attach(ex, conn)
        else:
            up.reused = False
            ex.task = self.loop.create_task(self._dial(ex))

    async def _dial(self, ex: Exchange) -> None:
        ctx, up = ex.ctx, ex.up
        plan = ctx.plan
        d = ctx.proxy
        key = up.key
        phases = ex.phases
        assert d is not None and key is not None and phases is not None
        t0 = monotonic()
        limits = plan.limits
        host, port = key[1], key[2]
        try:
            addrs = await self.engine.resolver.resolve(host, port)
            if phases.resolved:
                admitted = run_resolved(phases.resolved, ctx, host, port, addrs)
                if isinstance(admitted, Respond):
                    assert admitted.error is not None
                    raise admitted.error
                addrs = admitted  # only allowed addresses are dialled
            if up.lease is not None:
                ssl_ctx, sni = up.lease.server.ssl, up.lease.server.tls_name
            elif d.tls_name is not None:
                ssl_ctx, sni = self.engine.tls_context, d.tls_name
            else:
                ssl_ctx, sni = None, None
            _, proto = await open_connection(
                addrs,
                lambda: UpstreamConnection(key, limits.max_header_size, limits.max_headers),
                plan.timeouts.upstream_connect,
                ssl_ctx,
                sni,
            )
        except FerrymanError as exc:
            ex.task = None
            if ex is self.cur and not self.closed:
                self._upstream_error(ex, exc, reached=False)
            return
        ex.task = None
        assert isinstance(proto, UpstreamConnection)
        group = up.group
        if group is not None and group.plan.send_proxy is not None and self.transport is not None:
            proto.private = True
            local = self.transport.get_extra_info("sockname") or ("0.0.0.0", 0)
            src, dst = (self.client_ip, self.client_port), (str(local[0]), int(local[1]))
            v2 = group.plan.send_proxy == "v2"
            proto.write(proxy_protocol.build_v2(src, dst) if v2 else proxy_protocol.build_v1(src, dst))
        if up.t_connect is None:
            up.t_connect = monotonic() - t0
        if ex is not self.cur or self.closed:
            proto.close()
            return
        self._attach(ex, proto)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        up, head = ex.up, ex.ctx.head
        up.conn = conn
        conn.attach(self, head.method)
        if self.write_paused:
            conn.pause_reading()
        conn.write(ex.req_bytes)
        up.head_sent = True
        if up.lease is not None:
            up.lease.t_sent = monotonic()
        if head.expect_continue and not ex.req_done and head.version == "1.1" and up.attempts == 1:
            assert self.transport is not None
            self.transport.write(respond.CONTINUE_100)
        if ex.body_buf:
            up.body_sent = True
            chunked = head.framing is Framing.CHUNKED
            assert conn.transport is not None
            for data in ex.body_buf:
                if chunked:
                    conn.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
                else:
                    conn.write(data)
            ex.body_buf = []
            ex.body_buffered = 0
            self._resume(P_BUFFER)
        if ex.req_done:
            if head.framing is Framing.CHUNKED:
                conn.write(ser.LAST_CHUNK)
            self._arm(WAIT, ex.ctx.plan.timeouts.upstream_header)

    # ------------------------------------------------------------- endings
    def finish(self, ex: Exchange) -> None:
        state = ex.cache
        if state is not None and state.fill is not None and self.engine.cache is not None:
            self.engine.cache.on_abort(ex, "the exchange ended before its fill did")
        self.log(ex)
        self.cur = None
        if self.rx is ex:
            self.rx = None
        if not ex.keep_alive or self.closed:
            self.close()
            return
        if self.queue:
            nxt = self.cur = self.queue.popleft()
            if not self.queue:
                self._resume(P_PIPELINE)
            try:
                self._start(nxt)
            except FerrymanError as exc:
                self.fail(nxt, exc)
            return
        self._arm(IDLE, ex.ctx.plan.timeouts.client_idle)
        if self.engine.draining:
            self.close()

    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None:
        """End the exchange with a synthetic error response and close the connection."""
        if self.closed:
            return
        if ex is not None:
            up = ex.up
            if ex.task is not None:
                ex.task.cancel()
                ex.task = None
            if up.queued is not None:
                up.queued.cancel()
            if up.conn is not None:
                up.conn.abort()
                up.conn = None
            # Only the upstream's own faults count against the server (passive ejection).
            self._release_server(ex, ok=False if exc.source == "upstream" else None)
            if ex.cache is not None and self.engine.cache is not None:
                if not started_resp(ex) and self.engine.cache.serve_stale_on_error(self, ex, exc):
                    return
                self.engine.cache.on_abort(ex)
        started = ex is not None and ex.resp is not None
        if not started and self.transport is not None:
            data = respond.error(exc)
            self.transport.write(data)
            if ex is not None:
                ex.bytes_out += len(data)
        if ex is not None:
            if not started:
                ex.status = exc.status
            ex.error = exc.detail
            ex.keep_alive = False
            self.log(ex)
        elif self.transport is not None:
            self._log_bare(exc)
        if started:
            self._abort()
        else:
            self.close()

    def close(self) -> None:
        self.disarm()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _abort(self) -> None:
        self.disarm()
        if self.transport is not None:
            self.closed = True
            self.transport.close()

    def log(self, ex: Exchange) -> None:
        """The end of every exchange, once: give the server slot back, run the log phases."""
        if ex.logged:
            return
        ex.logged = True
        up = ex.up
        if up.lease is not None:
            up.lease.release(monotonic(), None)  # every exchange is logged: no slot outlives it
        if up.queued is not None:
            up.queued.cancel()
        phases = ex.phases or self.engine.phases(ex.ctx.plan, self.reverse)
        for phase in phases.log:
            phase(ex.ctx, ex)

    def _log_bare(self, exc: FerrymanError) -> None:
        lg = self.engine.log
        if lg.enabled:
            lg.log(self.client_ip, "", "-", "-", "1.1", exc.status, 0, 0, 0.0, None, None, "", "", exc.detail)

    # ------------------------------------------------------------- draining
    def drain(self) -> None:
        """Stop keep-alive: close now if idle, else after the current response."""
        if self.cur is None and self.tunnel is None:
            self.close()

    def force_close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.transport is not None:
            self._abort()
