"""Turning a client connection into a tunnel: CONNECT, and Upgrade after a 101.

Both end the HTTP exchange with the same `Tunnel`, joined by the client
connection itself (`ClientConn.join_tunnel`); the access-log line is written
when the tunnel closes, with the bytes each way.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ferryman.conn.client import ClientConn
from ferryman.conn.exchange import Exchange
from ferryman.conn.tunnel import RelaySide
from ferryman.errors import FerrymanError, UpstreamConnectError, UpstreamTimeout
from ferryman.pipeline import respond
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.route.router import Target
from ferryman.pipeline.stage import Connect, Respond, run_resolved
from ferryman.upstream.dial import Resolver, open_connection

if TYPE_CHECKING:
    from ferryman.upstream.connection import UpstreamConnection


async def _through_parent(
    ds: ClientConn, up: RelaySide, target: Target, fwd: ForwardPlan, timeout: float
) -> None:
    """Ask the parent proxy for a tunnel; raise unless it answers 2xx."""
    assert up.transport is not None
    waiter: asyncio.Future[tuple[bytes, bytes]] = ds.loop.create_future()
    up.head_waiter = waiter
    via = fwd.via
    via_line = b"Via: %s\r\n" % via if via is not None else b""
    if fwd.parent_auth is not None:  # the parent's own credentials, never the client's
        via_line += b"Proxy-Authorization: %s\r\n" % fwd.parent_auth
    up.transport.write(
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target.authority, target.authority, via_line)
    )

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    timer = ds.clock.call_later(timeout, expire)  # the connections' clock (conn/clock.py)
    try:
        head, rest = await waiter
    except TimeoutError:
        up.transport.close()
        raise UpstreamTimeout("parent proxy did not answer CONNECT") from None
    except (OSError, ValueError) as err:
        up.transport.close()
        raise UpstreamConnectError(f"parent proxy failed CONNECT: {err}") from None
    finally:
        timer.cancel()
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].startswith(b"2"):
        up.transport.close()
        raise UpstreamConnectError("parent proxy refused CONNECT: " + status_line.decode("latin-1")[:100])
    if rest:
        up.pending.append(rest)


async def open_connect_tunnel(ds: ClientConn, ex: Exchange, decision: Connect, resolver: Resolver) -> None:
    plan = ex.ctx.plan
    assert ds.transport is not None and ex.phases is not None
    resolved = ex.phases.resolved
    parent = plan.forward.parent
    target = decision.target
    clock = ds.clock
    t0 = clock.time()
    try:
        host, port = parent if parent is not None else (target.host, target.port)
        addrs = await resolver.resolve(host, port)
        if resolved:  # destination rules on the address, loops to ferryman itself
            admitted = run_resolved(resolved, ex.ctx, host, port, addrs)
            if isinstance(admitted, Respond):
                assert admitted.error is not None
                raise admitted.error
            addrs = admitted  # only allowed addresses are dialled
        _, up = await open_connection(addrs, RelaySide, plan.timeouts.upstream_connect)
        assert isinstance(up, RelaySide)
        ex.up.label = f"{host}:{port}"
        ex.up.t_connect = clock.time() - t0
        if parent is not None:
            await _through_parent(ds, up, target, plan.forward, plan.timeouts.upstream_header)
    except FerrymanError as exc:
        ex.task = None
        ds.drop_tunnel_hold()
        if not ds.closed:
            ds.fail(ex, exc)
        return
    ex.task = None
    if ds.closed:
        if up.transport is not None:
            up.transport.close()
        return
    ex.status = 200
    ex.t_first = clock.time() - ex.t0
    ds.transport.write(respond.TUNNEL_ESTABLISHED)
    ds.join_tunnel(ex, up, plan.timeouts.tunnel_idle)


def join_upgrade(ds: ClientConn, ex: Exchange, conn: UpstreamConnection, rest: bytes) -> None:
    """After a 101: the upstream socket leaves the HTTP world and the pool for good."""
    assert conn.transport is not None
    up = RelaySide()
    up.transport = conn.transport
    if rest:
        up.pending.append(rest)
        up.bytes_read += len(rest)
    conn.transport.set_protocol(up)
    ex.t_first = ds.clock.time() - ex.t0
    ds.join_tunnel(ex, up, ex.ctx.plan.timeouts.tunnel_idle)
