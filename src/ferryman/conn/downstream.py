"""The client connection: an asyncio Protocol that carries out the request's phases.

Rules this module owns:
- one exchange at a time; pipelined requests queue behind it, reading pauses, and
  responses leave in request order; the next starts on the loop's next turn, not
  inside the upstream read that ended the one before (`finish`); a request refused
  behind others is answered in its turn, never in place of theirs (`_refuse_in_turn`);
- every request ends in exactly one response or one error, and is logged once;
- a connection that saw an error is closed, never reused; one ended while the client
  may still send is half-closed and reads on until it closes (`close`, RFC 9112 9.6);
- bytes are only relayed after the parser accepted them, and every body is
  re-framed by ferryman, so the next hop can never frame it differently;
- the connection's life is the table of conn/state.py: every state change goes
  through `to`, which checks the move and arms the state's one deadline.

Its parts are composed, not mixed in: `decider` (conn/decide.py) runs the phases
and carries out their decision, `relay` (conn/relay.py) the upstream side,
`responder` (conn/responder.py) the answers that do not come from an upstream; they,
the cache flow, CONNECT and the upstream queue see it only as `ClientConn`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial

from ferryman.conn.client import GONE
from ferryman.conn.clock import Timer
from ferryman.conn.decide import Decider
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.conn.relay import UpstreamRelay
from ferryman.conn.responder import Responder, send_body
from ferryman.conn.state import EXPIRED, FIELD, IS_ACTIVITY, MOVES, Deadlines, State, StateError
from ferryman.conn.timeouts import P_BUFFER, P_PIPELINE, P_REFUSED
from ferryman.conn.tunnel import RelaySide, Tunnel
from ferryman.conn.tunnel import join as tunnel_join
from ferryman.errors import BodyTooLarge, ClientProtocolError, ClientTimeout, FerrymanError, UpstreamTimeout
from ferryman.http1 import serialize as ser
from ferryman.http1.events import F_CHUNKED, RequestHead
from ferryman.http1.parser import RequestParser
from ferryman.pipeline.cache.action import ANSWERS
from ferryman.pipeline.context import Client, RequestContext
from ferryman.pipeline.plan import ListenerPlan

log = logging.getLogger("ferryman")

OPEN, IDLE, HEAD, BODY, UPSTREAM, WAIT, RESPONSE, WRITING, TUNNEL, CLOSED = State  # fast names
_BUFFER_HIGH = 256 * 1024
_NEVER = float("inf")
_LINGER = 2.0  # seconds a closed connection reads on, dropping the bytes (see `close`)


class Downstream(asyncio.Protocol):
    # Slots: one is made per accepted connection, and its fields are read on every event.
    __slots__ = (
        "engine", "listener", "reverse", "loop", "clock", "_now", "_call_later", "transport",
        "client_ip", "client_port", "client", "parser", "cur", "rx", "queue", "decider", "state",
        "write_paused", "_paused", "_timer", "_fires", "_due", "_timeout", "_last", "tunnel_pending",
        "tunnel", "tunnel_eof", "_writable", "proxied", "responder", "relay", "proxy", "send_to",
        "refused",
    )

    def __init__(self, engine: Engine, listener: ListenerPlan) -> None:
        self.engine = engine
        self.listener = listener
        self.reverse = listener.mode == "reverse"
        self.loop = engine.loop
        self.clock = clock = engine.clock
        self._now = clock.time
        self._call_later = clock.call_later
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.client_port = 0
        self.client = Client(listener)
        limits = engine.plan.limits
        self.parser = RequestParser(self, limits.max_header_size, limits.max_url_length, limits.max_headers)
        self.cur: Exchange | None = None  # being served
        self.rx: Exchange | None = None  # being read by the parser
        self.queue: deque[Exchange] = deque()
        self.state = OPEN
        self.write_paused = False
        self._paused = 0  # why reading is paused (P_* bits)
        self._timer: Timer | None = None
        self._fires = 0.0  # when `_timer` fires
        self._due = _NEVER  # the current state's deadline (activity states: see _on_timer)
        self._timeout = 0.0  # the current state's deadline, in seconds
        self._last = 0.0  # the last activity (activity states count from it)
        self.tunnel_pending: list[bytes] | None = None  # what the client sent for a coming tunnel
        self.tunnel: Tunnel | None = None
        self.tunnel_eof = False
        self._writable: asyncio.Future[None] | None = None
        self.proxied: tuple[str, int] | None = None  # the client named by a PROXY header (conn/accept.py)
        # A refusal waiting for the requests before it (`_refuse_in_turn`): exchange, error.
        self.refused: tuple[Exchange | None, FerrymanError] | None = None
        self.responder = responder = Responder(self, engine)
        self.relay = relay = UpstreamRelay(self, engine, responder)
        self.decider = Decider(self, engine, self.reverse)  # carries out the request's phases
        self.proxy = relay.proxy  # once per request: bound once per connection
        self.send_to = relay.send_to

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # ------------------------------------------------------------------ state
    def to(self, new: State, deadlines: Deadlines | None = None) -> None:
        """Move to ``new`` and arm its deadline (conn/state.py); ``deadlines``: those of the
        exchange's Plan (`Exchange.deadlines`), else the current Plan's."""
        old = self.state
        if not MOVES[old] >> new & 1:
            raise StateError(f"client connection: {old.name} -> {new.name} is not a move of the table")
        self.state = new
        t = (deadlines or self.engine.deadlines)[new]
        timer = self._timer
        if t is None:
            # No deadline here: a timer armed for an earlier state stays (re-arming it on
            # every move costs more than letting it fire and find nothing due, _on_timer).
            self._due = _NEVER
            if new is CLOSED and timer is not None:
                timer.cancel()
                self._timer = None
            return
        now = self._now()
        self._last = now
        self._timeout = t
        if timer is not None and FIELD[old] is FIELD[new] and old is not new:
            return  # the same deadline goes on (OPEN -> HEAD: client_header from the accept)
        due = self._due = now + t
        if timer is not None:
            if self._fires <= due:
                return  # fires no later than due; re-armed for the rest then (see _on_timer)
            timer.cancel()
        self._fires = due
        self._timer = self._call_later(t, self._on_timer)

    def touch(self) -> None:
        self._last = self._now()

    def _on_timer(self) -> None:
        self._timer = None
        st = self.state
        # Activity deadlines count from the last byte moved; others from entering the state.
        due = self._last + self._timeout if IS_ACTIVITY[st] else self._due
        if due == _NEVER:
            return  # armed for an earlier state; this one has no deadline
        now = self._now()
        left = due - now
        if left > 0.001:
            self._fires = now + left
            self._timer = self._call_later(left, self._on_timer)
            return
        what = EXPIRED.get(st)
        if what is None:
            return
        if what == "close":
            self.close()
        elif st is HEAD:
            self.fail(self.rx, ClientTimeout(what))
        elif st is BODY:
            self.fail(self.cur, ClientTimeout(what))
        else:
            self.fail(self.cur, UpstreamTimeout(what.format(t=self._timeout)))

    # ------------------------------------------------------------ read pausing
    def pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def resume(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        tr: asyncio.Transport = transport  # type: ignore[assignment]  # (no cast(): a call less)
        self.transport = tr
        peer = tr.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0])
            self.client_port = int(peer[1])
        if self.proxied is not None:
            self.client_ip, self.client_port = self.proxied
        self.client.peer, self.client.port = self.client_ip, self.client_port
        tr.set_write_buffer_limits(high=256 * 1024)
        self.engine.opened(self)
        self.to(OPEN)  # OPEN's deadline: client_header, counted from the accept

    def data_received(self, data: bytes) -> None:
        st = self.state
        if st is CLOSED:
            return
        if self.tunnel_pending is not None:
            self.tunnel_pending.append(data)
            return
        if st is IDLE or st is OPEN:
            self.to(HEAD)
        try:
            off = self.parser.feed(data)
        except FerrymanError as exc:
            # Refused: a head being read (no exchange yet), or the last one read (its body).
            self._refuse_in_turn(None if self.parser.in_head else self.rx, exc)
            return
        if off is not None and not self.closed:
            # CONNECT or Upgrade: what follows the head belongs to the tunnel.
            ex = self.rx
            rest = data[off:]
            if ex is not None and ex is self.cur and self.tunnel_pending is not None:
                if rest:
                    self.tunnel_pending.append(rest)
            elif ex is not None and ex.ctx.head.upgrade is not None:
                self.tunnel_pending = [rest] if rest else []
            elif ex is None or ex.ctx.head.method != "CONNECT":
                # No tunnel asked for (HTTP/1.0 Upgrade ignored, RFC 9110 7.8): HTTP follows.
                self.parser.restart()
                if rest:
                    self.data_received(rest)
            else:
                self._refuse_in_turn(ex, ClientProtocolError("tunnel request pipelined behind a request"))

    def _refuse_in_turn(self, ex: Exchange | None, exc: FerrymanError) -> None:
        """Answer ``ex`` (None: a head that could not be read) with ``exc`` and close, once
        the requests before it are answered; nothing more is read meanwhile."""
        if self.refused is not None:
            return
        cur = self.cur
        if cur is None or ex is cur:
            self.fail(ex if ex is not None else cur, exc)
            return
        if ex is not None and ex in self.queue:
            self.queue.remove(ex)  # the last one queued: the parser stops at the refusal
        self.refused = (ex, exc)
        self.pause(P_REFUSED)

    def eof_received(self) -> bool | None:
        if self.state is CLOSED:
            return None  # the end of a lingering close (`close`)
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
        if self.state is not CLOSED:
            self.to(CLOSED)
        self.engine.closed(self)
        ex = self.cur
        if ex is not None and self.tunnel is None:
            self.relay.client_left(ex)
            self.log(ex)
        self.cur = None
        self.queue.clear()
        self._wake_writable()
        if ex is None and self.tunnel is None and self.tunnel_pending is None and self.refused is None:
            # Nothing in flight: no cycle left, so reference counting frees it all (GONE).
            self.responder.conn = self.relay.conn = self.decider.conn = GONE
            self.parser.close()

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

    # ------------------------------------------------------------- writing
    def write(self, ex: Exchange, data: bytes) -> None:
        assert self.transport is not None
        ex.bytes_out += len(data)
        if self.relay.held is not None:
            self.relay.flush()
        self.transport.write(data)

    def write_body(self, ex: Exchange, data: bytes) -> None:
        assert self.transport is not None
        ex.bytes_out += len(data)
        if self.relay.held is not None:
            self.relay.flush()
        send_body(self.transport, ex.out_mode, data)

    # ------------------------------------------------------ request parsing sink
    def on_request_head(self, head: RequestHead) -> None:
        st = self.state
        if st is CLOSED:
            return  # pipelined behind an answer that closed the connection: never served
        ex = Exchange(RequestContext(self.client, head, self.engine.plan), self._now())
        self.rx = ex
        if self.cur is None:
            if st is IDLE:
                # It came in the read that ended one answered at once (ferryman's own answer,
                # a memory hit): the connection went IDLE inside `feed`, after data_received.
                self.to(HEAD)
            self.cur = ex
            self.decider.start(ex)
        else:
            self.queue.append(ex)
            self.pause(P_PIPELINE)

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
        if self.relay.forward_body(ex, data):
            self._last = self._now()
        elif ex.body_buffered > _BUFFER_HIGH:
            self.pause(P_BUFFER)

    def on_request_end(self) -> None:
        ex = self.rx
        if ex is None:
            return  # answered before its message ended (synthetic response, cache)
        ex.req_done = True
        up = ex.up
        if ex is self.cur and up.conn is not None and up.head_sent:
            if ex.ctx.head.framing is F_CHUNKED:
                up.conn.write(ser.LAST_CHUNK)
            if ex.resp is None and self.state is not WAIT:
                self.to(WAIT, ex.deadlines)

    # ------------------------------------------------------------- endings
    def finish(self, ex: Exchange) -> None:
        state = ex.cache
        if state is not None and state.fill is not None and self.engine.cache is not None:
            self.engine.cache.on_abort(ex, "the exchange ended before its fill did")
        self.log(ex)
        self.cur = None
        if self.rx is ex:
            self.rx = None
        if not ex.keep_alive or self.state is CLOSED:
            # Linger (`close`) only while the client may still send: body unread, requests
            # queued, or a close it did not ask for; after "Connection: close" it sends no more.
            self.close(linger=not ex.req_done or ex.ctx.head.keep_alive or bool(self.queue))
            return
        if self.queue:
            nxt = self.cur = self.queue.popleft()
            if not self.queue:
                self.resume(P_PIPELINE)
            # Not inside the upstream read that ended this response: bytes after it in that
            # read (more than the origin framed) must close that connection before the pool
            # can hand it to this request, which would take them as its response.
            self.loop.call_soon(self._start_next, nxt)
            return
        if self.refused is not None:
            self.fail(*self.refused)
            return
        self.to(IDLE, ex.deadlines)
        if self.engine.draining:
            self.close()

    def _start_next(self, ex: Exchange) -> None:
        """Start the pipelined request `finish` took from the queue."""
        if ex is not self.cur or self.closed:
            return  # the client left meanwhile (connection_lost logged it)
        try:
            self.decider.start(ex)
        except FerrymanError as exc:
            self.fail(ex, exc)

    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None:
        """End the exchange with a synthetic error response and close the connection."""
        if self.closed:
            return
        if ex is not None:
            # Only the upstream's own faults count against the server (passive ejection).
            self.relay.abandon(ex, False if exc.source == "upstream" else None)
            cache = self.engine.cache
            if ex.cache is not None and cache is not None:
                if ex.resp is None and cache.serve_stale_on_error(self, ex, exc) is ANSWERS:
                    return
                cache.on_abort(ex)
        started = ex is not None and ex.resp is not None
        self.relay.flush()  # a relayed head held back for its body goes out before the end
        if not started and self.transport is not None:
            self.responder.write_error(ex, exc)
        if ex is not None:
            if not started:
                ex.status = exc.status
            ex.error = exc.detail
            ex.keep_alive = False
            self.log(ex)
        elif self.transport is not None:
            self.responder.log_bare(self.client_ip, exc)
        if started:
            self.abort()
        else:
            self.close(linger=True)

    def close(self, linger: bool = False) -> None:
        """Close; with ``linger``, after a response: see below."""
        tr = self.transport
        if self.state is not CLOSED and tr is not None:
            if self.relay.held is not None:
                self.relay.flush()
            self.to(CLOSED)
            if linger and tr.can_write_eof() and not tr.is_closing() and not self.engine.draining:
                # RFC 9112 9.6: half-close, and drop what the client still sends until it
                # closes too (at most _LINGER s): closed with its bytes unread, the socket
                # would reset, destroying the end of the response still on its way.
                tr.write_eof()
                tr.resume_reading()
                self._call_later(_LINGER, tr.close)
            else:
                tr.close()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        """Close after a response was cut short (the client must see the truncation)."""
        self.relay.flush()
        self.to(CLOSED)
        if self.transport is not None:
            self.transport.close()

    def log(self, ex: Exchange) -> None:
        """The end of every exchange, once: give the server slot back, run the log phases."""
        if ex.logged:
            return
        ex.logged = True
        up = ex.up
        lease = up.lease
        if lease is not None:
            lease.release(self._now(), None)  # every exchange is logged: no slot outlives it
        if up.queued is not None:
            up.queued.cancel()
        phases = ex.phases or self.engine.phases(ex.ctx.plan, self.reverse)
        for phase in phases.log:
            phase(ex.ctx, ex)

    # ------------------------------------------------------------- tunnels
    def hold_for_tunnel(self) -> bool:
        held = self.tunnel_pending is None
        if held:
            self.tunnel_pending = []
        return held

    def drop_tunnel_hold(self) -> None:
        self.tunnel_pending = None

    def join_tunnel(self, ex: Exchange, upstream: RelaySide, idle: float) -> None:
        """The exchange becomes a tunnel: the client's transport goes to a `RelaySide`."""
        tr = self.transport
        assert tr is not None
        self.to(TUNNEL)
        pending, self.tunnel_pending = self.tunnel_pending or [], None
        on_close = partial(self._tunnel_closed, ex)
        self.tunnel = tunnel_join(tr, pending, self.tunnel_eof, upstream, idle, on_close, self.clock)

    def _tunnel_closed(self, ex: Exchange, tunnel: Tunnel) -> None:
        ex.bytes_in += tunnel.bytes_from_client
        ex.bytes_out += tunnel.bytes_from_upstream
        self.to(CLOSED)
        self.engine.closed(self)
        self.cur = None
        self.log(ex)

    # ------------------------------------------------------------- draining
    def drain(self) -> None:
        """Stop keep-alive: close now if idle, else after the current response."""
        if self.state is CLOSED:
            if self.transport is not None:
                self.transport.close()  # lingering (`close`): not while ferryman shuts down
        elif self.cur is None and self.tunnel is None:
            self.close()

    def force_close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.transport is not None:
            self.abort()
