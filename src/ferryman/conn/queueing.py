"""Waiting for a server slot when every healthy server is at its max_conns.

The group keeps the FIFO of waiters and hands out freed slots (upstream/group.py);
this is the client connection's side of it: one `Queued` per waiting exchange,
with the ``queue.timeout`` deadline as one `call_later` handle.  A granted slot
arrives from inside another exchange's release, so the request goes on at the
next turn of the loop (by then the releasing exchange has parked its upstream
connection in the pool, ready for reuse).  Only requests that meet a full
upstream get here: the others never allocate any of this.

A background cache fill has no client connection: `lease_for_fill` takes its slot
the same way (at once, or after waiting its turn in the same FIFO, bounded by the
same ``queue.timeout``), so a fill never exceeds ``max_conns`` nor jumps the queue.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ferryman.conn.clock import Clock, Timer
from ferryman.conn.exchange import Exchange
from ferryman.errors import FerrymanError, UpstreamFull
from ferryman.http1.events import RequestHead
from ferryman.upstream.group import Lease, UpstreamGroup, Waiter

if TYPE_CHECKING:
    from ferryman.conn.client import ClientConn


class Queued:
    __slots__ = ("ds", "ex", "group", "waiter", "timer")

    def __init__(self, ds: ClientConn, ex: Exchange, group: UpstreamGroup) -> None:
        self.ds = ds
        self.ex = ex
        self.group = group
        self.waiter: Waiter | None = None
        self.timer: Timer | None = None

    def grant(self, lease: Lease) -> None:
        """Called by the group, inside a release: take the slot, go on at the next turn."""
        self._stop()
        self.ex.up.lease = lease  # from now on the exchange's end releases it, whatever happens
        self.ds.loop.call_soon(self._resume, lease)

    def _resume(self, lease: Lease) -> None:
        ds, ex = self.ds, self.ex
        if ds.closed or ds.cur is not ex or ex.logged or not lease.held:
            lease.release(ds.clock.time(), None)
            return
        try:
            ds.send_to(ex, lease)
        except FerrymanError as exc:
            ds.fail(ex, exc)

    def expire(self) -> None:
        self.timer = None
        self.cancel()
        t = self.group.plan.queue_timeout
        name = self.group.plan.name
        self.ds.fail(self.ex, UpstreamFull(
            f"every server of upstream {name!r} is at max_conns (full, not unhealthy); "
            f"no slot freed within the {t:g}s queue timeout"
        ))

    def cancel(self) -> None:
        """Leave the queue (timeout, error, client gone); harmless when already out."""
        self._stop()
        if self.waiter is not None:
            self.group.cancel(self.waiter)
            self.waiter = None

    def _stop(self) -> None:
        if self.ex.up.queued is self:
            self.ex.up.queued = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def enqueue(ds: ClientConn, ex: Exchange, group: UpstreamGroup) -> None:
    """Wait for a slot of ``group``; raise `UpstreamFull` when the queue is full or off."""
    plan = group.plan
    q = Queued(ds, ex, group)
    ctx = ex.ctx
    waiter = group.enqueue(ctx.client_ip, ctx.head, ex.up.tried, q.grant) if plan.queue_timeout > 0 else None
    if waiter is None:
        raise UpstreamFull(
            f"every server of upstream {plan.name!r} is at max_conns (full, not unhealthy) "
            f"and the queue is full ({plan.queue_max} waiting)"
        )
    q.waiter = waiter
    q.timer = ds.clock.call_later(plan.queue_timeout, q.expire)
    ex.up.queued = q


async def lease_for_fill(
    group: UpstreamGroup, client_ip: str, head: RequestHead, clock: Clock
) -> Lease | None:
    """A slot of ``group`` for a background cache fill: at once when a server has one free,
    else after waiting in the upstream's queue like a request, at most ``queue.timeout``.
    None when no server is up, the queue is full or off, or the wait ran out (the fill is
    then skipped).  Cancelled while waiting, it leaves the queue and gives back a slot
    granted meanwhile: no lease outlives the wait unless it is returned."""
    none: frozenset[int] = frozenset()
    lease = group.acquire(client_ip, head, clock.time(), none)
    if lease is not None or not group.saturated(none) or group.plan.queue_timeout <= 0:
        return lease
    got: asyncio.Future[Lease | None] = asyncio.get_running_loop().create_future()

    def grant(lease: Lease) -> None:  # inside another lease's release
        if got.done():
            lease.release(clock.time(), None)
        else:
            got.set_result(lease)

    def expire() -> None:
        if not got.done():
            got.set_result(None)

    waiter = group.enqueue(client_ip, head, none, grant)
    if waiter is None:
        return None
    timer = clock.call_later(group.plan.queue_timeout, expire)
    try:
        return await got
    except BaseException:  # cancelled (shutdown): a slot granted meanwhile goes back
        if got.done() and not got.cancelled() and (granted := got.result()) is not None:
            granted.release(clock.time(), None)
        raise
    finally:
        timer.cancel()
        group.cancel(waiter)  # a no-op once granted
