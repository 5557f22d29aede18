"""Pool bookkeeping invariants (DESIGN 2.11): idle <= max per origin and in total, handed out once,
expiry, LRU eviction across origins."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ferryman.upstream.pool import Pool, auto_max_total


@dataclass(eq=False)
class Conn:
    usable: bool = True
    idle_ready: bool = True


def test_acquire_returns_most_recent_first() -> None:
    pool: Pool[Conn] = Pool(max_idle=4, idle_timeout=10)
    a, b = Conn(), Conn()
    assert pool.park("k", a, now=0) is None and pool.park("k", b, now=1) is None
    assert pool.acquire("k") is b
    assert pool.acquire("k") is a
    assert pool.acquire("k") is None


def test_idle_never_exceeds_max() -> None:
    pool: Pool[Conn] = Pool(max_idle=2, idle_timeout=10)
    conns = [Conn() for _ in range(5)]
    results = [pool.park("k", c, now=0) for c in conns]
    assert results == [None, None, conns[2], conns[3], conns[4]]  # refused: the caller closes them
    assert pool.idle_count("k") == 2


def test_connection_handed_out_once() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    conns = [Conn() for _ in range(5)]
    for c in conns:
        pool.park("k", c, now=0)
    got = [pool.acquire("k") for _ in range(6)]
    assert got[-1] is None
    assert len({id(c) for c in got[:-1]}) == 5


def test_unusable_connections_are_skipped() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    good, dead = Conn(), Conn()
    pool.park("k", good, now=0)
    pool.park("k", dead, now=0)
    dead.usable = False
    assert pool.acquire("k") is good


def test_keys_are_separate() -> None:
    pool: Pool[Conn] = Pool(max_idle=1, idle_timeout=10)
    a, b = Conn(), Conn()
    assert pool.park(("http", "a", 80), a, now=0) is None
    assert pool.park(("http", "b", 80), b, now=0) is None
    assert pool.acquire(("http", "a", 80)) is a
    assert pool.acquire(("http", "a", 80)) is None


def test_sweep_expires_only_old_and_dead() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    old, fresh, dead = Conn(), Conn(), Conn()
    pool.park("k", old, now=0)
    pool.park("k", fresh, now=8)
    pool.park("j", dead, now=8)
    dead.usable = False
    expired = pool.sweep(now=12)
    assert set(map(id, expired)) == {id(old), id(dead)}
    assert pool.acquire("k") is fresh
    assert pool.idle_count() == 0


def test_discard_and_drain() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    a, b = Conn(), Conn()
    pool.park("k", a, now=0)
    pool.park("k", b, now=0)
    pool.discard("k", a)
    assert pool.drain() == [b]
    assert pool.idle_count() == 0


def test_only_idle_ready_connections_are_parked() -> None:
    """A connection still paused for a slow client (or still attached) is refused: the caller closes it."""
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    paused = Conn(idle_ready=False)
    assert pool.park("k", paused, now=0) is paused
    assert pool.idle_count() == 0 and pool.acquire("k") is None


def test_total_cap_evicts_the_least_recently_used_across_origins() -> None:
    pool: Pool[Conn] = Pool(max_idle=4, idle_timeout=10, max_total=3)
    a, b, c, d = Conn(), Conn(), Conn(), Conn()
    assert pool.park("a", a, now=0) is None
    assert pool.park("b", b, now=1) is None
    assert pool.park("c", c, now=2) is None
    assert pool.park("d", d, now=3) is a  # the oldest anywhere makes room
    assert pool.idle_count() == 3 and pool.idle_count("a") == 0
    assert pool.acquire("b") is b  # b leaves; parking it again makes it the most recent
    assert pool.park("b", b, now=4) is None
    e = Conn()
    assert pool.park("e", e, now=5) is c
    assert pool.acquire("a") is None and pool.acquire("c") is None


def test_eviction_that_empties_the_parking_origin() -> None:
    pool: Pool[Conn] = Pool(max_idle=4, idle_timeout=10, max_total=1)
    a, b = Conn(), Conn()
    pool.park("k", a, now=0)
    assert pool.park("k", b, now=1) is a
    assert pool.idle_count("k") == 1 and pool.acquire("k") is b


def test_lru_within_one_origin_is_its_oldest() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10, max_total=2)
    old, new, other = Conn(), Conn(), Conn()
    pool.park("k", old, now=0)
    pool.park("k", new, now=1)
    assert pool.park("j", other, now=2) is old
    assert pool.acquire("k") is new


def test_evict_lru_and_trim_after_a_lower_cap() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10, max_total=10)
    conns = [Conn() for _ in range(6)]
    for i, c in enumerate(conns):
        pool.park(f"o{i % 3}", c, now=i)
    assert pool.evict_lru() is conns[0]
    pool.max_total = 2
    assert pool.trim() == conns[1:4]
    assert pool.idle_count() == 2
    assert pool.drain() == conns[4:]
    assert pool.evict_lru() is None


def test_zero_caps_pool_nothing() -> None:
    pools = [Pool[Conn](max_idle=0, idle_timeout=10), Pool[Conn](max_idle=4, idle_timeout=10, max_total=0)]
    for pool in pools:
        c = Conn()
        assert pool.park("k", c, now=0) is c
        assert pool.idle_count() == 0


def test_auto_cap_from_the_descriptor_limit() -> None:
    assert auto_max_total(1024) == 256
    assert auto_max_total(20) == 8
    assert auto_max_total(1 << 20) == 1 << 18


def test_invariants_hold_under_random_operations() -> None:
    """idle <= max_total and <= max_idle per origin; nothing handed out twice or lost."""
    rng = random.Random(7)
    pool: Pool[Conn] = Pool(max_idle=3, idle_timeout=5, max_total=7)
    out: set[int] = set()  # handed out (in use)
    idle: set[int] = set()
    by_id: dict[int, Conn] = {}
    now = 0.0
    for _ in range(5000):
        now += rng.random()
        key = f"o{rng.randrange(6)}"
        op = rng.random()
        if op < 0.45:
            conn = pool.acquire(key)
            if conn is not None:
                assert id(conn) in idle and id(conn) not in out
                idle.discard(id(conn))
                out.add(id(conn))
        elif op < 0.9:
            if out and rng.random() < 0.7:
                cid = rng.choice(sorted(out))
                conn = by_id[cid]
                out.discard(cid)
            else:
                conn = Conn()
                by_id[id(conn)] = conn
            closed = pool.park(key, conn, now)
            if closed is not conn:
                idle.add(id(conn))
            if closed is not None:
                idle.discard(id(closed))
        elif op < 0.95:
            for conn in pool.sweep(now):
                idle.discard(id(conn))
        else:
            victim = pool.evict_lru()
            if victim is not None:
                idle.discard(id(victim))
        assert pool.idle_count() == len(idle) <= pool.max_total
        assert all(pool.idle_count(f"o{i}") <= pool.max_idle for i in range(6))
