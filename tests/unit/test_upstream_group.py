"""The group's in-flight bookkeeping (issue 10, item 1): a lease releases exactly once.

Invariant: a server's ``active`` equals the number of its leases not yet released,
whatever the order and number of ``release`` calls; an outcome is recorded once per
lease, so passive ejection counts each failed attempt once.
"""

from __future__ import annotations

import gc
import random
import weakref

from ferryman.http1.events import Framing, RequestHead
from ferryman.upstream.group import (
    HealthPlan,
    Lease,
    PassivePlan,
    ServerPlan,
    UpstreamGroup,
    UpstreamPlan,
    UpstreamServer,
)

HEAD = RequestHead("GET", b"/", "1.1", [], Framing.NONE, 0, True, b"app.test", frozenset(), False)


def _group(
    n: int = 2, max_conns: int = 0, failures: int = 4, balance: str = "round_robin", queue_max: int = 1000,
    ports: tuple[int, ...] | None = None, health: HealthPlan | None = None, now: float = 0.0,
    slow_start: float = 0.0,
) -> UpstreamGroup:
    ports = ports if ports is not None else tuple(8000 + i for i in range(n))
    servers = tuple(
        ServerPlan(i, f"http://127.0.0.1:{port}", "http", "127.0.0.1", port, 1, False, max_conns)
        for i, port in enumerate(ports)
    )
    plan = UpstreamPlan(
        name="web", balance=balance, hash_header=None, hash_cookie=None, hash_uri=False,
        servers=servers, health=health, passive=PassivePlan(failures, 60.0, 30.0, 0.5),
        slow_start=slow_start, retries=2, retry_budget=0.2, tls_verify=True, tls_ca_file=None, tls_sni=None,
        queue_max=queue_max, queue_timeout=5.0,
    )
    return UpstreamGroup(plan, now=now)


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


# -- reload: the new group adopts the old one's state (issue: adopt) -----------------


def _reloaded(old: UpstreamGroup, now: float, **kw: object) -> UpstreamGroup:
    new = _group(now=now, **kw)  # type: ignore[arg-type]
    new.adopt(old, now)
    return new


def _current(lease: Lease) -> UpstreamServer:
    """The server state a lease releases into (its server's, after any reloads)."""
    server = lease.server
    while server.moved is not None:
        server = server.moved[1]
    return server


def test_a_passive_ejection_across_a_reload_ends_when_it_would_have() -> None:
    old = _group(n=2, failures=2)  # ejection: 30 s
    for t in (1.0, 2.0):
        _acquire(old, t, exclude=frozenset({1})).release(t, False)
    assert old.servers[0].ejected and not old.servers[0].state.healthy  # out until 32.0
    new = _reloaded(old, 3.0, n=2, failures=2)
    s = new.servers[0]
    assert s.ejected and not s.state.healthy
    new.tick(31.9)
    assert s.ejected and not s.state.healthy
    new.tick(32.0)  # no active check: only the ejection's expiry can bring it back
    assert not s.ejected and s.state.healthy
    assert new.acquire("127.0.0.1", HEAD, 32.0, frozenset({1})) is not None


def test_failures_before_a_reload_count_after_it() -> None:
    old = _group(n=2, failures=2)
    _acquire(old, 1.0, exclude=frozenset({1})).release(1.0, False)
    new = _reloaded(old, 2.0, n=2, failures=2)
    assert not new.servers[0].ejected
    _acquire(new, 3.0, exclude=frozenset({1})).release(3.0, False)
    assert new.servers[0].ejected  # the second failure, as without the reload


def test_an_active_check_verdict_is_kept_with_the_new_thresholds() -> None:
    check = HealthPlan("/h", 1.0, 1.0, frozenset(), rise=1, fall=1)
    old = _group(n=2, health=check)
    old.observe_check(old.servers[0], False, 1.0)
    assert not old.servers[0].state.healthy
    new = _reloaded(old, 2.0, n=2, health=HealthPlan("/h", 1.0, 1.0, frozenset(), rise=2, fall=1))
    s = new.servers[0]
    assert not s.state.healthy and s.active is not None and s.active.rise == 2
    new.observe_check(s, True, 3.0)
    assert not s.state.healthy  # rise is 2 now
    new.observe_check(s, True, 4.0)
    assert s.state.healthy


def test_a_server_down_by_a_check_the_reload_removed_comes_back() -> None:
    check = HealthPlan("/h", 1.0, 1.0, frozenset(), rise=1, fall=1)
    old = _group(n=2, health=check)
    old.observe_check(old.servers[0], False, 1.0)
    new = _reloaded(old, 2.0, n=2)  # no health check any more: nothing else would revive it
    assert new.servers[0].state.healthy


