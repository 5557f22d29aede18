"""The cache phase's contract at the connection edge: `Cache.on_request` says `TAKEN`
(the cache answers, or sends the request on itself) or `PROXY` (the connection goes
upstream now), never a bool; one test per branch.

Fake transports, as in test_downstream.py: the upstream is a real `UpstreamConnection`
with a fake transport parked in the pool, so a request that goes upstream is written
to it inside the test's call.  The cache's own tasks (purge, a disk load, a follower)
are awaited by polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ferryman.config.compile import compile_config
from ferryman.config.load import load_text, normalise
from ferryman.conn.cache_flow import Cache
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.pipeline.cache.action import PROXY, TAKEN, CacheAction
from tests.protocol.test_downstream import client, park_upstream


class Recorded:
    """What `on_request` and `_decide` returned, in order, and the exchange's cache result."""

    def __init__(self, cache: Cache) -> None:
        self.on_request: list[CacheAction] = []
        self.decide: list[CacheAction] = []
        self.results: list[str | None] = []
        on_request, decide = cache.on_request, cache._decide

        def spy_on_request(ds: Any, ex: Exchange, *rest: Any) -> CacheAction:
            out = on_request(ds, ex, *rest)
            self.on_request.append(out)
            self.results.append(ex.cache_result)
            return out

        def spy_decide(*args: Any) -> CacheAction:
            out = decide(*args)
            self.decide.append(out)
            return out

        cache.on_request = spy_on_request  # type: ignore[method-assign]
        cache._decide = spy_decide  # type: ignore[method-assign]


async def cached_engine(extra: str = "") -> Engine:
    text = "cache: {store: memory}\n" if not extra else extra
    plan = compile_config(normalise(load_text(text, "<test>")), "<test>")
    eng = Engine(plan)
    eng.log.enabled = False
    await eng.open_cache(plan)
    assert eng.cache is not None
    return eng


async def shut(eng: Engine) -> None:
    if eng.cache is not None:
        await eng.cache.store.close()
    eng.close()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = await cached_engine()
    yield eng
    await shut(eng)


def spy(engine: Engine) -> Recorded:
    assert engine.cache is not None
    return Recorded(engine.cache)


def request(method: bytes = b"GET", path: bytes = b"/a", extra: bytes = b"") -> bytes:
    return b"%s http://origin.test%s HTTP/1.1\r\nHost: origin.test\r\n%s\r\n" % (method, path, extra)


FRESH = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 2\r\n\r\nhi"
# Stored, but to be validated before each use: a later GET is a conditional request upstream.
MUST_VALIDATE = b'HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nETag: "v1"\r\nContent-Length: 2\r\n\r\nhi'


