"""Requests that follow a fill: served from its bytes as they arrive (the first
``fill.BUFFER`` from memory, the rest from the store once committed), from the entry a
revalidation freshened, or sent on to the origin when the fill cannot serve them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, cast

from ferryman.conn.exchange import Exchange
from ferryman.conn.fill import Fill
from ferryman.http1.events import Headers
from ferryman.http1.headers import forward_response_headers
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.lookup import Stored, if_range_holds, range_of
from ferryman.pipeline.cache.store import CacheEntryCorrupt, Store
from ferryman.pipeline.stage import Proxy

if TYPE_CHECKING:
    from ferryman.conn.client import ClientConn


class Cache(Protocol):
    """What a follower needs of the cache (conn/cache_flow.py `Cache`)."""

    store: Store

    def _redecide(self, ds: ClientConn, ex: Exchange, d: Proxy) -> None: ...

    async def serve(
        self, ds: ClientConn, ex: Exchange, stored: Stored, look: policy.Lookup, hit: bool,
        validated: bool = False,
    ) -> None: ...


def _collapsed_head(ds: ClientConn, ex: Exchange, headers: Headers) -> tuple[Headers, bytes]:
    """The fill's response fields as this client gets them, and its Cache-Status line."""
    hidden = ex.cache.rules.hidden if ex.cache is not None else frozenset()
    hdrs = forward_response_headers(headers, hidden, ex.ctx.plan.via_for(ds.reverse))
    return hdrs, b"Cache-Status: " + policy.cache_status(True, None, False, detail="collapsed") + b"\r\n"


async def follow(cache: Cache, ds: ClientConn, ex: Exchange, d: Proxy, fill: Fill) -> None:
    """Serve a coalesced request from another client's fill, as it arrives."""
    try:
        while fill.head is None and fill.usable and not fill.done:
            await fill.wait()
        if fill.not_modified and not fill.invalidated:
            _serve_refreshed(cache, ds, ex, fill)  # the revalidation was answered 304
            return
        if fill.failed or (fill.head is None and fill.usable):
            pass_through(ds, ex)  # uncacheable or broken: fetch for itself, unstored
            return
        if fill.done and fill.usable:
            # Complete, being committed: a hit once it is, else this request fetches.
            while fill.stored is None:
                await fill.wait()
            if not fill.stored:
                pass_through(ds, ex)
                return
        if not fill.serves(ex.ctx.head.headers):
            # Another variant (which gets a fill of its own), a purge, or a 304 that freshened the entry.
            cache._redecide(ds, ex, d)
            return
        assert fill.head is not None
        status, reason, headers = fill.head
        hdrs, extra = _collapsed_head(ds, ex, headers)
        length = fill.length if fill.length >= 0 else None
        ds.responder.begin_stream(ex, status, reason, hdrs, extra, ex.ctx.head.method != "HEAD", length)
        if await _pump(cache, ds, ex, fill, 0, length):
            ds.responder.end_stream(ex)
    finally:
        fill.followers -= 1


async def follow_range(cache: Cache, ds: ClientConn, ex: Exchange, d: Proxy, fill: Fill) -> None:
    """A Range request while the object's fill runs: answered from the fill once the
    fill has reached the range; passed through (not stored) when the range lies ahead."""
    try:
        while fill.head is None and fill.usable and not fill.done:
            await fill.wait()
        if fill.not_modified and not fill.invalidated:
            _serve_refreshed(cache, ds, ex, fill)
            return
        if fill.failed or (fill.head is None and fill.usable):
            pass_through(ds, ex, keep=True)
            return
        if not fill.serves(ex.ctx.head.headers):
            cache._redecide(ds, ex, d)  # a 304 freshened the entry, a purge, another variant
            return
        assert fill.head is not None
        status, reason, headers = fill.head
        rng = None
        if status == 200 and fill.length >= 0 and if_range_holds(ex.ctx.head.headers, headers):
            rng = range_of(ex.ctx.head.headers, fill.length)
        if rng == "bad":
            crange = [(b"Content-Range", b"bytes */%d" % fill.length)]
            ds.responder.send_synthetic(ex, 416, "range not satisfiable", crange)
            return
        if not isinstance(rng, tuple) or rng[0] > fill.size:
            # The fill has not got there yet: this range goes to the origin.
            pass_through(ds, ex, keep=True)
            return
        start, end = rng
        hdrs, extra = _collapsed_head(ds, ex, headers)
        extra += b"Content-Range: bytes %d-%d/%d\r\n" % (start, end - 1, fill.length)
        ex.cache_result = "collapsed"
        ds.responder.begin_stream(ex, 206, b"Partial Content", hdrs, extra, True, end - start)
        if await _pump(cache, ds, ex, fill, start, end):
            ds.responder.end_stream(ex)
    finally:
        fill.followers -= 1