def test_in_flight_count_carries_over_and_max_conns_holds() -> None:
    old = _group(n=1, max_conns=1)
    a = _acquire(old)
    new = _reloaded(old, 2.0, n=1, max_conns=1)
    assert new.servers[0].state.active == 1
    assert new.acquire("127.0.0.1", HEAD, 2.0, frozenset()) is None  # still full
    assert new.saturated(frozenset())  # worth waiting for
    a.release(3.0, True)
    assert new.servers[0].state.active == 0
    a.release(3.0, False)  # once only, even across the reload
    assert new.servers[0].state.active == 0
    _acquire(new, 4.0)
    assert new.acquire("127.0.0.1", HEAD, 4.0, frozenset()) is None


def test_a_lease_from_before_a_reload_frees_its_slot_to_the_new_queue() -> None:
    old = _group(n=1, max_conns=1)
    a = _acquire(old)
    new = _reloaded(old, 2.0, n=1, max_conns=1)
    got: list[Lease] = []
    assert new.enqueue("127.0.0.1", HEAD, frozenset(), got.append) is not None
    a.release(3.0, True)
    assert len(got) == 1 and got[0].group is new and new.queued == 0
    assert new.servers[0].state.active == 1
    got[0].release(4.0, True)
    assert new.servers[0].state.active == 0


def test_the_outcome_of_a_lease_from_before_a_reload_counts_in_the_new_group() -> None:
    old = _group(n=2, failures=2)
    _acquire(old, 1.0, exclude=frozenset({1})).release(1.0, False)
    pending = _acquire(old, 2.0, exclude=frozenset({1}))
    new = _reloaded(old, 3.0, n=2, failures=2)
    pending.release(4.0, False)
    assert new.servers[0].ejected and not new.servers[0].state.healthy
    assert not old.servers[0].ejected  # the old group is retired: nothing recorded there
    assert new.servers[0].state.active == 0


def test_waiters_move_to_the_new_group_in_order() -> None:
    old = _group(n=1, max_conns=1)
    a = _acquire(old)
    got: list[tuple[str, Lease]] = []
    wa = old.enqueue("127.0.0.1", HEAD, frozenset(), lambda lease: got.append(("a", lease)))
    wb = old.enqueue("127.0.0.1", HEAD, frozenset(), lambda lease: got.append(("b", lease)))
    wc = old.enqueue("127.0.0.1", HEAD, frozenset(), lambda lease: got.append(("c", lease)))
    assert wa is not None and wb is not None and wc is not None
    new = _reloaded(old, 2.0, n=1, max_conns=1)
    assert (old.queued, new.queued) == (0, 3)
    old.cancel(wb)  # the waiter's own handle still holds the old group
    assert new.queued == 2
    a.release(3.0, True)
    assert [n for n, _ in got] == ["a"] and got[0][1].group is new
    got[0][1].release(4.0, True)
    assert [n for n, _ in got] == ["a", "c"] and new.queued == 0
    got[1][1].release(5.0, True)
    assert new.servers[0].state.active == 0


def test_a_reload_with_room_grants_waiting_requests_at_once() -> None:
    old = _group(n=1, max_conns=1)
    _acquire(old)
    got: list[Lease] = []
    assert old.enqueue("127.0.0.1", HEAD, frozenset(), got.append) is not None
    new = _reloaded(old, 2.0, n=1, max_conns=2)
    assert len(got) == 1 and new.queued == 0 and new.servers[0].state.active == 2


def test_a_reload_that_reorders_servers_follows_them_by_address() -> None:
    old = _group(ports=(8000, 8001), max_conns=1)
    a = _acquire(old, exclude=frozenset({1}))  # on 8000
    b = _acquire(old, exclude=frozenset({0}))  # on 8001
    got: list[Lease] = []
    assert old.enqueue("127.0.0.1", HEAD, frozenset({0}), got.append) is not None  # tried 8000
    new = _reloaded(old, 2.0, ports=(8001, 8000), max_conns=1)
    assert [s.plan.port for s in new.servers] == [8001, 8000]
    assert [s.state.active for s in new.servers] == [1, 1]
    a.release(3.0, True)  # frees 8000, which the waiter already tried: not for it
    assert got == [] and [s.state.active for s in new.servers] == [1, 0]
    b.release(4.0, True)
    assert len(got) == 1 and got[0].server.plan.port == 8001


