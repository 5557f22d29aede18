"""Turning a client connection into a tunnel: CONNECT, and Upgrade after a 101.

Both end the HTTP exchange with the same `Tunnel`; the access-log line is
written when the tunnel closes, with the bytes each way.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from ferryman.conn.exchange import Exchange
from ferryman.conn.tunnel import RelaySide, Tunnel
from ferryman.errors import FerrymanError, UpstreamConnectError, UpstreamTimeout
from ferryman.pipeline import respond
from ferryman.pipeline.route.router import Target
from ferryman.pipeline.stage import Connect, Respond, run_resolved
from ferryman.upstream.dial import open_connection

if TYPE_CHECKING:
    from ferryman.conn.downstream import Downstream
    from ferryman.upstream.connection import UpstreamConnection

async def _through_parent(ds: Downstream, up: RelaySide, target: Target, timeout: float) -> None:
    """Ask the parent proxy for a tunnel; raise unless it answers 2xx."""
    assert up.transport is not None
    waiter: asyncio.Future[tuple[bytes, bytes]] = ds.loop.create_future()
    up.head_waiter = waiter
    fwd = ds.engine.plan.forward
    via = fwd.via
    via_line = b"Via: %s\r\n" % via if via is not None else b""
    if fwd.parent_auth is not None:  # the parent's own credentials, never the client's
        via_line += b"Proxy-Authorization: %s\r\n" % fwd.parent_auth
    up.transport.write(
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target.authority, target.authority, via_line)
    )
    try:
        async with asyncio.timeout(timeout):
            head, rest = await waiter
    except TimeoutError:
        up.transport.close()
        raise UpstreamTimeout("parent proxy did not answer CONNECT") from None
    except (OSError, ValueError) as err:
        up.transport.close()
        raise UpstreamConnectError(f"parent proxy failed CONNECT: {err}") from None
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].startswith(b"2"):
        up.transport.close()
        raise UpstreamConnectError("parent proxy refused CONNECT: " + status_line.decode("latin-1")[:100])
    if rest:
        up.pending.append(rest)


async def open_connect_tunnel(ds: Downstream, ex: Exchange, decision: Connect) -> None:
    plan = ex.ctx.plan
    assert ds.transport is not None and ex.phases is not None
    resolved = ex.phases.resolved
    parent = plan.forward.parent
    target = decision.target
    t0 = monotonic()
    try:
        host, port = parent if parent is not None else (target.host, target.port)
        addrs = await ds.engine.resolver.resolve(host, port)
        if resolved:  # destination rules on the address, loops to ferryman itself
            admitted = run_resolved(resolved, ex.ctx, host, port, addrs)
            if isinstance(admitted, Respond):
                assert admitted.error is not None
                raise admitted.error
            addrs = admitted  # only allowed addresses are dialled
        _, up = await open_connection(addrs, RelaySide, plan.timeouts.upstream_connect)
        assert isinstance(up, RelaySide)
        ex.up.label = f"{host}:{port}"
        ex.up.t_connect = monotonic() - t0
        if parent is not None:
            await _through_parent(ds, up, target, plan.timeouts.upstream_header)
    except FerrymanError as exc:
        ex.task = None
        ds.tunnel_pending = None
        if not ds.closed:
            ds.fail(ex, exc)
        return
    ex.task = None
    if ds.closed:
        if up.transport is not None:
            up.transport.close()
        return
    ex.status = 200
    ex.t_first = monotonic() - ex.t0
    ds.transport.write(respond.TUNNEL_ESTABLISHED)
    _join(ds, ex, up, plan.timeouts.tunnel_idle)


def join_upgrade(ds: Downstream, ex: Exchange, conn: UpstreamConnection, rest: bytes) -> None:
    """After a 101: the upstream socket leaves the HTTP world and the pool for good."""
    assert conn.transport is not None
    up = RelaySide()
    up.transport = conn.transport
    if rest:
        up.pending.append(rest)
        up.bytes_read += len(rest)
    conn.transport.set_protocol(up)
    if ds.tunnel_pending is None:
        ds.tunnel_pending = []
    ex.t_first = monotonic() - ex.t0
    _join(ds, ex, up, ex.ctx.plan.timeouts.tunnel_idle)


def _join(ds: Downstream, ex: Exchange, up: RelaySide, idle: float) -> None:
    assert ds.transport is not None
    ds.disarm()
    client = RelaySide()
    client.transport = ds.transport
    client.pending = ds.tunnel_pending or []
    ds.tunnel_pending = None
    for data in client.pending:
        client.bytes_read += len(data)
    ds.tunnel = Tunnel(client, up, idle, lambda t: _closed(ds, ex, t))
    ds.transport.set_protocol(client)
    ds.transport.resume_reading()
    if up.transport is not None:
        up.transport.resume_reading()
    ds.tunnel.start()
    if ds.tunnel_eof:
        client.eof_received()


def _closed(ds: Downstream, ex: Exchange, tunnel: Tunnel) -> None:
    ex.bytes_in += tunnel.bytes_from_client
    ex.bytes_out += tunnel.bytes_from_upstream
    ds.closed = True
    ds.engine.connections.discard(ds)
    ds.cur = None
    ds.log(ex)
