"""Cache storage tiers: the one interface the cache phase talks to, and the memory LRU.

The cache phase decides (RFC 9111, in ``policy.py``); a store only keeps bytes.
Every tier offers the same four moves, so the engine never knows which one it has:

    get(key, variant)      -> (EntryMeta, BodyReader) or None (a miss, whatever the reason)
    begin(meta)            -> Writer or None (won't store: too big, disabled, disk full)
      writer.write(chunk)     while the body streams to the client; never blocks the loop
      writer.ready()          None, or a future to await before reading more of the body
      writer.commit()         publish atomically; only a complete body is ever visible
      writer.abort()          client gone, upstream truncated, object too big
    update_meta(...)       after a 304: new headers and times, same body (and version)
    delete(key) / purge_prefix(prefix) / close()

Rules every tier keeps:

* A store never raises into the request path for a storage failure: it reports a
  miss, refuses to store, or returns ``False`` from ``commit``.  The one exception
  is a body found corrupt *while it streams* (disk): ``read_range`` raises
  ``CacheEntryCorrupt`` instead of finishing, so the consumer can tell a cut
  response from a complete one and close the connection.
* ``key`` is the primary cache key; ``variant`` is the secondary key computed from
  the fields a response's ``Vary`` names (``b""`` when it has none).  One key may
  hold several variants; ``delete`` and ``purge_prefix`` remove all of them.
* A reader owns what it reads: an entry evicted, replaced or deleted after ``get``
  still streams to the end for the reader that already holds it.
* ``max_object_size`` bounds the body; a writer past it aborts itself.  A
  ``body_size`` in the meta handed to ``begin`` is taken as a hint (a
  Content-Length): above the limit, ``begin`` refuses at once.  Completeness is
  the caller's call (it aborts on a truncated upstream body); the store keeps the
  number of bytes actually written as ``body_size``.

The memory tier is an LRU bounded by bytes: an entry costs its body plus its key,
variant and header bytes (``entry_cost``); get, put and evict are O(1) on an
``OrderedDict``.  Bodies being written are not counted until commit (each is
bounded by ``max_object_size``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from ferryman.errors import FerrymanError

log = logging.getLogger("ferryman")

CHUNK: Final = 256 * 1024
LOG_EVERY: Final = 60.0  # seconds between two logged errors of one store  # the largest piece a reader yields
# What an entry really costs in memory beyond its bytes (measured with tracemalloc on
# CPython 3.11, for an entry of the memory tier together with its line in the
# per-process index): a header field is a tuple and two bytes objects (~144 B besides
# its name and value); an entry is its meta, index and LRU records, a policy Entry and
# the objects they hold (~1 KiB).  Response fields count twice: a hit keeps them as a
# ready-made header block too.
FIELD_OVERHEAD: Final = 144
ENTRY_OVERHEAD: Final = 1024


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What a store keeps beside the body: enough to rebuild and revalidate the response."""

    key: bytes  # primary cache key
    variant: bytes  # secondary (Vary) key, b"" when none
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    request_headers: tuple[tuple[bytes, bytes], ...]  # the selecting request fields (for Vary)
    request_time: float  # wall clock, seconds (RFC 9111 4.2.3 age calculation)
    response_time: float
    body_size: int  # bytes stored; in begin(): a hint, -1 when unknown
    # The stored record's identity (head and body are one versioned record): a random
    # number given by ``begin`` to each fill and kept by ``update_meta`` (the body is the
    # same).  A reader that built its view of an entry from one version and is handed
    # another by ``get`` must treat it as a miss.  0: not assigned yet / any version.
    version: int = 0


def new_version() -> int:
    """A fresh record version: random, so processes sharing a store never hand out the same one
    (and always 19 digits, so an entry's stored size does not depend on it)."""
    return secrets.randbits(62) | 1 << 62


class CacheEntryCorrupt(FerrymanError):
    """A stored body failed its checksum (or was cut short) while it was being served.

    Raised by ``BodyReader.read_range`` before the last bytes are handed out, so a
    corrupt entry is never delivered as complete.  The head has usually been sent
    by then: the connection must be closed, not answered.
    """

    status = 500
    source = "internal"