def test_a_server_the_reload_removed_keeps_its_old_bookkeeping() -> None:
    old = _group(ports=(8000, 8001), max_conns=1)
    a = _acquire(old, exclude=frozenset({1}))  # on 8000
    new = _reloaded(old, 2.0, ports=(8001,), max_conns=1)
    a.release(3.0, False)
    assert old.servers[0].state.active == 0 and new.servers[0].state.active == 0


def test_leases_survive_two_reloads() -> None:
    g1 = _group(n=1, max_conns=2)
    a = _acquire(g1)
    g2 = _reloaded(g1, 2.0, n=1, max_conns=2)
    b = _acquire(g2, 2.0)
    g3 = _reloaded(g2, 3.0, n=1, max_conns=2)
    assert g3.servers[0].state.active == 2 and g3.acquire("127.0.0.1", HEAD, 3.0, frozenset()) is None
    a.release(4.0, True)
    b.release(4.0, True)
    assert g3.servers[0].state.active == 0


def test_active_matches_unreleased_leases_across_random_reloads() -> None:
    """A server's count covers every unreleased lease taken on it, whatever reloads
    happened meanwhile (one that dropped it and one that brought it back included), and
    never exceeds its max_conns."""
    rng = random.Random(4321)
    layouts = [(8000, 8001, 8002), (8002, 8000, 8001), (8001, 8002), (8000, 8001, 8002, 8003)]
    for policy in ("round_robin", "least_conn", "random_two", "ewma"):
        g = _group(ports=layouts[0], max_conns=3, failures=1000, balance=policy)
        leases: list[Lease] = []
        mine: dict[int, list[Lease]] = {port: [] for port in layouts[0]}  # port -> its leases
        now = 0.0
        for _ in range(2000):
            now += 0.01
            r = rng.random()
            if r < 0.02:
                ports = rng.choice(layouts)
                g = _reloaded(g, now, ports=ports, max_conns=3, failures=1000, balance=policy)
                for port in ports:  # a dropped server's leases still count if it comes back
                    mine.setdefault(port, [])
            elif r < 0.5:
                lease = g.acquire("127.0.0.1", HEAD, now, frozenset())
                if lease is not None:
                    leases.append(lease)
                    mine[lease.server.plan.port].append(lease)
            elif leases:
                lease = rng.choice(leases)
                lease.release(now, rng.choice((True, False, None)))
            for s in g.servers:
                held = sum(1 for x in mine[s.plan.port] if x.held)
                assert s.state.active == held and held <= 3
                assert all(_current(x) is s for x in mine[s.plan.port] if x.held)
        for lease in leases:
            lease.release(now, True)
        assert [s.state.active for s in g.servers] == [0] * len(g.servers)


def test_a_retry_across_a_reload_excludes_the_servers_it_tried_not_their_places() -> None:
    old = _group(ports=(8000, 8001, 8002))
    new = _reloaded(old, 2.0, ports=(8002, 8000))  # 8001 removed, the others reordered
    assert new.translate(old, frozenset({0, 1})) == frozenset({1})  # tried 8000 and 8001
    assert new.translate(old, frozenset()) == frozenset()
    assert old.translate(old, frozenset({2})) == frozenset({2})
    lease = new.acquire("127.0.0.1", HEAD, 3.0, new.translate(old, frozenset({0})))
    assert lease is not None and lease.server.plan.port == 8002  # not 8000 again


# -- reload: the retry budget, the rotation, and servers dropped and brought back ------


def test_a_reload_keeps_the_retry_budget_spent() -> None:
    old = _group(n=2)
    spent = 0
    while old.may_retry(1):
        spent += 1
    assert spent == 10  # the burst
    new = _reloaded(old, 2.0, n=2)
    assert not new.may_retry(1)  # no fresh burst: the outage is still on
    for _ in range(5):  # 5 requests at budget 0.2 earn one retry
        _acquire(new, 3.0).release(3.0, True)
    assert new.may_retry(1) and not new.may_retry(1)


def test_a_retry_asked_of_the_retired_group_spends_the_current_tokens() -> None:
    old = _group(n=2)
    while old.may_retry(1):
        pass
    old.tokens = 3.0
    new = _reloaded(old, 2.0, n=2)
    third = _reloaded(new, 3.0, n=2)
    assert old.may_retry(1) and new.may_retry(1) and third.may_retry(1)  # a request from each Plan
    assert not old.may_retry(1) and not third.may_retry(1)
    assert not old.may_retry(3)  # the count is the request's Plan's (retries: 2)


