"""The memory cache tier: an in-process LRU bounded by what its entries really cost.

An entry costs its body plus its key, variant and header fields with their measured
overheads (``entry_cost``); past ``max_size``, ``max_entries`` or ``max_variants`` for
one key, the least recently used entries go first, and ``on_evict`` is told of each
(the per-process index follows).  get, put and evict are O(1) on an ``OrderedDict``.
Bodies being written are not counted until commit (each is bounded by
``max_object_size``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ferryman.pipeline.cache.lru import LruIndex, Slot
from ferryman.pipeline.cache.store import (
    BodyReader,
    BufferedWriter,
    BytesReader,
    EntryMeta,
    Writer,
    entry_cost,
    meta_cost,
    new_version,
)

if TYPE_CHECKING:
    from ferryman.pipeline.cache.store import Store


@dataclass(frozen=True, slots=True)
class _MemEntry:
    meta: EntryMeta
    body: bytes


class MemoryStore:
    """In-process LRU bounded by what its entries really cost (``entry_cost``), by a number of
    entries, and by a number of variants per key."""

    def __init__(
        self, max_bytes: int, max_object_size: int, *, max_entries: int = 1_000_000, max_variants: int = 32
    ) -> None:
        self.max_object_size = max_object_size
        self._lru: LruIndex[_MemEntry] = LruIndex(max_bytes, max_entries, max_variants)
        self._writers: set[_MemoryWriter] = set()
        self._closed = False
        self.on_evict: Callable[[bytes, bytes], None] | None = None  # told of every entry evicted

    @property
    def used_bytes(self) -> int:
        return self._lru.used

    def __len__(self) -> int:
        return len(self._lru)

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        return self.get_nowait(key, variant)

    def get_nowait(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BytesReader] | None:
        """The same as `get` without a coroutine: memory hits are answered inline."""
        entry = self._lru.get(key, variant)
        if entry is None:
            return None
        return entry.meta, BytesReader(entry.body)

    def begin(self, meta_without_size: EntryMeta) -> Writer | None:
        meta = meta_without_size
        if self._closed or meta.body_size > self.max_object_size:
            return None
        if meta_cost(meta) > self._lru.max_bytes:
            return None
        writer = _MemoryWriter(self, replace(meta, version=new_version()))
        self._writers.add(writer)
        return writer

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        entry = self._lru.get(key, variant, touch=False)
        if entry is None or (meta.version and meta.version != entry.meta.version):
            return
        old = entry.meta
        meta = replace(meta, key=key, variant=variant, body_size=old.body_size, version=old.version)
        self._evicted(self._lru.put(key, variant, _MemEntry(meta, entry.body), entry_cost(meta)))

    async def delete(self, key: bytes) -> int:
        self._abort_writers(lambda k: k == key)
        return len(self._lru.pop_key(key))

    async def purge_prefix(self, prefix: bytes) -> int:
        self._abort_writers(lambda k: k.startswith(prefix))
        return sum(len(self._lru.pop_key(k)) for k in self._lru.keys_with_prefix(prefix))

    async def close(self) -> None:
        self._closed = True
        self._abort_writers(lambda k: True)
        self._lru.clear()

    def _abort_writers(self, match: _KeyMatch) -> None:
        # A fill that started before a purge must not publish the content purged.
        for writer in list(self._writers):
            if match(writer.meta.key):
                writer.abort()

    def _publish(self, meta: EntryMeta, body: bytes) -> bool:
        meta = replace(meta, body_size=len(body))
        cost = entry_cost(meta)
        if cost > self._lru.max_bytes:
            return False
        self._evicted(self._lru.put(meta.key, meta.variant, _MemEntry(meta, body), cost))
        return True

    def _evicted(self, gone: list[tuple[Slot, _MemEntry]]) -> None:
        if self.on_evict is not None:
            for (key, variant), _ in gone:
                self.on_evict(key, variant)


class _KeyMatch(Protocol):
    def __call__(self, key: bytes, /) -> bool: ...


class _MemoryWriter(BufferedWriter):
    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore, meta: EntryMeta) -> None:
        super().__init__(store._writers, store.max_object_size, meta)
        self._store = store

    async def commit(self) -> bool:
        body = self._take()
        return body is not None and self._store._publish(self.meta, body)


if TYPE_CHECKING:

    def _conforms(store: MemoryStore, reader: BytesReader) -> tuple[Store, BodyReader]:
        return store, reader
