"""The CACHE phase at the connection edge: look up, serve, validate, fill, coalesce.

`pipeline/cache/policy.py` decides (RFC 9111, pure) and `pipeline/cache/lookup.py`
shapes the answer from an entry (pure); the stores keep bytes; `cache_front.py` holds
the per-process state (index, fills in flight, invalidation, commits); this module
carries the decisions out for one client's exchange.

Rules it owns:
- an entry is only ever served from a complete, committed body (stores publish
  atomically; a body found corrupt mid-stream closes the client connection);
- N concurrent misses (or revalidations) for one key and variant make one upstream
  fetch (the *fill*, `fill.py`); the followers stream it as it arrives, each at its
  own pace (`cache_follow.py`), and fall back to their own fetch if it turns out
  uncacheable.  A Range miss starts or joins a whole-object fill, never a second;
- a store slower than the client slows the fill down (``Writer.ready``): a
  response marked ``stored`` is stored whatever the client's speed;
- a store failure never fails the request: it becomes a pass-through miss;
- a forward request whose rules wait for the destination's address is answered from
  the cache only once the address passes them (`cache_address.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ferryman.conn.background_fill import fill_whole_object
from ferryman.conn.cache_address import admit
from ferryman.conn.cache_follow import follow, follow_range
from ferryman.conn.cache_front import CacheFront, CacheState
from ferryman.conn.exchange import Exchange
from ferryman.conn.fill import Fill
from ferryman.conn.orphan_fill import OrphanFill
from ferryman.errors import FerrymanError
from ferryman.http1.events import Framing, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.pipeline.cache import action, policy
from ferryman.pipeline.cache.action import ABANDONED, ADOPTED, ANSWERS, PASSES, PROXY, TAKEN, CacheAction
from ferryman.pipeline.cache.index import selecting_fields, variant_bytes
from ferryman.pipeline.cache.key import request_key, uri_key
from ferryman.pipeline.cache.lookup import (
    Answer,
    Stored,
    answer,
    conditional,
    has_range,
    status_field,
    validating,
)
from ferryman.pipeline.cache.store import BodyReader, BytesReader, CacheEntryCorrupt, EntryMeta
from ferryman.pipeline.stage import Proxy

if TYPE_CHECKING:
    from ferryman.conn.client import ClientConn
    from ferryman.upstream.connection import UpstreamConnection

log = logging.getLogger("ferryman")


class Cache(CacheFront):
    """The cache front plus what one client's exchange does with it (request and response side)."""

    # -- fills in flight ------------------------------------------------------
    def _background(
        self, ds: ClientConn, ex: Exchange, d: Proxy, key: bytes, rules: policy.Rules,
        validate: Stored | None,
    ) -> Fill:
        """Fetch the whole object once, behind the client (a Range miss, a stale-while-revalidate
        refresh); conditional when an entry with validators is stored."""
        fill = self._fill(key)
        if validate is not None:
            e = validate.entry
            fill.set_variant(e.vary_fields, e.vary, validate.variant)
        assert self.dial is not None
        ctx = ex.ctx
        timeouts = ctx.plan.timeouts
        task = fill_whole_object(self.dial, timeouts, self, fill, d, ctx.head, rules, ctx.client_ip, validate)
        ds.loop.create_task(task)
        return fill

    # -- request side ---------------------------------------------------------
    def on_request(
        self, ds: ClientConn, ex: Exchange, d: Proxy, rules: policy.Rules, scheme: str
    ) -> CacheAction:
        """`TAKEN` when the cache took the exchange over (hit, follower, purge, 504, a stored
        head being loaded); `PROXY` when the connection sends it upstream now."""
        head = ex.ctx.head
        method = head.method
        if d.group is None:  # forward: the origin's URL
            authority = d.host if d.host else (head.host or b"")
            target = d.target
        else:  # reverse: the client's Host and the path routed and forwarded (not its spelling)
            authority = head.host or b""
            target = d.target if d.routed is None else d.routed
        memo = (scheme, authority, target)
        key = self._keys.get(memo)
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()  # a bounded memo of hot URLs, not an index
            key = self._keys[memo] = request_key(scheme, authority, target)
        if method == "PURGE":
            ds.loop.create_task(self._purge_request(ds, ex, key))
            return TAKEN
        if method not in ("GET", "HEAD"):
            ex.cache = CacheState(key, rules)  # for invalidation once the answer is known
            return PROXY
        if self.persistent and key not in self.index and key not in self.checked:
            # A disk entry from before a restart (or another worker): load its meta once.
            ds.loop.create_task(self._load_then_decide(ds, ex, d, rules, key))
            return TAKEN
        return self._decide(ds, ex, d, rules, key)

    async def _load_then_decide(
        self, ds: ClientConn, ex: Exchange, d: Proxy, rules: policy.Rules, key: bytes
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
        if self._decide(ds, ex, d, rules, key) is PROXY:
            ds.responder.resume_proxy(ex)

    def _decide(
        self, ds: ClientConn, ex: Exchange, d: Proxy, rules: policy.Rules, key: bytes,
        admitted: bool = False,
    ) -> CacheAction:
        """Look ``key`` up for this request and act on the freshness policy's outcome
        (``admitted``: its address passed the post-resolve phases already)."""
        head = ex.ctx.head
        method = head.method
        now = time.time()
        look = policy.lookup(self.index.select(key, head.headers), method, head.headers, now, rules)
        state = ex.cache = CacheState(key, rules, look, request_time=now)
        out = look.outcome
        if out is policy.FRESH or out is policy.STALE_OK:
            stored = self._stored_for(key, look.entry)
            if stored is not None:
                if d.address_check is not None and not admitted:
                    refused = self._admit(ds, ex, d, rules, key)
                    if refused is not None:
                        return refused
                self.hits += 1
                state.stored = stored
                ex.cache_result = "hit" if out is policy.FRESH else "stale"
                if look.revalidate and head.method == "GET" and self._joinable(key, head.headers) is None:
                    # stale-while-revalidate (RFC 5861): answer stale now, refresh once behind it.
                    self._background(ds, ex, d, key, rules, stored)
                if self.inline is not None:
                    got = self.inline.get_nowait(key, stored.variant)
                    if got is not None and got[0].version == stored.version:
                        self._send_inline(ds, ex, stored, got[1], look)
                        return TAKEN
                ds.loop.create_task(self.serve(ds, ex, stored, look, hit=True))
                return TAKEN
        if out is policy.ONLY_IF_CACHED_MISS:
            ds.responder.send_synthetic(ex, 504, "only-if-cached and nothing stored")
            return TAKEN
        if d.address_check is not None and not admitted and method == "GET" and (
            (self.coalesce and self._joinable(key, head.headers) is not None)
            or (self.range_fill and has_range(head.headers))
        ):  # it would be answered from a fill, not sent on: the address first
            refused = self._admit(ds, ex, d, rules, key)
            if refused is not None:
                return refused
        self.misses += 1
        stale = self._stored_for(key, look.entry) if out is policy.MUST_VALIDATE else None
        if method == "GET" and has_range(head.headers):
            # One whole-object fill per object, whoever starts it: this Range joins the fill in
            # flight (answered from it once its bytes are there) or starts one in the background.
            fill = self._joinable(key, head.headers) if self.coalesce else None
            if fill is None and self.range_fill:
                fill = self._background(ds, ex, d, key, rules, stale)
            if fill is not None:
                fill.followers += 1
                ds.loop.create_task(follow_range(self, ds, ex, d, fill))
                return TAKEN
        if method != "GET":  # HEAD: never stored, validated as it passes
            if stale is not None:
                state.stored = stale
                d.headers = validating(d.fields(), stale)
                ex.cache_result = "revalidate"
            return PROXY
        if stale is None:
            field = self.passes.passing(key, now)
            if field is not None:
                # Lately uncacheable: straight upstream, not waiting for a fill nor examined
                # (passes.py); the answer says why, as the one that marked the URL did.
                ex.cache = None
                ex.cache_result = "miss"
                ex.cache_field = field
                return PROXY
        fill = self._joinable(key, head.headers) if self.coalesce else None
        if fill is not None:
            fill.followers += 1
            ex.cache_result = "collapsed"
            ds.loop.create_task(follow(self, ds, ex, d, fill))
            return TAKEN
        if stale is not None:
            # One conditional request per stale entry; concurrent requests wait for it.
            state.stored = stale
            d.headers = validating(d.fields(), stale)
            ex.cache_result = "revalidate"
            fill = state.fill = self._fill(key)
            fill.set_variant(stale.entry.vary_fields, stale.entry.vary, stale.variant)
            return PROXY
        if has_range(head.headers):
            return PROXY  # a Range miss with range fills off: passed through, not stored
        state.fill = self._fill(key)
        ex.cache_result = "miss"
        return PROXY

    def _admit(
        self, ds: ClientConn, ex: Exchange, d: Proxy, rules: policy.Rules, key: bytes
    ) -> CacheAction | None:
        if self.resolver is None:
            return None
        return admit(ds, ex, d, self.resolver, lambda: self._decide(ds, ex, d, rules, key, True))

    def _redecide(self, ds: ClientConn, ex: Exchange, d: Proxy) -> None:
        """A follower whose fill could not serve it goes through the cache phase again."""
        state = ex.cache
        if ds.closed or ex is not ds.cur or state is None:
            return
        if self._decide(ds, ex, d, state.rules, state.key) is PROXY:
            ds.responder.resume_proxy(ex)

    async def _purge_request(self, ds: ClientConn, ex: Exchange, key: bytes) -> None:
        if not self.purge_clients.allows(ex.ctx.client_ip):
            why = "PURGE is not allowed from this client (rule: cache.purge_clients)"
            ds.responder.send_synthetic(ex, 403, why)
            return
        self.invalidate(key)
        n = await self.store.delete(key)
        ds.responder.send_synthetic(ex, 200 if n else 404, f"purged {n} entr{'y' if n == 1 else 'ies'}")

    # -- response side --------------------------------------------------------
    def on_response_head(self, ds: ClientConn, ex: Exchange, head: ResponseHead) -> bytes:
        """Store/fill bookkeeping for a final response; returns Cache-Status bytes to add."""
        state = ex.cache
        assert state is not None
        now = time.time()
        req = ex.ctx.head
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
        if not verdict or ex.ctx.proxy is None:
            field = status_field(False, fwd or "uri-miss", False, detail=verdict.reason or None)
            if not verdict and state.fill is not None:
                self.passes.mark(state.key, now, field)  # its next misses go upstream at once
            self._drop_fill(state)
            return field
        if state.fill is not None and state.fill.invalidated:
            # Purged or invalidated while this fetch was in flight: what it brings is not stored.
            self._drop_fill(state)
            return status_field(False, fwd or "uri-miss", False, detail="invalidated")
        # What is stored: the response's end-to-end fields (no Via of ours).
        stored_headers = forward_response_headers(head.headers, head.connection_tokens, None)
        entry = policy.make_entry(
            head.status, req.headers, stored_headers, state.request_time, now, state.rules
        )
        variant = variant_bytes(entry.vary)
        meta = EntryMeta(
            state.key, variant, head.status, tuple(stored_headers), selecting_fields(entry, req.headers),
            state.request_time, now, head.content_length if head.content_length > 0 else 0,
        )
        self.passes.clear(state.key)  # storable again: its misses coalesce again
        writer = self.store.begin(meta)
        if writer is None:
            self._drop_fill(state)
            return status_field(False, fwd or "uri-miss", False, detail="not-stored")
        state.writer = writer
        state.stored = Stored(entry, variant, writer.meta.version)
        if state.fill is not None:
            state.fill.set_variant(entry.vary_fields, entry.vary, variant)
            length = head.content_length if head.framing is Framing.LENGTH else -1
            state.fill.publish_head(head.status, head.reason, stored_headers, length)
        return status_field(False, fwd or "uri-miss", True, ttl=entry.lifetime)

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

    def on_response_end(self, ds: ClientConn, ex: Exchange) -> None:
        self.complete(ex)

    def complete(self, ex: Exchange) -> None:
        """``ex``'s response ended: commit its fill."""
        state = ex.cache
        if state is not None:
            self._complete(state)

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

    def takeover(self, ds: ClientConn, ex: Exchange, head: ResponseHead) -> action.CacheReply:
        """Our validation was answered: `ANSWERS` when the entry answers the client (freshened
        by a 304, or stale on a 5xx under stale-if-error); `PASSES`: relay this response."""
        if head.status == 304:
            return self.on_not_modified(ds, ex, head)
        state = ex.cache
        if head.status in policy.ERROR_STATUSES and state is not None and state.stored is not None:
            entry = state.stored.entry
            now = time.time()
            if policy.stale_if_error(entry, ex.ctx.head.headers, now, head.status):
                self._drop_fill(state)
                ex.error = f"upstream answered {head.status}; served stale"
                ex.cache_result = "stale-if-error"
                age = entry.age(now)
                look = policy.Lookup(
                    policy.STALE_OK, entry, fwd="stale", age=age, ttl=entry.lifetime - age
                )
                ds.loop.create_task(self.serve(ds, ex, state.stored, look, hit=True))
                return ANSWERS
        return PASSES

    def continue_without_client(self, ex: Exchange) -> action.Orphan:
        """The leader's client left mid-fill: `ADOPTED` when the cache keeps reading the
        upstream for the followers (the caller lets go of the socket), else `ABANDONED`."""
        state = ex.cache
        conn = ex.up.conn
        if (state is None or state.fill is None or state.fill.followers == 0 or conn is None
                or ex.resp is None or state.writer is None):
            return ABANDONED
        conn.handler = OrphanFill(self, ex, conn)
        conn.resume_reading()
        return ADOPTED

    def on_not_modified(self, ds: ClientConn, ex: Exchange, head: ResponseHead) -> action.CacheReply:
        """A 304 to our own validation: freshen the entry and serve it (`ANSWERS`); `PASSES`
        when it cannot (the 304 is relayed)."""
        state = ex.cache
        if state is None or state.stored is None or state.lookup is None:
            return PASSES
        now = time.time()
        entry = policy.refresh_entry(state.stored.entry, head.headers, state.request_time, now, state.rules)
        if entry is None:
            self.forget(state.key)
            self._drop_fill(state)
            return PASSES
        stored = self.refreshed(state.key, state.stored, entry, state.fill)
        state.fill = None
        look = policy.Lookup(policy.FRESH, entry, fwd="stale", age=entry.age(now), ttl=entry.lifetime)
        ex.cache_result = "revalidated"
        ds.loop.create_task(self.serve(ds, ex, stored, look, hit=False, validated=True))
        return ANSWERS

    def serve_stale_on_error(self, ds: ClientConn, ex: Exchange, exc: FerrymanError) -> action.CacheReply:
        """RFC 5861 stale-if-error: the origin failed (``exc.origin_failure``: never one of
        our refusals), a stale entry may still answer (`ANSWERS`); else `PASSES`."""
        state = ex.cache
        if state is None or state.stored is None or not exc.origin_failure:
            return PASSES
        entry = state.stored.entry
        now = time.time()
        if not policy.stale_if_error(entry, ex.ctx.head.headers, now, exc.status):
            return PASSES
        self._drop_fill(state)
        ex.error = exc.detail
        ex.cache_result = "stale-if-error"
        age = entry.age(now)
        look = policy.Lookup(policy.STALE_OK, entry, fwd="stale", age=age, ttl=entry.lifetime - age)
        ds.loop.create_task(self.serve(ds, ex, state.stored, look, hit=True))
        return ANSWERS

    # -- serving --------------------------------------------------------------
    async def serve(
        self, ds: ClientConn, ex: Exchange, stored: Stored, look: policy.Lookup, hit: bool,
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
            ds.responder.resume_proxy(ex)
            return
        meta, reader = got
        try:
            await self._send_entry(ds, ex, stored.entry, reader, look, hit, validated)
        except CacheEntryCorrupt:
            self.forget(meta.key)
            await self.store.delete(meta.key)
            ds.responder.abort_after_partial(ex, "cached body corrupt")
        finally:
            reader.close()

    def _send_inline(
        self, ds: ClientConn, ex: Exchange, stored: Stored, reader: BytesReader, look: policy.Lookup
    ) -> None:
        """A memory hit answered inside the request callback: no task, no coroutine.

        The common case (a plain GET, nothing to strip) reuses the entry's header block
        built on its first hit, so a hit only formats Age and Cache-Status.
        """
        entry = stored.entry
        if not look.strip and ex.ctx.head.method == "GET" and not conditional(ex.ctx.head.headers):
            via = ex.ctx.plan.via_for(ds.reverse)
            if stored.block is None or stored.block_via != via:
                # the stored Age goes: the one sent is the current age (RFC 9111 4.2.3)
                hdrs = forward_response_headers(entry.headers, ex.cache.rules.serve_drop if ex.cache else
                                                policy.DEFAULT_RULES.serve_drop, via)
                stored.block = b"".join(b"%s: %s\r\n" % (n, v) for n, v in hdrs)
                stored.block_via = via
            age = int(entry.age(time.time()))
            member = policy.cache_status(True, None, False, ttl=entry.lifetime - age)
            extra = b"%sAge: %d\r\nCache-Status: %s\r\n" % (stored.block, age, member)
            ds.responder.write_whole(ex, entry.status, None, [], extra, reader.slice(0, reader.size))
            return
        hdrs, extra, status, start, end = self._prepare(ds, ex, entry, reader.size, look, True)
        if status == 304:
            ds.responder.write_cached(ex, 304, b"Not Modified", hdrs, extra, None, 0, 0)
        elif status == 416:
            ds.responder.send_synthetic(
                ex, 416, "range not satisfiable", [(b"Content-Range", b"bytes */%d" % reader.size)]
            )
        else:
            body = reader.slice(start, end) if ex.ctx.head.method != "HEAD" else None
            reason = b"Partial Content" if status == 206 else None
            if body is None:
                ds.responder.begin_stream(ex, status, reason, hdrs, extra, False, end - start)
                ds.responder.end_stream(ex)
            else:
                ds.responder.write_whole(ex, status, reason, hdrs, extra, body)

    def _prepare(
        self, ds: ClientConn, ex: Exchange, entry: policy.Entry, size: int, look: policy.Lookup, hit: bool
    ) -> Answer:
        """Headers, extra bytes, status and byte range for answering from ``entry``."""
        via = ex.ctx.plan.via_for(ds.reverse)
        drop = ex.cache.rules.serve_drop if ex.cache is not None else policy.DEFAULT_RULES.serve_drop
        return answer(ex.ctx.head.method, ex.ctx.head.headers, entry, size, look, hit, via, drop, time.time())

    async def _send_entry(
        self, ds: ClientConn, ex: Exchange, entry: policy.Entry, reader: BodyReader, look: policy.Lookup,
        hit: bool, validated: bool,
    ) -> None:
        size = reader.size
        hdrs, extra, status, start, end = self._prepare(ds, ex, entry, size, look, hit)
        if status == 304:
            ds.responder.write_cached(ex, 304, b"Not Modified", hdrs, extra, None, 0, 0)
        elif status == 416:
            unsatisfied = [(b"Content-Range", b"bytes */%d" % size)]
            ds.responder.send_synthetic(ex, 416, "range not satisfiable", unsatisfied)
        else:
            body = None if ex.ctx.head.method == "HEAD" else reader
            reason = b"Partial Content" if status == 206 else None
            await ds.responder.stream_cached(ex, status, reason, hdrs, extra, body, start, end)

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