def _serve_refreshed(cache: Cache, ds: ClientConn, ex: Exchange, fill: Fill) -> None:
    """A follower of a revalidation answered 304: served from the freshened entry."""
    stored = cast(Stored, fill.refreshed)
    state = ex.cache
    assert stored is not None and state is not None
    state.stored = stored
    entry = stored.entry
    now = time.time()
    look = policy.Lookup(policy.FRESH, entry, fwd="stale", age=entry.age(now), ttl=entry.lifetime)
    ex.cache_result = "revalidated"
    ds.loop.create_task(cache.serve(ds, ex, stored, look, hit=False, validated=True))


async def _pump(cache: Cache, ds: ClientConn, ex: Exchange, fill: Fill, start: int, end: int | None) -> bool:
    """Send the fill's body[start:end] (``end`` None: to its end) as it arrives; bytes past
    the fill's memory buffer come from the store once the fill is committed.  False when
    the response had to be cut (the connection is then closed)."""
    pos = start
    i = base = 0  # chunks[i] starts at body offset base
    while True:
        chunks = fill.chunks
        while i < len(chunks) and (end is None or pos < end):
            chunk = chunks[i]
            top = base + len(chunk)
            if pos < top:
                piece = chunk[pos - base : (top if end is None else min(top, end)) - base]
                if not ds.responder.stream_chunk(ex, piece if len(piece) < len(chunk) else chunk):
                    return False
                pos += len(piece)
                if ds.write_paused:
                    await ds.wait_writable()
            if pos >= top:
                i += 1
                base = top
        if end is not None and pos >= end:
            return True
        if fill.failed:
            ds.responder.abort_after_partial(ex, "coalesced fetch failed")
            return False
        if fill.done and pos >= fill.size:
            return True
        if pos >= fill.buffered and fill.size > fill.buffered:
            return await _pump_stored(cache, ds, ex, fill, pos, end)
        await fill.wait()


async def _pump_stored(
    cache: Cache, ds: ClientConn, ex: Exchange, fill: Fill, pos: int, end: int | None
) -> bool:
    """The rest of a follower's body, past the fill's memory buffer: from the store, once committed."""
    while fill.stored is None:
        await fill.wait()
    got = await cache.store.get(fill.key, fill.variant) if fill.stored else None
    if got is None:
        ds.responder.abort_after_partial(ex, "coalesced fetch not stored: the rest is not available")
        return False
    reader = got[1]
    try:
        stop = reader.size if end is None else min(end, reader.size)
        if reader.size != fill.size or pos > stop:
            ds.responder.abort_after_partial(ex, "coalesced fetch replaced in the store")
            return False
        async for chunk in reader.read_range(pos, stop):
            if not ds.responder.stream_chunk(ex, chunk):
                return False
            if ds.write_paused:
                await ds.wait_writable()
    except CacheEntryCorrupt:
        ds.responder.abort_after_partial(ex, "cached body corrupt")
        return False
    finally:
        reader.close()
    return True


def pass_through(ds: ClientConn, ex: Exchange, keep: bool = False) -> None:
    """Fetch for this request alone; unstored (``keep``: a Range, whose 206 is never stored)."""
    if not keep:
        ex.cache = None
    ex.cache_result = "miss"
    ds.responder.resume_proxy(ex)
