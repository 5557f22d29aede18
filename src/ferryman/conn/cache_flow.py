"""The CACHE phase at the connection edge: look up, serve, validate, fill, coalesce.

`pipeline/cache/policy.py` decides (RFC 9111, pure); the stores keep bytes;
this module carries the decisions out for one client connection.

Rules it owns:
- an entry is only ever served from a complete, committed body (stores publish
  atomically; a body found corrupt mid-stream closes the client connection);
- N concurrent misses (or revalidations) for one key and variant make one upstream
  fetch (the *fill*, `fill.py`); the followers stream it as it arrives, each at its
  own pace (`cache_follow.py`), and fall back to their own fetch if it turns out
  uncacheable.  A Range miss starts or joins a whole-object fill, never a second;
- every fill in flight is registered per key, so an invalidation (PURGE, admin
  purge, an unsafe method) marks it and it stores nothing;
- a store slower than the client slows the fill down (``Writer.ready``): a
  response marked ``stored`` is stored whatever the client's speed;
- a store failure never fails the request: it becomes a pass-through miss.

Per-request index: `Cache.index` maps a primary key to the entries stored under
it (one per Vary variant) as policy `Entry` values, so a lookup costs no I/O;
the body is fetched from the store only to serve it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferryman.conn.background_fill import fill_whole_object
from ferryman.conn.cache_follow import follow, follow_range, if_range_holds, range_of
from ferryman.conn.exchange import Exchange
from ferryman.conn.fill import Budget, Fill
from ferryman.errors import FerrymanError
from ferryman.http1.events import Framing, Headers, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.index import EntryIndex, selecting_fields, variant_bytes
from ferryman.pipeline.cache.key import prefix_key, request_key, uri_key
from ferryman.pipeline.cache.memory import MemoryStore
from ferryman.pipeline.cache.store import (
    BodyReader,
    BytesReader,
    CacheEntryCorrupt,
    EntryMeta,
    Store,
    Writer,
)
from ferryman.pipeline.stage import Proxy

if TYPE_CHECKING:
    from ferryman.conn.downstream import Downstream
    from ferryman.upstream.connection import UpstreamConnection

log = logging.getLogger("ferryman")

_NO_STORE_HEADERS = frozenset({b"age", b"cache-status", b"via", b"set-cookie", b"date"})



@dataclass(slots=True)
class Stored:
    entry: policy.Entry
    variant: bytes
    version: int = 0  # the store's record version this entry was read from or filled as
    block: bytes | None = None  # the stored fields as wire bytes for `block_via`, built on first hit
    block_via: bytes | None = None


@dataclass(slots=True)
class CacheState:
    """What the cache phase remembers about one exchange."""

    key: bytes
    rules: policy.Rules
    lookup: policy.Lookup | None = None
    stored: Stored | None = None  # the entry being validated
    fill: Fill | None = None
    writer: Writer | None = None
    request_time: float = 0.0
    status_detail: bytes = b""


INDEX_KEYS = 16_384  # keys whose heads a process keeps in memory for a disk or Redis store


class Cache:
    """Per-process cache front: the entry index, fills in flight, and the store."""

    def __init__(
        self, store: Store, max_object_size: int, purge_clients: ClientAcl, coalesce: bool,
        range_fill: bool = True, max_entries: int = 1_000_000, max_variants: int = 32,
    ) -> None:
        self.store = store
        self.range_fill = range_fill
        self.max_object_size = max_object_size
        self.purge_clients = purge_clients
        self.coalesce = coalesce
        self.persistent = not isinstance(store, MemoryStore)
        self.inline = store if isinstance(store, MemoryStore) else None  # hits without a task
        # Memory: the store's evictions are the index's (``on_evict``); max_entries is a backstop.
        # Disk, Redis: the index is a bounded cache of heads, reloaded from the store on demand.
        max_keys = max_entries if self.inline is not None else min(max_entries, INDEX_KEYS)
        self.index: EntryIndex[Stored] = EntryIndex(max_keys, max_variants)
        evicts = getattr(store, "on_evict", False)
        if evicts is None:
            store.on_evict = self.index.drop  # type: ignore[attr-defined]
        self.checked: set[bytes] = set()  # keys already looked for in a persistent store
        self._keys: dict[tuple[str, bytes, bytes], bytes] = {}  # (scheme, authority, target) -> key
        self.fills: dict[bytes, list[Fill]] = {}  # every fill in flight, per key
        self.fill_budget = Budget()  # memory the fills hold for their followers
        self.hits = 0
        self.misses = 0

    # -- index ----------------------------------------------------------------
    def entries(self, key: bytes) -> list[policy.Entry]:
        return [s.entry for s in self.index.all(key)]

    def remember(self, key: bytes, stored: Stored) -> None:
        for dropped in self.index.remember(key, stored):
            self.checked.discard(dropped)  # let go of: look in the store again when asked

    def forget(self, key: bytes) -> None:
        self.index.pop(key)
        self.checked.discard(key)

    def invalidate(self, key: bytes) -> None:
        """Forget ``key`` and mark its fills in flight: none of them may store what it fetched."""
        self.forget(key)
        for fill in self.fills.pop(key, ()):
            fill.invalidate()

    async def purge(self, uri_or_prefix: str, prefix: bool) -> int:
        if prefix:
            raw = prefix_key(uri_or_prefix) or uri_or_prefix.encode("latin-1")
            stale_keys = {*self.index.keys_with_prefix(raw), *(k for k in self.fills if k.startswith(raw))}
            for k in stale_keys:
                self.invalidate(k)
            return await self.store.purge_prefix(raw)
        key = uri_key(uri_or_prefix)
        if key is None:
            return 0
        self.invalidate(key)
        return await self.store.delete(key)

    def status(self) -> dict[str, object]:
        fills = sum(len(f) for f in self.fills.values())
        doc: dict[str, object] = {
            "keys": len(self.index), "hits": self.hits, "misses": self.misses, "fills": fills,
            "fill_buffer_bytes": self.fill_budget.used,
        }
        if isinstance(self.store, Sized):
            doc["entries"] = len(self.store)  # this process's entries (memory), or files it knows (disk)
        return doc

    # -- fills in flight ------------------------------------------------------
    def _fill(self, key: bytes) -> Fill:
        fill = Fill(key, self.max_object_size, self.fill_budget)
        self.fills.setdefault(key, []).append(fill)
        return fill

    def _joinable(self, key: bytes, req_headers: Headers) -> Fill | None:
        for fill in self.fills.get(key, ()):
            if fill.serves(req_headers):
                return fill
        return None

    def _end_fill(self, fill: Fill) -> None:
        fill.release()
        fills = self.fills.get(fill.key)
        if fills is not None and fill in fills:
            fills.remove(fill)
            if not fills:
                del self.fills[fill.key]

    def _background(
        self, ds: Downstream, ex: Exchange, d: Proxy, key: bytes, rules: policy.Rules,
        validate: Stored | None,
    ) -> Fill:
        """Fetch the whole object once, behind the client (a Range miss, a stale-while-revalidate
        refresh); conditional when an entry with validators is stored."""
        fill = self._fill(key)
        if validate is not None:
            e = validate.entry
            fill.set_variant(e.vary_fields, e.vary, validate.variant)
        task = fill_whole_object(ds.engine, self, fill, d, ex.head, rules, ex.client_ip, validate)
        ds.loop.create_task(task)
        return fill

    # -- request side ---------------------------------------------------------
    def on_request(self, ds: Downstream, ex: Exchange, d: Proxy, rules: policy.Rules, scheme: str) -> bool:
        """True when the cache took the exchange over (hit, follower, purge, 504)."""
        head = ex.head
        method = head.method
        authority = d.host if d.host else (head.host or b"")
        target = d.target if d.group is None else head.target
        memo = (scheme, authority, target)
        key = self._keys.get(memo)
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()  # a bounded memo of hot URLs, not an index
            key = self._keys[memo] = request_key(scheme, authority, target)
        if method == "PURGE":
            ds.loop.create_task(self._purge_request(ds, ex, key))
            return True
        if method not in ("GET", "HEAD"):
            ex.cache = CacheState(key, rules)  # for invalidation once the answer is known
            return False
        if self.persistent and key not in self.index and key not in self.checked:
            # A disk entry from before a restart (or another worker): load its meta once.
            ds.loop.create_task(self._load_then_decide(ds, ex, d, rules, key))
            return True
        return self._decide(ds, ex, d, rules, key)

    async def _load_then_decide(
        self, ds: Downstream, ex: Exchange, d: Proxy, rules: policy.Rules, key: bytes
    ) -> None:
        if len(self.checked) > self.index.max_keys:
            self.checked.clear()
        self.checked.add(key)
        for meta in await self._stored_metas(key):
            entry = policy.make_entry(
                meta.status, list(meta.request_headers), list(meta.headers),
                meta.request_time, meta.response_time, rules,
            )
            self.remember(key, Stored(entry, meta.variant, meta.version))
        if ds.closed or ex is not ds.cur:
            return
        if not self._decide(ds, ex, d, rules, key):
            ds.resume_proxy(ex)

    async def _stored_metas(self, key: bytes) -> list[EntryMeta]:
        """Every variant's meta the persistent store holds for ``key``."""
        listing = getattr(self.store, "metas", None)
        if listing is not None:
            return list(await listing(key))  # redis: every instance's variants, from the shared set
        known = getattr(self.store, "variants", None)  # disk: the variants this process indexed
        metas: list[EntryMeta] = []
        for variant in known(key) if known is not None else [b""]:
            got = await self.store.get(key, variant)
            if got is not None:
                got[1].close()
                metas.append(got[0])
        return metas

    def _decide(self, ds: Downstream, ex: Exchange, d: Proxy, rules: policy.Rules, key: bytes) -> bool:
        head = ex.head
        method = head.method
        now = time.time()
        look = policy.lookup(self.index.select(key, head.headers), method, head.headers, now, rules)
        state = ex.cache = CacheState(key, rules, look, request_time=now)
        out = look.outcome
        if out is policy.Outcome.FRESH or out is policy.Outcome.STALE_OK:
            stored = self._stored_for(key, look.entry)
            if stored is not None:
                self.hits += 1
                state.stored = stored
                ex.cache_result = "hit" if out is policy.Outcome.FRESH else "stale"
                if look.revalidate and ex.head.method == "GET" and self._joinable(key, head.headers) is None:
                    # stale-while-revalidate (RFC 5861): answer stale now, refresh once behind it.
                    self._background(ds, ex, d, key, rules, stored)
                if self.inline is not None:
                    got = self.inline.get_nowait(key, stored.variant)
                    if got is not None and got[0].version == stored.version:
                        self._send_inline(ds, ex, stored, got[1], look)
                        return True
                ds.loop.create_task(self.serve(ds, ex, stored, look, hit=True))
                return True
        if out is policy.Outcome.ONLY_IF_CACHED_MISS:
            ds.send_synthetic(ex, 504, "only-if-cached and nothing stored")
            return True
        self.misses += 1
        stale = self._stored_for(key, look.entry) if out is policy.Outcome.MUST_VALIDATE else None
        if method == "GET" and _has_range(head.headers):
            # One whole-object fill per object, whoever starts it: this Range joins the fill in
            # flight (answered from it once its bytes are there) or starts one in the background.
            fill = self._joinable(key, head.headers) if self.coalesce else None
            if fill is None and self.range_fill:
                fill = self._background(ds, ex, d, key, rules, stale)
            if fill is not None:
                fill.followers += 1
                ds.loop.create_task(follow_range(self, ds, ex, d, fill))
                return True
        if method != "GET":  # HEAD: never stored, validated as it passes
            if stale is not None:
                state.stored = stale
                d.headers = _validating(d, stale)
                ex.cache_result = "revalidate"
            return False
        fill = self._joinable(key, head.headers) if self.coalesce else None
        if fill is not None:
            fill.followers += 1
            ex.cache_result = "collapsed"
            ds.loop.create_task(follow(self, ds, ex, d, fill))
            return True
        if stale is not None:
            # One conditional request per stale entry; concurrent requests wait for it.
            state.stored = stale
            d.headers = _validating(d, stale)
            ex.cache_result = "revalidate"
            fill = state.fill = self._fill(key)
            fill.set_variant(stale.entry.vary_fields, stale.entry.vary, stale.variant)
            return False
        if _has_range(head.headers):
            return False  # a Range miss with range fills off: passed through, not stored
        state.fill = self._fill(key)
        ex.cache_result = "miss"
        return False

    def _redecide(self, ds: Downstream, ex: Exchange, d: Proxy) -> None:
        """A follower whose fill could not serve it goes through the cache phase again."""
        state = ex.cache
        if ds.closed or ex is not ds.cur or state is None:
            return
        if not self._decide(ds, ex, d, state.rules, state.key):
            ds.resume_proxy(ex)

    def _stored_for(self, key: bytes, entry: policy.Entry | None) -> Stored | None:
        return None if entry is None else self.index.find(key, entry)

    async def _purge_request(self, ds: Downstream, ex: Exchange, key: bytes) -> None:
        if not self.purge_clients.allows(ex.client_ip):
            ds.send_synthetic(ex, 403, "PURGE is not allowed from this client (rule: cache.purge_clients)")
            return
        self.invalidate(key)
        n = await self.store.delete(key)
        ds.send_synthetic(ex, 200 if n else 404, f"purged {n} entr{'y' if n == 1 else 'ies'}")

    # -- response side --------------------------------------------------------
    def on_response_head(
        self, ds: Downstream, ex: Exchange, head: ResponseHead, stored_headers: Headers
    ) -> bytes:
        """Store/fill bookkeeping for a final response; returns Cache-Status bytes to add."""
        state = ex.cache
        assert state is not None
        now = time.time()
        req = ex.head
        if req.method not in ("GET", "HEAD"):
            target = state.key.decode("latin-1")
            for uri in policy.invalidations(req.method, head.status, target, head.headers):
                k = uri_key(uri)
                if k is not None:
                    self.invalidate(k)
                    ds.loop.create_task(self.store.delete(k))
            return b""
        fwd = state.lookup.fwd if state.lookup is not None else "uri-miss"
        verdict = policy.storable(req.method, head.status, req.headers, head.headers, state.rules)
        if not verdict or ex.decision is None:
            self._drop_fill(state)
            return _status(False, fwd or "uri-miss", False, detail=verdict.reason or None)
        if state.fill is not None and state.fill.invalidated:
            # Purged or invalidated while this fetch was in flight: what it brings is not stored.
            self._drop_fill(state)
            return _status(False, fwd or "uri-miss", False, detail="invalidated")
        entry = policy.make_entry(
            head.status, req.headers, stored_headers, state.request_time, now, state.rules
        )
        variant = variant_bytes(entry.vary)
        meta = EntryMeta(
            state.key, variant, head.status, tuple(stored_headers), selecting_fields(entry, req.headers),
            state.request_time, now, head.content_length if head.content_length > 0 else 0,
        )
        writer = self.store.begin(meta)
        if writer is None:
            self._drop_fill(state)
            return _status(False, fwd or "uri-miss", False, detail="not-stored")
        state.writer = writer
        state.stored = Stored(entry, variant, writer.meta.version)
        if state.fill is not None:
            state.fill.set_variant(entry.vary_fields, entry.vary, variant)
            length = head.content_length if head.framing is Framing.LENGTH else -1
            state.fill.publish_head(head.status, head.reason, stored_headers, length)
        return _status(False, fwd or "uri-miss", True, ttl=entry.lifetime)

    def on_response_body(self, ex: Exchange, data: bytes, conn: UpstreamConnection | None = None) -> None:
        state = ex.cache
        if state is None:
            return
        writer = state.writer
        if writer is not None:
            writer.write(data)
            wait = writer.ready()
            if wait is not None:
                # The store is behind (a disk slower than the client): stop reading the
                # upstream until it catches up, so the fill completes whatever the speeds.
                _hold(conn if conn is not None else ex.up.conn, wait)
        if state.fill is not None and not state.fill.failed:
            state.fill.append(data)

    def on_response_end(self, ds: Downstream, ex: Exchange) -> None:
        state = ex.cache
        if state is None:
            return
        self._complete(state)

    def _complete(self, state: CacheState) -> None:
        """The whole body has arrived: commit it (unless invalidated meanwhile) and release the fill."""
        writer, state.writer = state.writer, None
        fill, state.fill = state.fill, None
        if fill is not None:
            fill.finish()
        if writer is not None and state.stored is not None:
            asyncio.get_running_loop().create_task(self.commit(state.key, state.stored, writer, fill))
        elif fill is not None:
            fill.set_stored(False)
            self._end_fill(fill)

    async def commit(self, key: bytes, stored: Stored, writer: Writer, fill: Fill | None) -> bool:
        if fill is not None and fill.invalidated:
            writer.abort()
            log.info("ferryman: cache fill of %s not stored: purged or invalidated meanwhile",
                     key.decode("latin-1"))
            ok = False
        else:
            try:
                ok = await writer.commit()
            except Exception:  # noqa: BLE001 - a store failure is a miss, never an error
                log.exception("ferryman: cache commit failed")
                ok = False
            if not ok:
                log.info("ferryman: cache fill of %s not stored: the store refused or lost it",
                         key.decode("latin-1"))
        if ok and fill is not None and fill.invalidated:
            await self.store.delete(key)  # invalidated while it was being published
            ok = False
        if ok:
            self.remember(key, stored)
        if fill is not None:
            fill.set_stored(ok)
            self._end_fill(fill)
        return ok

    def on_abort(self, ex: Exchange, why: str = "") -> None:
        state = ex.cache
        if state is None:
            return
        if state.writer is not None:
            state.writer.abort()
            state.writer = None
            log.info("ferryman: cache fill of %s abandoned: %s", state.key.decode("latin-1"),
                     why or ex.error or "the exchange failed")
        self._drop_fill(state)

    def _drop_fill(self, state: CacheState) -> None:
        fill, state.fill = state.fill, None
        if fill is not None:
            fill.fail()
            self._end_fill(fill)

    def takeover(self, ds: Downstream, ex: Exchange, head: ResponseHead) -> bool:
        """Answer a validated request from the entry: on 304, or on 5xx with stale-if-error."""
        if head.status == 304:
            return self.on_not_modified(ds, ex, head)
        state = ex.cache
        if head.status in policy.ERROR_STATUSES and state is not None and state.stored is not None:
            entry = state.stored.entry
            now = time.time()
            if policy.stale_if_error(entry, ex.head.headers, now, head.status):
                self._drop_fill(state)
                ex.error = f"upstream answered {head.status}; served stale"
                ex.cache_result = "stale-if-error"
                age = entry.age(now)
                look = policy.Lookup(
                    policy.Outcome.STALE_OK, entry, fwd="stale", age=age, ttl=entry.lifetime - age
                )
                ds.loop.create_task(self.serve(ds, ex, state.stored, look, hit=True))
                return True
        return False

    def continue_without_client(self, ex: Exchange) -> bool:
        """The leader's client left mid-fill: keep reading the upstream for the followers."""
        state = ex.cache
        conn = ex.up.conn
        if state is None or state.fill is None or state.fill.followers == 0 or conn is None:
            return False
        if ex.resp is None or state.writer is None:
            return False
        conn.handler = _Headless(self, ex, conn)
        conn.resume_reading()
        return True

    def on_not_modified(self, ds: Downstream, ex: Exchange, head: ResponseHead) -> bool:
        """A 304 to our own validation: freshen the entry and serve it.  False if it cannot."""
        state = ex.cache
        if state is None or state.stored is None or state.lookup is None:
            return False
        now = time.time()
        entry = policy.refresh_entry(state.stored.entry, head.headers, state.request_time, now, state.rules)
        if entry is None:
            self.forget(state.key)
            self._drop_fill(state)
            return False
        stored = self.refreshed(state.key, state.stored, entry, state.fill)
        state.fill = None
        look = policy.Lookup(policy.Outcome.FRESH, entry, fwd="stale", age=entry.age(now), ttl=entry.lifetime)
        ex.cache_result = "revalidated"
        ds.loop.create_task(self.serve(ds, ex, stored, look, hit=False, validated=True))
        return True

    def refreshed(self, key: bytes, stale: Stored, entry: policy.Entry, fill: Fill | None) -> Stored:
        """A revalidation got its 304: the entry is fresh again, for the fill's followers too."""
        stored = Stored(entry, stale.variant, stale.version)
        if fill is None or not fill.invalidated:
            self.remember(key, stored)
            asyncio.get_running_loop().create_task(self._update_meta(key, stored))
        if fill is not None:
            fill.revalidated(stored)
            self._end_fill(fill)
        return stored

    async def _update_meta(self, key: bytes, stored: Stored) -> None:
        got = await self.store.get(key, stored.variant)
        if got is None:
            return
        meta, reader = got
        reader.close()
        if meta.version != stored.version:
            return  # replaced by a newer fill (another process): not this 304's to refresh
        e = stored.entry
        new = EntryMeta(key, stored.variant, e.status, tuple(e.headers), meta.request_headers,
                        e.request_time, e.response_time, meta.body_size, stored.version)
        await self.store.update_meta(key, stored.variant, new)

    def serve_stale_on_error(self, ds: Downstream, ex: Exchange, exc: FerrymanError) -> bool:
        """RFC 5861 stale-if-error: the origin failed, a stale entry may still answer."""
        state = ex.cache
        if state is None or state.stored is None or exc.status < 500:
            return False
        entry = state.stored.entry
        now = time.time()
        if not policy.stale_if_error(entry, ex.head.headers, now, exc.status):
            return False
        self._drop_fill(state)
        ex.error = exc.detail
        ex.cache_result = "stale-if-error"
        age = entry.age(now)
        look = policy.Lookup(policy.Outcome.STALE_OK, entry, fwd="stale", age=age, ttl=entry.lifetime - age)
        ds.loop.create_task(self.serve(ds, ex, state.stored, look, hit=True))
        return True

    # -- serving --------------------------------------------------------------
    async def serve(
        self, ds: Downstream, ex: Exchange, stored: Stored, look: policy.Lookup, hit: bool,
        validated: bool = False,
    ) -> None:
        got = await self.store.get(ex.cache.key if ex.cache else b"", stored.variant)
        if got is not None and got[0].version != stored.version:
            # Another process replaced the entry since it was indexed here: its body belongs
            # to other headers.  A miss; the next request loads the new version's head.
            got[1].close()
            got = None
        if got is None:
            # Evicted or vanished between index and read: treat as a miss.
            self.forget(ex.cache.key if ex.cache else b"")
            ex.cache = None
            ds.resume_proxy(ex)
            return
        meta, reader = got
        try:
            await self._send_entry(ds, ex, stored.entry, reader, look, hit, validated)
        except CacheEntryCorrupt:
            self.forget(meta.key)
            await self.store.delete(meta.key)
            ds.abort_after_partial(ex, "cached body corrupt")
        finally:
            reader.close()

    def _send_inline(
        self, ds: Downstream, ex: Exchange, stored: Stored, reader: BytesReader, look: policy.Lookup
    ) -> None:
        """A memory hit answered inside the request callback: no task, no coroutine.

        The common case (a plain GET, nothing to strip) reuses the entry's header block
        built on its first hit, so a hit only formats Age and Cache-Status.
        """
        entry = stored.entry
        if not look.strip and ex.head.method == "GET" and not _conditional(ex.head.headers):
            plan = ex.plan
            via = plan.reverse.via if ds.reverse and plan.reverse else plan.forward.via
            if stored.block is None or stored.block_via != via:
                # the stored Age goes: the one sent is the current age (RFC 9111 4.2.3)
                hdrs = forward_response_headers(entry.headers, ex.cache.rules.serve_drop if ex.cache else
                                                policy.DEFAULT_RULES.serve_drop, via)
                stored.block = b"".join(b"%s: %s\r\n" % (n, v) for n, v in hdrs)
                stored.block_via = via
            age = int(entry.age(time.time()))
            member = policy.cache_status(True, None, False, ttl=entry.lifetime - age)
            extra = b"%sAge: %d\r\nCache-Status: %s\r\n" % (stored.block, age, member)
            ds.begin_stream(ex, entry.status, None, [], extra, True, reader.size)
            ds.stream_chunk(ex, reader.slice(0, reader.size))
            ds.end_stream(ex)
            return
        hdrs, extra, status, start, end = self._prepare(ds, ex, entry, reader.size, look, True)
        if status == 304:
            ds.write_cached(ex, 304, b"Not Modified", hdrs, extra, None, 0, 0)
        elif status == 416:
            ds.send_synthetic(
                ex, 416, "range not satisfiable", [(b"Content-Range", b"bytes */%d" % reader.size)]
            )
        else:
            body = reader.slice(start, end) if ex.head.method != "HEAD" else None
            ds.begin_stream(ex, status, b"Partial Content" if status == 206 else None, hdrs, extra,
                            body is not None, end - start)
            if body:
                ds.stream_chunk(ex, body)
            ds.end_stream(ex)

    def _prepare(
        self, ds: Downstream, ex: Exchange, entry: policy.Entry, size: int, look: policy.Lookup, hit: bool
    ) -> tuple[Headers, bytes, int, int, int]:
        """Headers, extra bytes, status and byte range for answering from ``entry``."""
        head = ex.head
        now = time.time()
        headers = policy.strip_fields(entry.headers, look.strip) if look.strip else entry.headers
        age = int(entry.age(now))
        status_member = policy.cache_status(hit, None if hit else "stale", False, ttl=entry.lifetime - age)
        plan = ex.plan
        via = plan.reverse.via if ds.reverse and plan.reverse else plan.forward.via
        drop = ex.cache.rules.serve_drop if ex.cache is not None else policy.DEFAULT_RULES.serve_drop
        hdrs = forward_response_headers(headers, drop, via)  # our Age replaces the stored one (4.2.3)
        extra = b"Age: %d\r\nCache-Status: %s\r\n" % (age, status_member)
        if policy.client_conditional_304(
            head.method, head.headers, entry.status, entry.headers, entry.response_time
        ):
            return policy.not_modified_headers(hdrs), extra, 304, 0, 0
        rng = None
        if entry.status == 200 and if_range_holds(head.headers, entry.headers):
            rng = range_of(head.headers, size)
        if rng == "bad":
            return hdrs, extra, 416, 0, 0
        if isinstance(rng, tuple):
            start, end = rng
            extra += b"Content-Range: bytes %d-%d/%d\r\n" % (start, end - 1, size)
            return hdrs, extra, 206, start, end
        return hdrs, extra, entry.status, 0, size

    async def _send_entry(
        self, ds: Downstream, ex: Exchange, entry: policy.Entry, reader: BodyReader, look: policy.Lookup,
        hit: bool, validated: bool,
    ) -> None:
        size = reader.size
        hdrs, extra, status, start, end = self._prepare(ds, ex, entry, size, look, hit)
        if status == 304:
            ds.write_cached(ex, 304, b"Not Modified", hdrs, extra, None, 0, 0)
        elif status == 416:
            ds.send_synthetic(ex, 416, "range not satisfiable", [(b"Content-Range", b"bytes */%d" % size)])
        else:
            body = None if ex.head.method == "HEAD" else reader
            reason = b"Partial Content" if status == 206 else None
            await ds.stream_cached(ex, status, reason, hdrs, extra, body, start, end)

