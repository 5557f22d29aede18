"""Waiting for a server slot when every healthy server is at its max_conns.

The group keeps the FIFO of waiters and hands out freed slots (upstream/group.py);
this is the client connection's side of it: one `Queued` per waiting exchange,
with the ``queue.timeout`` deadline as one `call_later` handle.  A granted slot
arrives from inside another exchange's release, so the request goes on at the
next turn of the loop (by then the releasing exchange has parked its upstream
connection in the pool, ready for reuse).  Only requests that meet a full
upstream get here: the others never allocate any of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferryman.conn.clock import Timer
from ferryman.conn.exchange import Exchange
from ferryman.errors import FerrymanError, UpstreamFull
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
