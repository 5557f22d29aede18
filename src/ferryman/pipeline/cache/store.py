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

The tiers: ``memory.py`` (in-process LRU), ``disk.py`` (files shared by a machine's
workers), ``redis_store.py`` (shared by instances); ``lru.py`` is the LRU index the first
two keep.  Here: the protocols, the meta codec and cost model they share, and the
pieces more than one tier uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

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