class _Headless:
    """Upstream handler for a fill whose client is gone: the body goes to the store and followers."""

    def __init__(self, cache: Cache, ex: Exchange, conn: UpstreamConnection) -> None:
        self.cache = cache
        self.ex = ex
        self.conn = conn
        # The fill keeps the server's in-flight slot until it ends (the client's log line
        # must not give it back while the server is still sending).
        self.lease, ex.up.lease = ex.up.lease, None

    def _release(self, ok: bool) -> None:
        if self.lease is not None:
            self.lease.release(time.monotonic(), ok)

    def on_response_head(self, head: ResponseHead) -> None:
        self.upstream_failed(FerrymanError("unexpected second response head"), True)

    def on_response_body(self, data: bytes) -> None:
        self.cache.on_response_body(self.ex, data, self.conn)

    def on_response_end(self) -> None:
        conn = self.conn
        state = self.ex.cache
        if state is not None:
            self.cache._complete(state)
        self._release(True)
        if conn is not None:
            conn.close()

    def on_upgrade(self, conn: object, rest: bytes) -> None:
        self.upstream_failed(FerrymanError("unexpected upgrade"), True)

    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None:
        self._release(False)
        self.cache.on_abort(self.ex, f"upstream failed: {exc.detail}")
        self.conn.close()

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


