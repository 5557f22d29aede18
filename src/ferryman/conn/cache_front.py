"""The cache's per-process front: the entry index, fills in flight, invalidation, commits.

No client here: `cache_flow.py` (one client's exchange: look up, serve, validate) builds
on `CacheFront`, and a background fill (`background_fill.py`) needs only this part.

Rules it owns:
- every fill in flight is registered per key, so an invalidation (PURGE, admin
  purge, an unsafe method) marks it and it stores nothing;
- a store failure never fails the request: a commit that fails is a miss;
- a 304 to a revalidation freshens the indexed entry and the store's meta, unless the
  entry was replaced meanwhile (another process) or invalidated.

Per-request index: `CacheFront.index` maps a primary key to the entries stored under
it (one per Vary variant) as policy `Entry` values, so a lookup costs no I/O;
the body is fetched from the store only to serve it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass

from ferryman.conn.fill import Budget, Fill
from ferryman.http1.events import Headers, RequestHead
from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.index import EntryIndex
from ferryman.pipeline.cache.key import prefix_key, uri_key
from ferryman.pipeline.cache.lookup import Stored
from ferryman.pipeline.cache.memory import MemoryStore
from ferryman.pipeline.cache.passes import PassMarks
from ferryman.pipeline.cache.store import EntryMeta, Store, Writer
from ferryman.pipeline.stage import Proxy
from ferryman.upstream.dial import Resolver

log = logging.getLogger("ferryman")


# Gives back the server slot a background fill holds, with the server's verdict: True it
# answered, False it failed (counts toward passive ejection), None no verdict.  The first
# call counts; later ones do nothing.
FillRelease = Callable[[bool | None], None]

# Opens the connection of a fill to the request's next hop (the engine's `dial_fill`):
# (decision, client address, request head, protocol factory, connect timeout) ->
# (the connected protocol, the Host to send, the release of the server slot it holds
# like any request: upstream/group.py `Lease`), or None when there is nowhere to go (no
# server up, or none freed a slot within the queue timeout).
FillDial = Callable[
    [Proxy, str, RequestHead, Callable[[], asyncio.Protocol], float],
    Awaitable["tuple[asyncio.BaseProtocol, bytes, FillRelease] | None"],
]

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


INDEX_KEYS = 16_384  # keys whose heads a process keeps in memory for a disk or Redis store


class CacheFront:
    """Per-process cache state: the entry index, fills in flight, and the store."""

    def __init__(
        self, store: Store, max_object_size: int, purge_clients: ClientAcl, coalesce: bool,
        range_fill: bool = True, max_entries: int = 1_000_000, max_variants: int = 32,
        dial: FillDial | None = None, now: Callable[[], float] = time.monotonic,
        resolver: Resolver | None = None,
    ) -> None:
        self.store = store
        self.dial = dial  # opens the connection of a background fill (the engine's `dial_fill`)
        # The engine's resolver: a forward hit whose rules wait for the address resolves first.
        self.resolver = resolver
        self.now = now  # the connections' clock (conn/clock.py)
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
        self.passes = PassMarks()  # keys lately answered uncacheable: their misses do not wait
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
        self.passes.clear(key)
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

    def _stored_for(self, key: bytes, entry: policy.Entry | None) -> Stored | None:
        return None if entry is None else self.index.find(key, entry)

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

    def _drop_fill(self, state: CacheState) -> None:
        fill, state.fill = state.fill, None
        if fill is not None:
            fill.fail()
            self._end_fill(fill)

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


def purge_acl(nets: list[str]) -> ClientAcl:
    return ClientAcl(tuple(ipaddress.ip_network(n, strict=False) for n in nets))
