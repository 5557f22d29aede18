"""The client connection's upstream side: sending the request (a server of the
upstream or the forward next hop, a pooled connection or a new one, the body),
relaying the response (head, body, end), upgrades, and what happens when the
upstream fails (retry, or answer the error).

One per client connection, composed into it (`Downstream.relay`) and attached to
the upstream connection as its handler.  The rules are those of `downstream.py`:
nothing is relayed that the parser did not accept, every body is re-framed
(`Responder.response_head`), a truncated body is never passed off as complete,
and a request is retried only when provably safe.
"""

from __future__ import annotations

from ferryman.conn import connect, queueing
from ferryman.conn.client import ClientConn
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.conn.responder import Responder, send_body
from ferryman.conn.state import State
from ferryman.conn.timeouts import IDEMPOTENT, P_BUFFER, P_UPSTREAM
from ferryman.errors import (
    FerrymanError,
    NoHealthyUpstream,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from ferryman.http1 import outgoing, proxy_protocol
from ferryman.http1 import serialize as ser
from ferryman.http1.events import F_CHUNKED, F_LENGTH, F_NONE, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.pipeline import respond
from ferryman.pipeline.admit.address import AddressCheck
from ferryman.pipeline.cache.action import ADOPTED, ANSWERS
from ferryman.pipeline.stage import Respond, run_resolved
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.dial import open_connection
from ferryman.upstream.group import Lease


def _peer_allowed(conn: UpstreamConnection, check: AddressCheck) -> bool:
    peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    return peer is not None and check.allows(str(peer[0]))


WAIT = State.WAIT
RESPONSE = State.RESPONSE

class UpstreamRelay:
    """``held``: a relayed response head not written yet.  It leaves with the first piece
    of the body (a small response is one write, one syscall, not two), or, when no body
    came in the same read from the upstream, at the end of that read (`flush`, called by
    the upstream connection), at the response's end, or before the client connection
    writes anything else or closes."""

    __slots__ = ("conn", "engine", "responder", "held")

    def __init__(self, conn: ClientConn, engine: Engine, responder: Responder) -> None:
        self.conn = conn
        self.engine = engine
        self.responder = responder
        self.held: bytes | None = None

    def flush(self) -> None:
        """Write the held head (no-op when nothing is held)."""
        held = self.held
        if held is not None:
            self.held = None
            tr = self.conn.transport
            if tr is not None and not tr.is_closing():
                tr.write(held)

    # --------------------------------------------------- sending the request
    def proxy(self, ex: Exchange) -> None:
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
        now = self.conn.clock.time()
        if up.lease is not None:
            up.lease.release(now, None)  # normally released already: a no-op then
        if up.group is not None and up.group is not group:
            up.tried = group.translate(up.group, up.tried)  # a reload came between two tries
        up.group = group
        lease = group.acquire(ex.ctx.client_ip, ex.ctx.head, now, up.tried)
        if lease is not None:
            self.send_to(ex, lease)
        elif group.saturated(up.tried):
            queueing.enqueue(self.conn, ex, group)
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
        if up.fresh:
            up.fresh = False
            conn = None
        else:
            conn = None if private else self.engine.pool.acquire(key)
        if conn is not None and d.address_check is not None and not _peer_allowed(conn, d.address_check):
            conn.close()  # dialled for a request the rules treat differently: dial (and check) anew
            conn = None
        if conn is not None:
            up.reused = True
            self._attach(ex, conn)
        else:
            up.reused = False
            ex.task = self.conn.loop.create_task(self._dial(ex))

    async def _dial(self, ex: Exchange) -> None:
        ctx, up = ex.ctx, ex.up
        plan = ctx.plan
        d = ctx.proxy
        key = up.key
        phases = ex.phases
        assert d is not None and key is not None and phases is not None
        client = self.conn
        t0 = client.clock.time()
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
            if ex is client.cur and not client.closed:
                self.upstream_error(ex, exc, reached=False)
            return
        ex.task = None
        assert isinstance(proto, UpstreamConnection)
        group = up.group
        if group is not None and group.plan.send_proxy is not None and client.transport is not None:
            proto.private = True
            local = client.transport.get_extra_info("sockname") or ("0.0.0.0", 0)
            src, dst = (ctx.client.peer, ctx.client.port), (str(local[0]), int(local[1]))
            v2 = group.plan.send_proxy == "v2"
            proto.write(proxy_protocol.build_v2(src, dst) if v2 else proxy_protocol.build_v1(src, dst))
        if up.t_connect is None:
            up.t_connect = client.clock.time() - t0
        if ex is not client.cur or client.closed:
            proto.close()
            return
        self._attach(ex, proto)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        client = self.conn
        up, head = ex.up, ex.ctx.head
        up.conn = conn
        conn.attach(self, head.method)
        if client.write_paused:
            conn.pause_reading()
        conn.write(ex.req_bytes)
        up.head_sent = True
        if up.lease is not None:
            up.lease.t_sent = client.clock.time()
        if head.expect_continue and not ex.req_done and head.version == "1.1" and up.attempts == 1:
            assert client.transport is not None
            client.transport.write(respond.CONTINUE_100)
        if ex.body_buf:
            up.body_sent = True
            mode = outgoing.CHUNK if head.framing is F_CHUNKED else outgoing.RAW
            assert conn.transport is not None
            for data in ex.body_buf:
                send_body(conn.transport, mode, data)
            ex.body_buf = []
            ex.body_buffered = 0
            client.resume(P_BUFFER)
        if ex.req_done:
            if head.framing is F_CHUNKED:
                conn.write(ser.LAST_CHUNK)
            client.to(WAIT, ex.deadlines)

    # --------------------------------------------------- upstream handler side
    @property
    def write_paused(self) -> bool:
        """The client is not taking more: the cache flow keeps the upstream paused too."""
        return self.conn.write_paused

    def on_response_head(self, head: ResponseHead) -> None:
        client = self.conn
        ex = client.cur
        assert ex is not None and client.transport is not None
        plan = ex.ctx.plan
        d = ex.ctx.proxy
        via = plan.reverse.via if (client.reverse and plan.reverse) else plan.forward.via
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
                client.write(ex, ser.response_head(101, head.reason, hdrs, extra))
                return
            if ex.ctx.head.version == "1.1":
                hdrs = forward_response_headers(head.headers, head.connection_tokens, via, head.version)
                client.transport.write(ser.response_head(status, head.reason, hdrs, b""))
            return
        if ex.cache is not None and ex.cache.stored is not None and self.engine.cache is not None:
            # Our validation was answered: a 304 freshens the entry, a 5xx may let it be
            # served stale (stale-if-error); either way the client gets the stored entry and
            # this response is only read to its end so the connection can be reused.
            if self.engine.cache.takeover(client, ex, head) is ANSWERS:
                ex.cache_takeover = True
                return
        ex.resp = head
        ex.status = status
        client.to(RESPONSE, ex.deadlines)
        ex.t_first = client.clock.time() - ex.t0
        drop = head.connection_tokens
        if d is not None and d.cache_rules is not None and d.cache_rules.hidden:
            drop = drop | d.cache_rules.hidden  # e.g. our own targeted field (RFC 9213), kept in the store
        hdrs = forward_response_headers(head.headers, drop, via, head.version)
        cache_extra = ex.cache_field
        if ex.cache is not None and self.engine.cache is not None:
            cache_extra = self.engine.cache.on_response_head(client, ex, head)
        if d is not None and d.upgrade:
            ex.keep_alive = False  # the upgrade was refused; bytes after it are not HTTP
            client.drop_tunnel_hold()
        framing = head.framing
        if framing is F_NONE:
            # HEAD and 304 keep the representation's length as metadata.
            n = head.content_length
            data = self.responder.response_head(
                ex, status, head.reason, hdrs, b"", False, n if status != 204 and n > 0 else None, cache_extra
            )
        else:
            length = head.content_length if framing is F_LENGTH else None
            data = self.responder.response_head(ex, status, head.reason, hdrs, b"", True, length, cache_extra)
        ex.bytes_out += len(data)
        self.held = data  # written with the body's first piece, or by `flush`

    def on_response_body(self, data: bytes) -> None:
        client = self.conn
        ex = client.cur
        assert ex is not None
        if ex.resp is None:
            if ex.cache_takeover:
                return
            raise UpstreamProtocolError("response body without a response head")
        if not data:
            return
        if ex.cache is not None and self.engine.cache is not None:
            self.engine.cache.on_response_body(ex, data)
        ex.bytes_out += len(data)
        tr = client.transport
        assert tr is not None
        held = self.held
        if held is None and ex.out_mode == outgoing.RAW:
            tr.write(data)  # the body's later pieces, as they are: no framing, no call
        else:
            self.held = None
            send_body(tr, ex.out_mode, data, held)
        client.touch()

    def on_response_end(self) -> None:
        client = self.conn
        ex = client.cur
        assert ex is not None and client.transport is not None
        if ex.cache_takeover and ex.resp is None:
            # Our validation got its 304: the connection goes back, the cache serves the client.
            conn, ex.up.conn = ex.up.conn, None
            ex.up.release(client.clock.time(), True)
            if conn is not None:
                if ex.up.key is None or conn.private:
                    conn.close()
                else:
                    self.engine.park(ex.up.key, conn)
            return
        if ex.resp is None or ex.status == 101:
            return  # the end of an interim (1xx) response; a 101 goes on as a tunnel
        if ex.cache is not None and self.engine.cache is not None:
            self.engine.cache.on_response_end(client, ex)
        held = self.held
        if held is not None:
            self.held = None
            if ex.out_mode == outgoing.CHUNK:
                held += ser.LAST_CHUNK
            client.transport.write(held)
        elif ex.out_mode == outgoing.CHUNK:
            client.transport.write(ser.LAST_CHUNK)
        up = ex.up
        conn = up.conn
        up.conn = None
        lease = up.lease
        if lease is not None:
            lease.release(client.clock.time(), ex.status < 500)
        if conn is not None:
            key = up.key
            if (
                ex.resp.keep_alive
                and not conn.private
                and ex.req_done
                and ex.ctx.head.method != "HEAD"
                and not self.engine.draining
                and key is not None
            ):
                self.engine.park(key, conn)
            else:
                conn.close()
        client.finish(ex)

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream accepted the Upgrade (101): both sides become a tunnel."""
        client = self.conn
        ex = client.cur
        assert ex is not None
        ex.up.conn = None
        ex.up.release(client.clock.time(), True)
        conn.detach()
        connect.join_upgrade(client, ex, conn, rest)

    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None:
        client = self.conn
        ex = client.cur
        if ex is None or client.closed:
            return
        conn = ex.up.conn
        ex.up.conn = None
        if conn is not None:
            conn.close()
        if ex.resp is None:
            self.upstream_error(ex, exc, reached=True, got_bytes=got_bytes)
        else:
            # Mid-body: the client must see the truncation, never a "complete" body.
            ex.up.release(client.clock.time(), False)
            if ex.cache is not None and self.engine.cache is not None:
                self.engine.cache.on_abort(ex, f"upstream failed mid-body: {exc.detail}")
            ex.error = exc.detail
            ex.keep_alive = False
            client.log(ex)
            client.abort()

    def abandon(self, ex: Exchange, ok: bool | None) -> None:
        """End the exchange's upstream side and give the server slot back with ``ok``, the
        server's verdict (None: none, the failure was not the server's)."""
        up = ex.up
        if ex.task is not None:
            ex.task.cancel()
            ex.task = None
        if up.queued is not None:
            up.queued.cancel()
        if up.conn is not None:
            up.conn.abort()
            up.conn = None
        up.release(self.conn.clock.time(), ok)

    def client_left(self, ex: Exchange) -> None:
        """The client went away mid-exchange: hand a fill with followers to the cache, end
        the rest of the upstream side, with no verdict on the server."""
        up = ex.up
        cache = self.engine.cache
        handed = (
            up.conn is not None and ex.cache is not None and cache is not None
            and cache.continue_without_client(ex) is ADOPTED
        )
        if handed:
            up.conn = None  # the fill goes on for the followers; the cache owns the socket now
        self.abandon(ex, None)
        if not ex.status:
            ex.status = 499
        ex.error = ex.error or "client closed the connection before the response completed"
        if ex.cache is not None and cache is not None and not handed:
            cache.on_abort(ex, "the client left and no other client waits for the fill")

    def forward_body(self, ex: Exchange, data: bytes) -> bool:
        """A piece of the request body: straight to the upstream once its head is sent
        (True), else kept in the exchange until it is (False)."""
        up = ex.up
        conn = up.conn
        if conn is not None and up.head_sent:
            up.body_sent = True
            assert conn.transport is not None
            chunked = ex.ctx.head.framing is F_CHUNKED
            send_body(conn.transport, outgoing.CHUNK if chunked else outgoing.RAW, data)
            return True
        ex.body_buf.append(data)
        ex.body_buffered += len(data)
        return False

    def upstream_error(
        self, ex: Exchange, exc: FerrymanError, reached: bool, got_bytes: bool = False
    ) -> None:
        """Before any response byte: retry when provably safe, else answer with the error."""
        client = self.conn
        up = ex.up
        stale_pool = reached and up.reused and not got_bytes and isinstance(exc, UpstreamClosed)
        lease = up.lease
        last = lease.server.plan.index if lease is not None else None
        bodyless = not up.body_sent and ex.body_buffered == 0 and ex.req_done
        may = False
        d = ex.ctx.proxy
        method = ex.ctx.head.method
        if bodyless and not (d is not None and d.upgrade and reached):
            if stale_pool and up.stale < 3 and method in IDEMPOTENT:
                # The pooled socket was dead; the origin may still have read the request,
                # so only idempotent methods are re-sent (RFC 9112 9.3.1).
                may = True
                up.stale += 1
                up.fresh = True
            elif up.group is not None and not got_bytes:
                never_sent = not reached or isinstance(exc, UpstreamConnectError)
                if never_sent or method in IDEMPOTENT:
                    may = up.group.may_retry(up.attempts - up.stale)
        if may and stale_pool and lease is not None and lease.held:
            # A stale pooled socket is not the server's fault: re-send to the same server,
            # keeping its slot (under max_conns a queued request keeps its turn).
            up.head_sent = False
            try:
                client.send_to(ex, lease)
            except FerrymanError as exc2:
                client.fail(ex, exc2)
            return
        up.release(client.clock.time(), stale_pool)
        if may:
            if stale_pool and last is not None:
                up.tried = up.tried - {last}  # the same server may be tried again
            up.head_sent = False
            try:
                client.proxy(ex)
            except NoHealthyUpstream:
                # Every server was tried: report what actually went wrong (502/504);
                # 503 is kept for "nothing healthy before trying".
                client.fail(ex, exc)
            except FerrymanError as exc2:
                client.fail(ex, exc2)
            return
        client.fail(ex, exc)

    def upstream_pause_writing(self) -> None:
        self.conn.pause(P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self.conn.resume(P_UPSTREAM)

