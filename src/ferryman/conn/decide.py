"""Carrying out a request's phases: run the compiled list, then do what it decided.

One per client connection, composed into it (`Downstream.decider`), and seeing it
only as `ClientConn` (conn/client.py).  The phases decide (pipeline/stage.py);
this object acts on the decision, and nothing else does:
  - `Respond`: ferryman's own answer is written, or a refusal raised to the
    connection, which answers it from the error table and closes;
  - `Connect`: the connection becomes a tunnel being opened (conn/connect.py);
  - `Authenticate`: the password is checked off the loop while the request waits,
    then the phases after the one that asked run;
  - `CacheLookup`: the cache takes the exchange (hit, follower...) or lets it go on;
  - `Proxy` (on the context): the request goes upstream (conn/relay.py).

A request starts on the engine's current Plan, with the phases and deadlines compiled
for it (`Engine.compiled`, one tuple: nothing is looked up or compiled per request).
"""

from __future__ import annotations

from ferryman.conn import connect
from ferryman.conn.client import ClientConn
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.conn.state import State
from ferryman.conn.timeouts import P_BUFFER
from ferryman.errors import FerrymanError
from ferryman.pipeline import respond
from ferryman.pipeline.cache.action import TAKEN
from ferryman.pipeline.stage import (
    CONTINUE,
    Authenticate,
    CacheLookup,
    Connect,
    Decision,
    Respond,
    run,
    run_after,
)

BODY, UPSTREAM, TUNNEL = State.BODY, State.UPSTREAM, State.TUNNEL


class Decider:
    __slots__ = ("conn", "engine", "reverse")

    def __init__(self, conn: ClientConn, engine: Engine, reverse: bool) -> None:
        self.conn = conn
        self.engine = engine
        self.reverse = reverse

    def start(self, ex: Exchange) -> None:
        """Run the request's phases (admit, route, cache), then carry out their decision."""
        ctx = ex.ctx
        ctx.plan, fwd, rev, ex.deadlines = self.engine.compiled
        phases = ex.phases = rev if self.reverse else fwd
        self.decide(ex, run(phases.for_head(ctx.head), ctx))

    def decide(self, ex: Exchange, decision: Decision) -> None:
        """Carry out what the phases decided."""
        ctx = ex.ctx
        conn = self.conn
        if type(decision) is Authenticate:
            self._suspend(ex, decision)
            return
        proxy = ctx.proxy
        if ctx.head.upgrade is not None and not (proxy is not None and proxy.upgrade):
            # A refused upgrade (or one answered here): the parser handed what follows this
            # head to a tunnel that will not exist, so the connection ends with this exchange.
            ex.keep_alive = False
        if isinstance(decision, Respond):
            if decision.error is not None:
                raise decision.error  # refused: answered from the error table, connection closed
            self._respond(ex, decision)
            return
        if isinstance(decision, Connect):
            conn.to(TUNNEL)
            conn.hold_for_tunnel()  # unless bytes came already, while a password was checked
            conn.pause(P_BUFFER)  # nothing more from the client until the tunnel is up
            task = connect.open_connect_tunnel(conn, ex, decision, self.engine.resolver)
            ex.task = conn.loop.create_task(task)
            return
        if proxy is None:
            raise FerrymanError(f"no phase decided what to do with the request ({decision!r})")
        ctx.route = proxy.route
        conn.to(UPSTREAM if ex.req_done else BODY, ex.deadlines)
        if type(decision) is CacheLookup:
            cache, rules = self.engine.cache, proxy.cache_rules
            if cache is not None and rules is not None:
                if cache.on_request(conn, ex, proxy, rules, decision.scheme) is TAKEN:
                    return  # the cache answers, or sends the request on itself
        conn.proxy(ex)

    def _suspend(self, ex: Exchange, d: Authenticate) -> None:
        """A password to check: off the loop; the request waits (its body is buffered,
        pipelined requests queue), then its phases go on after the one that asked."""
        conn = self.conn
        if ex.ctx.head.method == "CONNECT" and conn.hold_for_tunnel():
            conn.pause(P_BUFFER)  # what follows the head waits for the tunnel (or the 407)
        ex.task = conn.loop.create_task(self._authenticate(ex, d))

    async def _authenticate(self, ex: Exchange, d: Authenticate) -> None:
        ok = await self.engine.auth.verify(d.step)
        ex.task = None
        conn = self.conn
        if ex is not conn.cur or conn.closed:
            return
        ctx = ex.ctx
        try:
            decision = d.resume(ctx, d.step, ok)
            if decision is CONTINUE:
                assert ex.phases is not None
                decision = run_after(ex.phases.for_head(ctx.head), d.phase, ctx)
            self.decide(ex, decision)
        except FerrymanError as exc:
            conn.fail(ex, exc)

    def _respond(self, ex: Exchange, d: Respond) -> None:
        """ferryman's own answer (pipeline/respond.py built its bytes)."""
        conn = self.conn
        assert conn.transport is not None
        ex.status = d.status
        ex.ctx.route = d.route
        ex.error = d.why  # a 407 or 429 written as data: why, for the log
        data = d.data
        if ex.ctx.head.method == "HEAD":
            data = respond.bodiless(data)  # a body after it would be read as the next response
        conn.write(ex, data)
        if not ex.req_done or d.close or ex.ctx.head.method == "CONNECT":
            # an unread body would be parsed as a request; after a CONNECT head the
            # parser has handed the stream to a tunnel that will not exist
            ex.keep_alive = False
        conn.finish(ex)