async def until(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def store(engine: Engine, response: bytes, path: bytes = b"/a") -> None:
    """One miss through the cache, answered by ``response`` and committed."""
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(request(path=path))
    assert up_tr.take().startswith(b"GET " + path)
    up.data_received(response)
    assert tr.take().endswith(b"\r\n\r\nhi")
    cache = engine.cache
    assert cache is not None
    await until(lambda: not cache.fills and len(cache.index) == 1)  # the commit is a task


async def test_plain_miss_goes_upstream(engine: Engine) -> None:
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(request())
    assert rec.on_request == [PROXY] and rec.results == ["miss"]
    assert up_tr.take().startswith(b"GET /a HTTP/1.1\r\n")


async def test_fresh_hit_is_taken_and_never_goes_upstream(engine: Engine) -> None:
    await store(engine, FRESH)
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(request())
    assert rec.on_request == [TAKEN] and rec.results == ["hit"]
    out = tr.take()  # a memory hit is answered inside the call
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    assert up_tr.take() == b""


async def test_only_if_cached_miss_is_taken_with_504(engine: Engine) -> None:
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(request(extra=b"Cache-Control: only-if-cached\r\n"))
    assert rec.on_request == [TAKEN]
    assert tr.take().startswith(b"HTTP/1.1 504 ")
    assert up_tr.take() == b""


async def test_purge_is_taken(engine: Engine) -> None:
    await store(engine, FRESH)
    rec = spy(engine)
    ds, tr = client(engine)
    ds.data_received(request(b"PURGE"))
    assert rec.on_request == [TAKEN]
    await until(lambda: bytes(tr.out).startswith(b"HTTP/1.1 200 "))
    assert b"purged 1 entry" in tr.take()


async def test_unsafe_method_goes_upstream_watched_for_invalidation(engine: Engine) -> None:
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(request(b"POST", extra=b"Content-Length: 0\r\n"))
    assert rec.on_request == [PROXY]
    assert ds.cur is not None and ds.cur.cache is not None  # kept to invalidate on the answer
    assert up_tr.take().startswith(b"POST /a ")


async def test_head_goes_upstream_and_validates_a_stale_entry(engine: Engine) -> None:
    await store(engine, MUST_VALIDATE)
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(request(b"HEAD"))
    assert rec.on_request == [PROXY] and rec.results == ["revalidate"]
    assert b'If-None-Match: "v1"' in up_tr.take()


async def test_stale_get_goes_upstream_conditional(engine: Engine) -> None:
    await store(engine, MUST_VALIDATE)
    rec = spy(engine)
    _, up_tr = park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(request())
    assert rec.on_request == [PROXY] and rec.results == ["revalidate"]
    assert b'If-None-Match: "v1"' in up_tr.take()


async def test_concurrent_miss_is_taken_as_a_follower(engine: Engine) -> None:
    rec = spy(engine)
    leader_up, leader_tr = park_upstream(engine)
    ds1, tr1 = client(engine)
    ds1.data_received(request())
    ds2, tr2 = client(engine)
    ds2.data_received(request())
    assert rec.on_request == [PROXY, TAKEN] and rec.results == ["miss", "collapsed"]
    assert leader_tr.take().startswith(b"GET /a ")
    leader_up.data_received(FRESH)
    assert tr1.take().endswith(b"\r\n\r\nhi")
    await until(lambda: bytes(tr2.out).endswith(b"\r\n\r\nhi"))


async def test_range_joining_a_fill_is_taken(engine: Engine) -> None:
    rec = spy(engine)
    leader_up, _ = park_upstream(engine)
    ds1, _ = client(engine)
    ds1.data_received(request())
    ds2, tr2 = client(engine)
    ds2.data_received(request(extra=b"Range: bytes=1-1\r\n"))
    assert rec.on_request == [PROXY, TAKEN]
    leader_up.data_received(FRESH)
    await until(lambda: bytes(tr2.out).endswith(b"\r\n\r\ni"))
    assert tr2.take().startswith(b"HTTP/1.1 206 ")


async def test_range_miss_without_range_fill_goes_upstream() -> None:
    engine = await cached_engine("cache: {store: memory, range_fill: false}\n")
    try:
        rec = spy(engine)
        _, up_tr = park_upstream(engine)
        ds, _ = client(engine)
        ds.data_received(request(extra=b"Range: bytes=0-0\r\n"))
        assert rec.on_request == [PROXY]
        assert b"Range: bytes=0-0" in up_tr.take()
    finally:
        await shut(engine)


async def test_persistent_store_load_is_taken_then_decided(tmp_path: Path) -> None:
    """A disk store: the first sight of a key is taken (its stored head is loaded off the
    request callback); the load's own decision (a miss: `PROXY`) sends the request on."""
    engine = await cached_engine(f"cache: {{store: disk, path: {str(tmp_path)!r}}}\n")
    try:
        rec = spy(engine)
        up, up_tr = park_upstream(engine)
        ds, tr = client(engine)
        ds.data_received(request())
        assert rec.on_request == [TAKEN] and rec.decide == []
        await until(lambda: bool(up_tr.out))
        assert rec.decide == [PROXY]
        assert up_tr.take().startswith(b"GET /a ")
        up.data_received(FRESH)
        await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
        tr.take()
        cache = engine.cache
        assert cache is not None
        await until(lambda: not cache.fills and len(cache.index) == 1)
        # Known now: a hit from disk, served by a task (not inline).
        ds2, tr2 = client(engine)
        ds2.data_received(request())
        assert rec.on_request == [TAKEN, TAKEN] and rec.decide == [PROXY, TAKEN]
        assert rec.results[-1] == "hit"
        await until(lambda: bytes(tr2.out).endswith(b"\r\n\r\nhi"))
        assert up_tr.take() == b""
    finally:
        await shut(engine)


async def test_follower_of_a_purged_fill_decides_again_and_goes_upstream(engine: Engine) -> None:
    """A follower whose fill can no longer serve it goes through the cache phase again
    (`_redecide`): the entry and its fill are gone, so `PROXY`, and it fetches for itself."""
    rec = spy(engine)
    _, leader_tr = park_upstream(engine)
    ds1, _ = client(engine)
    ds1.data_received(request())
    ds2, _ = client(engine)
    ds2.data_received(request())
    assert leader_tr.take().startswith(b"GET /a ")
    _, follower_tr = park_upstream(engine)
    purger, purged = client(engine)
    purger.data_received(request(b"PURGE"))
    assert rec.on_request == [PROXY, TAKEN, TAKEN] and rec.decide == [PROXY, TAKEN]
    await until(lambda: bool(follower_tr.out))
    assert rec.decide == [PROXY, TAKEN, PROXY]
    assert follower_tr.take().startswith(b"GET /a ")
    await until(lambda: bytes(purged.out).startswith(b"HTTP/1.1 404 "))  # nothing was stored yet