def _hold(conn: UpstreamConnection | None, wait: asyncio.Future[None]) -> None:
    """Pause reading ``conn`` until ``wait`` is done (unless its client is paused too)."""
    transport = conn.transport if conn is not None else None
    if conn is None or transport is None or transport.is_closing():
        return
    conn.pause_reading()

    def resume(_: object) -> None:
        if conn.transport is transport and not getattr(conn.handler, "write_paused", False):
            conn.resume_reading()

    wait.add_done_callback(resume)


def _validating(d: Proxy, stale: Stored) -> Headers:
    """The request's fields with our validators in place of the client's (RFC 9111 4.3.1)."""
    drop = (b"if-none-match", b"if-modified-since")
    kept = [(n, v) for n, v in d.fields() if n.lower() not in drop]
    return kept + policy.conditional_headers(stale.entry.headers)


def _status(
    hit: bool, fwd: str | None, stored: bool, ttl: float | None = None, detail: str | None = None
) -> bytes:
    return b"Cache-Status: " + policy.cache_status(hit, fwd, stored, ttl=ttl, detail=detail) + b"\r\n"


_CONDITIONAL = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since"})


def _conditional(headers: Headers) -> bool:
    """Does the request need more than the plain stored response (ranges, client validators)?"""
    return any(n.lower() in _CONDITIONAL for n, _ in headers)


def _has_range(headers: Headers) -> bool:
    return any(n.lower() == b"range" for n, _ in headers)


def purge_acl(nets: list[str]) -> ClientAcl:
    return ClientAcl(tuple(ipaddress.ip_network(n, strict=False) for n in nets))