class BodyReader(Protocol):
    """A stored body, ready to stream.  Holds what it needs: eviction cannot cut it short."""

    size: int  # body length
    offset: int  # where the body starts in the file named by path() (0 in memory)

    def read_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield body[start:end] in chunks of at most ``CHUNK`` bytes (an async generator).

        May raise ``CacheEntryCorrupt`` (disk) instead of yielding the last chunk.
        """
        ...

    def path(self) -> str | None:
        """The file holding the body, once its checksum is known good; None otherwise (memory)."""
        ...

    def fileno(self) -> int | None:
        """A descriptor of that same file for ``sendfile`` (at ``offset``), or None.

        Prefer it to re-opening ``path()``: another worker may have replaced or
        evicted the file since ``get``; the descriptor still reads this version.
        """
        ...

    def close(self) -> None:
        """Release the descriptor early.  Optional: dropping the reader does it too."""
        ...


class Writer(Protocol):
    """A body being stored while it streams to the client."""

    meta: EntryMeta  # what commit publishes, with the version ``begin`` gave it

    def write(self, data: bytes) -> None:
        """Buffer or hand off ``data``; never blocks.  Past ``max_object_size``: aborts."""
        ...

    def ready(self) -> asyncio.Future[None] | None:
        """Flow control: None when the writer can take more now, else a future that is done
        once it can.  The fill stops reading its upstream until then, so a store slower than
        the client slows the fill down instead of losing the entry."""
        ...

    async def commit(self) -> bool:
        """Publish atomically.  False (never an exception) when nothing was stored."""
        ...

    def abort(self) -> None:
        """Discard whatever was written.  Idempotent; a later commit returns False."""
        ...


class Store(Protocol):
    """One cache tier.  Every method is safe to call at any time; none raises for I/O errors."""

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None: ...

    def begin(self, meta_without_size: EntryMeta) -> Writer | None: ...

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        """New head for the stored body (after a 304), only if ``meta.version`` (when not 0)
        is still the stored version: a newer fill by another process wins."""
        ...

    async def delete(self, key: bytes) -> int: ...

    async def purge_prefix(self, prefix: bytes) -> int: ...

    async def close(self) -> None: ...


class BadMeta(ValueError):
    """Stored meta that does not decode: the entry is corrupt."""


def encode_meta(meta: EntryMeta) -> bytes:
    """The meta as compact JSON (byte strings as latin-1 text), shared by the disk and redis tiers."""

    def text(pairs: tuple[tuple[bytes, bytes], ...]) -> list[list[str]]:
        return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in pairs]

    doc = {
        "k": meta.key.decode("latin-1"),
        "v": meta.variant.decode("latin-1"),
        "s": meta.status,
        "h": text(meta.headers),
        "q": text(meta.request_headers),
        "t0": meta.request_time,
        "t1": meta.response_time,
        "n": meta.version,
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def decode_meta(data: bytes, body_len: int) -> EntryMeta:
    def pairs(items: Any) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in items)

    try:
        doc = json.loads(data)
        return EntryMeta(
            key=doc["k"].encode("latin-1"),
            variant=doc["v"].encode("latin-1"),
            status=int(doc["s"]),
            headers=pairs(doc["h"]),
            request_headers=pairs(doc["q"]),
            request_time=float(doc["t0"]),
            response_time=float(doc["t1"]),
            body_size=body_len,
            version=int(doc["n"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # UnicodeError is a ValueError
        raise BadMeta(f"bad meta: {exc!r}") from None


def meta_cost(meta: EntryMeta) -> int:
    """Memory an entry's meta costs: key, variant, every header field, the fixed overhead."""
    fields = sum(2 * (len(n) + len(v)) + FIELD_OVERHEAD for n, v in meta.headers)
    fields += sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in meta.request_headers)
    return ENTRY_OVERHEAD + len(meta.key) + len(meta.variant) + fields


def entry_cost(meta: EntryMeta) -> int:
    """What an entry costs in the memory tier: meta plus body."""
    return meta_cost(meta) + max(meta.body_size, 0)


def check_range(start: int, end: int, size: int) -> None:
    if not 0 <= start <= end <= size:
        raise ValueError(f"range {start}-{end} outside a body of {size} bytes")


class BytesReader:
    """A body held in memory (the memory tier, and small disk bodies read whole)."""

    __slots__ = ("_body", "size", "offset")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.size = len(body)
        self.offset = 0

    def slice(self, start: int, end: int) -> bytes:
        check_range(start, end, self.size)
        return self._body if start == 0 and end == self.size else self._body[start:end]

    async def read_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        check_range(start, end, self.size)
        for pos in range(start, end, CHUNK):
            yield self._body[pos : min(pos + CHUNK, end)]

    def path(self) -> str | None:
        return None

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        return None


V = TypeVar("V")
Slot = tuple[bytes, bytes]  # (key, variant)


