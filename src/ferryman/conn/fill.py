"""One upstream fetch that may be stored, and the clients that wait on it.

Rules this module owns:
- a *fill* is any fetch whose response may be stored under a key: a client's miss
  (the leader), a revalidation, or a background fetch (a Range miss, a
  stale-while-revalidate refresh).  The cache registers every fill in flight per
  key, so a purge or an invalidation can mark them (``invalidated``: not stored);
- followers stream what has arrived, each at its own pace.  The first ``BUFFER``
  bytes are kept in memory for them (all fills of a process together at most
  ``Budget.limit``); past that a follower waits for the fill to be committed and
  reads the rest from the store, so memory stays bounded whatever the object's
  size and however many fills run;
- a fill that turns out unusable (failed, uncacheable, another Vary variant, a
  304 that freshened the entry) sends its followers back to the cache phase to
  decide again.
"""

from __future__ import annotations

import asyncio
from typing import Final

from ferryman.http1.events import Headers
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.key import secondary_key

BUFFER: Final = 64 << 20  # body bytes of one fill kept in memory for its followers
TOTAL: Final = 256 << 20  # the same, for all the fills of one process together


class Budget:
    """Bytes the fills of one process hold in memory for followers (released when a fill ends)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = TOTAL) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True


class Fill:
    """One upstream fetch that several clients wait on (request coalescing)."""

    __slots__ = (
        "key", "head", "chunks", "buffered", "size", "length", "done", "failed", "stored",
        "invalidated", "not_modified", "refreshed", "_wake", "followers", "limit", "vary_fields", "vary",
        "variant", "budget", "released",
    )

    def __init__(self, key: bytes, limit: int, budget: Budget | None = None) -> None:
        self.key = key
        self.budget = budget if budget is not None else Budget()
        self.released = False
        self.head: tuple[int, bytes, Headers] | None = None  # status, reason, stored headers
        self.chunks: list[bytes] = []
        self.buffered = 0  # bytes held in ``chunks`` (the body's first bytes)
        self.size = 0  # bytes arrived
        self.length = -1  # the body's length when the head announced it
        self.done = False  # every byte has arrived
        self.failed = False  # uncacheable, too big or broken: followers decide again
        self.stored: bool | None = None  # committed to the store (None: not yet known)
        self.invalidated = False  # purged or invalidated while in flight: never stored
        self.not_modified = False  # a revalidation answered 304: the entry is fresh again
        self.refreshed: object | None = None  # then: the freshened entry (cache_flow.Stored)
        self._wake: asyncio.Future[None] | None = None
        self.followers = 0
        self.limit = limit
        self.vary_fields: tuple[bytes, ...] | None = ()  # the stored response's Vary (None: Vary: *)
        self.vary: policy.SecondaryKey = ()
        self.variant = b""

    @property
    def usable(self) -> bool:
        return not (self.failed or self.invalidated or self.not_modified)

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._wake = None

    async def wait(self) -> None:
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        await self._wake

    def set_variant(
        self, vary_fields: tuple[bytes, ...] | None, vary: policy.SecondaryKey, variant: bytes
    ) -> None:
        self.vary_fields, self.vary, self.variant = vary_fields, vary, variant

    def publish_head(self, status: int, reason: bytes, headers: Headers, length: int) -> None:
        self.head = (status, reason, headers)
        self.length = length
        self._notify()

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.fail()
            return
        n = self.buffered + len(data)
        if n <= BUFFER and n == self.size and not self.released and self.budget.take(len(data)):
            self.chunks.append(data)
            self.buffered += len(data)
        self._notify()

    def finish(self) -> None:
        self.done = True
        self._notify()

    def set_stored(self, ok: bool) -> None:
        self.stored = ok
        self._notify()

    def revalidated(self, stored: object) -> None:
        self.refreshed = stored
        self.not_modified = True
        self.done = True
        self.stored = True
        self._notify()

    def release(self) -> None:
        """The fill has ended: its buffer no longer counts (followers still streaming keep
        their reference until they are done)."""
        if not self.released:
            self.released = True
            self.budget.used -= self.buffered

    def fail(self) -> None:
        self.failed = True
        self.release()
        self.chunks = []
        self.buffered = 0
        if self.stored is None:
            self.stored = False
        self._notify()

    def invalidate(self) -> None:
        self.invalidated = True
        self._notify()

    def serves(self, req_headers: Headers) -> bool:
        """May a request with these fields follow this fill (its variant, as far as known)?"""
        if not self.usable:
            return False
        if self.vary_fields is None:
            return False  # Vary: * never matches another request
        if not self.vary_fields:
            return True
        return secondary_key(self.vary_fields, req_headers) == self.vary
