"""`queueing.lease_for_fill`: a background cache fill takes a server slot like a request.

At once when a server has one free; else in the upstream's FIFO queue, bounded by
``queue.timeout`` (the fake clock moves it); None when the queue is full or off, no
server is up, or the wait ran out.  Invariant: ``active`` equals the unreleased leases,
also when the waiting task is cancelled after its slot was granted.
"""

from __future__ import annotations

import asyncio

from ferryman.conn.queueing import lease_for_fill
from ferryman.http1.events import Framing, RequestHead
from ferryman.upstream.group import PassivePlan, ServerPlan, UpstreamGroup, UpstreamPlan
from tests.helpers.fakeclock import FakeClock

HEAD = RequestHead("GET", b"/", "1.1", [], Framing.NONE, 0, True, b"app.test", frozenset(), False)


def _group(queue_max: int = 10, queue_timeout: float = 5.0) -> UpstreamGroup:
    server = ServerPlan(0, "http://127.0.0.1:8000", "http", "127.0.0.1", 8000, 1, False, 1)
    plan = UpstreamPlan(
        name="web", balance="round_robin", hash_header=None, hash_cookie=None, hash_uri=False,
        servers=(server,), health=None, passive=PassivePlan(4, 60.0, 30.0, 0.5),
        slow_start=0.0, retries=2, retry_budget=0.2, tls_verify=True, tls_ca_file=None, tls_sni=None,
        queue_max=queue_max, queue_timeout=queue_timeout,
    )
    return UpstreamGroup(plan, now=0.0)


def _active(g: UpstreamGroup) -> int:
    return g.servers[0].state.active


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_free_slot_is_taken_at_once() -> None:
    g, clock = _group(), FakeClock()
    lease = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
    assert lease is not None and _active(g) == 1
    lease.release(clock.time(), True)
    assert _active(g) == 0


async def test_a_full_server_makes_the_fill_wait_its_turn() -> None:
    g, clock = _group(), FakeClock()
    held = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
    assert held is not None
    task = asyncio.ensure_future(lease_for_fill(g, "127.0.0.1", HEAD, clock))
    await _turns()
    assert not task.done() and g.queued == 1 and _active(g) == 1  # never over max_conns
    held.release(clock.time(), True)
    lease = await task
    assert lease is not None and _active(g) == 1 and g.queued == 0
    assert clock.pending() == []  # the queue timeout was disarmed
    lease.release(clock.time(), True)
    assert _active(g) == 0


async def test_the_wait_is_bounded_by_the_queue_timeout() -> None:
    g, clock = _group(queue_timeout=2.0), FakeClock()
    held = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
    assert held is not None
    task = asyncio.ensure_future(lease_for_fill(g, "127.0.0.1", HEAD, clock))
    await _turns()
    clock.advance(2.0)
    assert await task is None and g.queued == 0
    held.release(clock.time(), True)
    assert _active(g) == 0  # the freed slot went to nobody


async def test_queue_full_or_off_or_no_server_up_skips_the_fill_at_once() -> None:
    for g in (_group(queue_max=0), _group(queue_timeout=0.0)):
        clock = FakeClock()
        held = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
        assert held is not None
        assert await lease_for_fill(g, "127.0.0.1", HEAD, clock) is None
        assert g.queued == 0 and clock.pending() == []
    down, clock = _group(), FakeClock()
    down.servers[0].state.mark_down()
    assert await lease_for_fill(down, "127.0.0.1", HEAD, clock) is None and down.queued == 0


async def test_cancelled_while_waiting_leaves_the_queue() -> None:
    g, clock = _group(), FakeClock()
    held = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
    assert held is not None
    task = asyncio.ensure_future(lease_for_fill(g, "127.0.0.1", HEAD, clock))
    await _turns()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert g.queued == 0 and clock.pending() == []
    held.release(clock.time(), True)
    assert _active(g) == 0


async def test_cancelled_after_the_grant_gives_the_slot_back() -> None:
    g, clock = _group(), FakeClock()
    held = await lease_for_fill(g, "127.0.0.1", HEAD, clock)
    assert held is not None
    task = asyncio.ensure_future(lease_for_fill(g, "127.0.0.1", HEAD, clock))
    await _turns()
    held.release(clock.time(), True)  # grants the slot; the task has not run since
    assert _active(g) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and _active(g) == 0 and g.queued == 0

