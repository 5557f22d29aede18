"""The group's in-flight bookkeeping (issue 10, item 1): a lease releases exactly once.

Invariant: a server's ``active`` equals the number of its leases not yet released,
whatever the order and number of ``release`` calls; an outcome is recorded once per
lease, so passive ejection counts each failed attempt once.
"""

from __future__ import annotations

import random

from ferryman.http1.events import Framing, RequestHead
from ferryman.upstream.group import Lease, PassivePlan, ServerPlan, UpstreamGroup, UpstreamPlan

HEAD = RequestHead("GET", b"/", "1.1", [], Framing.NONE, 0, True, b"app.test", frozenset(), False)


def _group(
    n: int = 2, max_conns: int = 0, failures: int = 4, balance: str = "round_robin", queue_max: int = 1000
) -> UpstreamGroup:
    servers = tuple(
        ServerPlan(i, f"http://127.0.0.1:{8000 + i}", "http", "127.0.0.1", 8000 + i, 1, False, max_conns)
        for i in range(n)
    )
    plan = UpstreamPlan(
        name="web", balance=balance, hash_header=None, hash_cookie=None, hash_uri=False,
        servers=servers, health=None, passive=PassivePlan(failures, 60.0, 30.0, 0.5),
        slow_start=0.0, retries=2, retry_budget=0.2, tls_verify=True, tls_ca_file=None, tls_sni=None,
        queue_max=queue_max, queue_timeout=5.0,
    )
    return UpstreamGroup(plan, now=0.0)


def _acquire(g: UpstreamGroup, now: float = 1.0, exclude: frozenset[int] = frozenset()) -> Lease:
    lease = g.acquire("127.0.0.1", HEAD, now, exclude)
    assert lease is not None
    return lease


def test_release_twice_gives_back_one_slot() -> None:
    g = _group(n=1)
    a, b = _acquire(g), _acquire(g)
    assert g.servers[0].state.active == 2
    a.release(2.0, False)
    a.release(2.0, False)  # the timeout path, then the error path: one release
    assert g.servers[0].state.active == 1
    assert not a.held and b.held
    b.release(3.0, True)
    assert g.servers[0].state.active == 0


def test_max_conns_holds_after_a_failure_released_twice() -> None:
    g = _group(n=1, max_conns=2)
    a, _b = _acquire(g), _acquire(g)
    assert g.acquire("127.0.0.1", HEAD, 1.0, frozenset()) is None
    a.release(2.0, False)
    a.release(2.0, False)
    _acquire(g)
    assert g.acquire("127.0.0.1", HEAD, 2.0, frozenset()) is None  # full again: 2 in flight


def test_each_failed_attempt_counts_once_toward_ejection() -> None:
    g = _group(n=2, failures=4)
    for t in (1.0, 2.0):  # two timed-out attempts on server 0, each released twice
        lease = _acquire(g, t, exclude=frozenset({1}))
        lease.release(t, False)
        lease.release(t, False)
    assert not g.servers[0].ejected
    for t in (3.0, 4.0):
        _acquire(g, t, exclude=frozenset({1})).release(t, False)
    assert g.servers[0].ejected


def test_no_verdict_release_does_not_count_as_a_failure_or_success() -> None:
    g = _group(n=2, failures=2)
    _acquire(g, 1.0, exclude=frozenset({1})).release(1.0, False)
    _acquire(g, 2.0, exclude=frozenset({1})).release(2.0, None)  # the client left
    assert g.servers[0].state.active == 0
    _acquire(g, 3.0, exclude=frozenset({1})).release(3.0, False)
    assert g.servers[0].ejected  # the None in between neither reset nor added to the streak


def test_active_matches_unreleased_leases_under_any_interleaving() -> None:
    rng = random.Random(1234)
    for policy in ("round_robin", "least_conn", "random_two", "ewma"):
        g = _group(n=3, max_conns=4, failures=1000, balance=policy)
        leases: list[Lease] = []
        now = 0.0
        for _ in range(2000):
            now += 0.01
            if rng.random() < 0.5:
                lease = g.acquire("127.0.0.1", HEAD, now, frozenset())
                if lease is not None:
                    leases.append(lease)
            elif leases:
                lease = rng.choice(leases)  # may be released already: a repeat is a no-op
                lease.release(now, rng.choice((True, False, None)))
            for s in g.servers:
                held = sum(1 for x in leases if x.held and x.server is s)
                assert s.state.active == held
                assert 0 <= held <= 4
        for lease in leases:
            lease.release(now, True)
            lease.release(now, False)
        assert [s.state.active for s in g.servers] == [0, 0, 0]


# -- the queue (issue 10, item 7) ---------------------------------------------------


def test_freed_slots_go_to_waiters_in_arrival_order() -> None:
    g = _group(n=1, max_conns=1)
    first = _acquire(g)
    granted: list[tuple[str, Lease]] = []
    for name in ("a", "b", "c"):
        w = g.enqueue("127.0.0.1", HEAD, frozenset(), lambda lease, n=name: granted.append((n, lease)))
        assert w is not None
    assert g.queued == 3 and g.saturated(frozenset())
    first.release(2.0, True)
    assert [n for n, _ in granted] == ["a"] and g.queued == 2
    assert g.servers[0].state.active == 1  # the slot went straight to the waiter
    granted[0][1].release(3.0, True)
    granted[1][1].release(4.0, True)
    assert [n for n, _ in granted] == ["a", "b", "c"] and g.queued == 0
    granted[2][1].release(5.0, True)
    assert g.servers[0].state.active == 0


def test_queue_is_bounded_and_cancelled_waiters_are_skipped() -> None:
    g = _group(n=1, max_conns=1, queue_max=2)
    held = _acquire(g)
    got: list[str] = []
    a = g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: got.append("a"))
    b = g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: got.append("b"))
    assert a is not None and b is not None
    assert g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: got.append("c")) is None  # full
    g.cancel(a)
    g.cancel(a)  # twice: counted once
    assert g.queued == 1
    held.release(1.0, False)
    assert got == ["b"] and g.queued == 0


def test_queue_off_refuses_at_once() -> None:
    g = _group(n=1, max_conns=1, queue_max=0)
    _acquire(g)
    assert g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: None) is None


def test_down_servers_are_not_worth_waiting_for() -> None:
    g = _group(n=2, max_conns=1)
    g.servers[0].state.mark_down()
    _acquire(g)  # server 1 is now full, server 0 is down
    assert g.acquire("127.0.0.1", HEAD, 1.0, frozenset()) is None
    assert g.saturated(frozenset())  # server 1 is healthy and full: wait
    assert not g.saturated(frozenset({1}))  # a retry that already tried it: nothing to wait for


def test_a_waiter_that_already_tried_the_free_server_does_not_block_the_next() -> None:
    g = _group(n=2, max_conns=1)
    a, b = _acquire(g), _acquire(g)
    got: list[str] = []
    assert g.enqueue("127.0.0.1", HEAD, frozenset({a.server.plan.index}), lambda _l: got.append("retry"))
    assert g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: got.append("fresh"))
    a.release(1.0, False)  # frees the server the retry already tried
    assert got == ["fresh"] and g.queued == 1
    b.release(2.0, True)
    assert got == ["fresh", "retry"] and g.queued == 0


def test_cancelled_waiters_do_not_pile_up() -> None:
    g = _group(n=1, max_conns=1, queue_max=10_000)
    _acquire(g)
    for _ in range(5000):
        w = g.enqueue("127.0.0.1", HEAD, frozenset(), lambda _l: None)
        assert w is not None
        g.cancel(w)
    assert g.queued == 0 and len(g._waiting) <= 16