class LruIndex(Generic[V]):
    """(key, variant) -> value with a byte cost, least recently used first.

    Bounded three ways: total cost ``max_bytes``, ``max_entries`` slots, and
    ``max_variants`` variants per key (past it, the key's least recently used variant
    goes).  ``touch``, ``put``, ``pop`` and each eviction are O(1) (``OrderedDict``);
    the variants of a key are listed (in their own LRU order) only for keys that have
    a Vary variant, so a plain URL costs no second table.  Both tiers use it: memory
    for its entries, disk for its index of files.
    """

    def __init__(self, max_bytes: int, max_entries: int = 1 << 62, max_variants: int = 1 << 62) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max(1, max_entries)
        self.max_variants = max(1, max_variants)
        self.used = 0
        self._items: OrderedDict[Slot, tuple[V, int]] = OrderedDict()
        self._variants: dict[bytes, dict[bytes, None]] = {}  # keys with a Vary variant: all variants

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Slot]:
        """Slots, least recently used first."""
        return iter(list(self._items))

    def get(self, key: bytes, variant: bytes, *, touch: bool = True) -> V | None:
        item = self._items.get((key, variant))
        if item is None:
            return None
        if touch:
            self._items.move_to_end((key, variant))
            listed = self._variants.get(key)
            if listed is not None:
                del listed[variant]
                listed[variant] = None
        return item[0]

    def put(self, key: bytes, variant: bytes, value: V, cost: int) -> list[tuple[Slot, V]]:
        """Insert as most recent (replacing the slot); return what was evicted to fit."""
        self.pop(key, variant)
        evicted: list[tuple[Slot, V]] = []
        listed = self._variants.get(key)
        if listed is None and variant:
            listed = self._variants[key] = {}
            if (key, b"") in self._items:
                listed[b""] = None
        if listed is not None:
            while len(listed) >= self.max_variants:
                slot = (key, next(iter(listed)))
                evicted.append((slot, self._remove(slot)))
            listed = self._variants.setdefault(key, {})
            listed[variant] = None
        self._items[(key, variant)] = (value, cost)
        self.used += cost
        return evicted + self.evict()

    def evict(self) -> list[tuple[Slot, V]]:
        evicted: list[tuple[Slot, V]] = []
        while (self.used > self.max_bytes or len(self._items) > self.max_entries) and self._items:
            slot = next(iter(self._items))
            evicted.append((slot, self._remove(slot)))
        return evicted

    def pop(self, key: bytes, variant: bytes) -> V | None:
        if (key, variant) not in self._items:
            return None
        return self._remove((key, variant))

    def pop_key(self, key: bytes) -> list[V]:
        return [self._remove((key, v)) for v in self.variants(key)]

    def variants(self, key: bytes) -> list[bytes]:
        listed = self._variants.get(key)
        if listed is not None:
            return list(listed)
        return [b""] if (key, b"") in self._items else []

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return list(dict.fromkeys(k for k, _ in self._items if k.startswith(prefix)))

    def clear(self) -> None:
        self._items.clear()
        self._variants.clear()
        self.used = 0

    def _remove(self, slot: Slot) -> V:
        value, cost = self._items.pop(slot)
        self.used -= cost
        listed = self._variants.get(slot[0])
        if listed is not None:
            listed.pop(slot[1], None)
            if not listed:
                del self._variants[slot[0]]
        return value


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


class BufferedWriter:
    """A fill held in memory until commit (the memory and redis tiers; disk streams to a file).

    Past ``limit`` bytes it aborts itself; ``_take`` closes it and hands over the body.
    """

    __slots__ = ("_writers", "_limit", "meta", "_chunks", "_size", "_open")

    def __init__(self, writers: set[Any], limit: int, meta: EntryMeta) -> None:
        self._writers = writers  # the store's fills in flight, so a purge can abort this one
        self._limit = limit
        self.meta = meta
        self._chunks: list[bytes] = []
        self._size = 0
        self._open = True

    def write(self, data: bytes) -> None:
        if not self._open:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.abort()
            return
        self._chunks.append(bytes(data))

    def ready(self) -> None:
        return None  # held in memory: never behind

    def abort(self) -> None:
        self._open = False
        self._chunks = []
        self._writers.discard(self)

    def _take(self) -> bytes | None:
        """Close the writer; the whole body, or None if it was aborted or already committed."""
        if not self._open:
            return None
        self._open = False
        self._writers.discard(self)
        body = b"".join(self._chunks)
        self._chunks = []
        return body


class _MemoryWriter(BufferedWriter):
    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore, meta: EntryMeta) -> None:
        super().__init__(store._writers, store.max_object_size, meta)
        self._store = store

    async def commit(self) -> bool:
        body = self._take()
        return body is not None and self._store._publish(self.meta, body)


class ErrorLog:
    """Store errors, logged at most once a minute with a count of those held back: a broken
    disk or an unreachable Redis must not write one line per request."""

    __slots__ = ("label", "_next", "_suppressed")

    def __init__(self, label: str) -> None:
        self.label = label
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + LOG_EVERY
        if self._suppressed:
            message += f" ({self._suppressed} similar errors suppressed)"
            self._suppressed = 0
        log.error("%s: %s", self.label, message)

if TYPE_CHECKING:

    def _conforms(store: MemoryStore, reader: BytesReader) -> tuple[Store, BodyReader]:
        return store, reader