def test_the_rotation_survives_reloads_by_address() -> None:
    g = _group(ports=(8000, 8001, 8002))
    seen = []
    for i in range(5):
        lease = _acquire(g, float(i))
        seen.append(lease.server.plan.port)
        lease.release(float(i), True)
        g = _reloaded(g, float(i), ports=(8000, 8001, 8002))
    assert seen == [8000, 8001, 8002, 8000, 8001]  # was 8000 every time
    g = _reloaded(g, 7.0, ports=(8001, 8000, 8002))  # reordered: the turn follows the address
    assert _acquire(g, 7.0).server.plan.port == 8002


def test_a_server_dropped_and_brought_back_keeps_counting_its_requests() -> None:
    g1 = _group(ports=(8000, 8001), max_conns=1)
    a = _acquire(g1, exclude=frozenset({1}))  # on 8000
    g2 = _reloaded(g1, 2.0, ports=(8001,), max_conns=1)  # 8000 dropped, a still in flight
    assert set(g2.retired) == {"127.0.0.1:8000"}
    g3 = _reloaded(g2, 3.0, ports=(8001, 8000), max_conns=1)  # and back
    back = g3.servers[1]
    assert back.state.active == 1 and g3.retired == {}
    assert g3.acquire("127.0.0.1", HEAD, 3.0, frozenset({0})) is None  # max_conns holds
    assert g3.saturated(frozenset({0}))
    got: list[Lease] = []
    assert g3.enqueue("127.0.0.1", HEAD, frozenset({0}), got.append) is not None
    a.release(4.0, True)  # into the server it is now, freeing its slot for the waiter
    assert len(got) == 1 and got[0].server is back and back.state.active == 1
    got[0].release(5.0, True)
    assert back.state.active == 0 and not g1.in_flight() and not g3.in_flight()


def test_a_dropped_server_is_remembered_across_reloads_only_while_it_has_requests() -> None:
    g = _group(ports=(8000, 8001))
    a = _acquire(g, exclude=frozenset({1}))  # on 8000
    b = _acquire(g, exclude=frozenset({0}))  # on 8001
    g = _reloaded(g, 2.0, ports=(8002,))
    assert set(g.retired) == {"127.0.0.1:8000", "127.0.0.1:8001"}
    a.release(3.0, True)
    g = _reloaded(g, 4.0, ports=(8003,))
    assert set(g.retired) == {"127.0.0.1:8001"}  # 8000 has nothing in flight: forgotten
    g = _reloaded(g, 5.0, ports=(8003, 8000, 8001))
    assert [s.state.active for s in g.servers] == [0, 0, 1] and g.retired == {}
    b.release(6.0, True)
    assert [s.state.active for s in g.servers] == [0, 0, 0]
    for i in range(100):  # many reloads with nothing in flight: nothing piles up
        g = _reloaded(g, 7.0 + i, ports=(8004 + i % 2,))
    assert g.retired == {} and not g.in_flight()


def test_a_dropped_upstream_brought_back_keeps_counting_its_requests() -> None:
    g1 = _group(n=1, max_conns=1)
    a = _acquire(g1)
    assert g1.in_flight()
    g2 = _group(n=1, max_conns=1, now=3.0)  # the upstream, gone for one reload, is back
    g2.take_back(g1)
    assert g2.servers[0].state.active == 1
    assert g2.acquire("127.0.0.1", HEAD, 3.0, frozenset()) is None
    a.release(4.0, True)
    assert g2.servers[0].state.active == 0 and not g1.in_flight()


def test_a_lease_held_across_many_reloads_keeps_only_its_own_group_alive() -> None:
    """Each reload points the older groups' servers (``moved``) and groups (``successor``)
    straight at the newest ones: the groups in between are not kept alive by a chain."""
    first = _group(ports=(8000, 8001), max_conns=1)
    lease = _acquire(first, exclude=frozenset({1}))  # on 8000, held throughout
    g, refs = first, []
    for i in range(50):
        ports = (8000, 8001) if i % 10 else (8001,)  # now and then 8000 is dropped, then back
        g = _reloaded(g, 2.0 + i, ports=ports, max_conns=1)
        refs.append(weakref.ref(g))
    gc.collect()
    assert [i for i, r in enumerate(refs) if r() is not None] == [49]  # the current group only
    assert g.servers[0].state.active == 1 and g.acquire("127.0.0.1", HEAD, 60.0, frozenset({1})) is None
    assert first.may_retry(1) and g.tokens == 9.0  # the request's retry spends the current tokens
    lease.release(60.0, True)
    assert g.servers[0].state.active == 0
