"""Pool bookkeeping invariants (DESIGN 2.11): idle <= max, handed out once, expiry."""

from __future__ import annotations

from dataclasses import dataclass

from ferryman.upstream.pool import Pool


@dataclass(eq=False)
class Conn:
    usable: bool = True
    idle_ready: bool = True


def test_acquire_returns_most_recent_first() -> None:
    pool: Pool[Conn] = Pool(max_idle=4, idle_timeout=10)
    a, b = Conn(), Conn()
    assert pool.release("k", a, now=0) and pool.release("k", b, now=1)
    assert pool.acquire("k") is b
    assert pool.acquire("k") is a
    assert pool.acquire("k") is None


def test_idle_never_exceeds_max() -> None:
    pool: Pool[Conn] = Pool(max_idle=2, idle_timeout=10)
    results = [pool.release("k", Conn(), now=0) for _ in range(5)]
    assert results == [True, True, False, False, False]
    assert pool.idle_count("k") == 2


def test_connection_handed_out_once() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    conns = [Conn() for _ in range(5)]
    for c in conns:
        pool.release("k", c, now=0)
    got = [pool.acquire("k") for _ in range(6)]
    assert got[-1] is None
    assert len({id(c) for c in got[:-1]}) == 5


def test_unusable_connections_are_skipped() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    good, dead = Conn(), Conn()
    pool.release("k", good, now=0)
    pool.release("k", dead, now=0)
    dead.usable = False
    assert pool.acquire("k") is good


def test_keys_are_separate() -> None:
    pool: Pool[Conn] = Pool(max_idle=1, idle_timeout=10)
    a, b = Conn(), Conn()
    assert pool.release(("http", "a", 80), a, now=0)
    assert pool.release(("http", "b", 80), b, now=0)
    assert pool.acquire(("http", "a", 80)) is a
    assert pool.acquire(("http", "a", 80)) is None


def test_sweep_expires_only_old_and_dead() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    old, fresh, dead = Conn(), Conn(), Conn()
    pool.release("k", old, now=0)
    pool.release("k", fresh, now=8)
    pool.release("j", dead, now=8)
    dead.usable = False
    expired = pool.sweep(now=12)
    assert set(map(id, expired)) == {id(old), id(dead)}
    assert pool.acquire("k") is fresh
    assert pool.idle_count() == 0


def test_discard_and_drain() -> None:
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    a, b = Conn(), Conn()
    pool.release("k", a, now=0)
    pool.release("k", b, now=0)
    pool.discard("k", a)
    assert pool.drain() == [b]
    assert pool.idle_count() == 0


def test_only_idle_ready_connections_are_parked() -> None:
    """A connection still paused for a slow client (or still attached) is refused: the caller closes it."""
    pool: Pool[Conn] = Pool(max_idle=8, idle_timeout=10)
    paused = Conn(idle_ready=False)
    assert not pool.release("k", paused, now=0)
    assert pool.idle_count() == 0 and pool.acquire("k") is None
