"""A fill of the disk cache tier: ``write`` queues bytes on the event loop, an I/O thread
appends them to a temp file, ``commit`` seals it and renames it into place.

The tier (layout, durability, threads, failures) is described in ``disk.py``, the file format
in ``disk_file.py``.  A fill sees its store as the narrow ``FillStore`` below.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Final, Protocol, TypeVar

from ferryman.pipeline.cache import disk_file as f
from ferryman.pipeline.cache.disk_file import Ident
from ferryman.pipeline.cache.store import CHUNK, EntryMeta, encode_meta

__all__ = ["DiskWriter", "FillStore"]

log = logging.getLogger("ferryman")
T = TypeVar("T")

_HIGH_WATER: Final = 4 << 20  # queued body bytes past which ``ready`` asks the fill to wait
_MAX_BACKLOG: Final = 64 << 20  # queued body bytes before a fill the disk can't follow gives up
# Looked up here at call time by the writer (tests make them fail).
_create_temp = f.create_temp
_write_all = f.write_all


class FillStore(Protocol):
    """What a fill uses of its store (``disk.DiskStore``)."""

    max_bytes: int
    max_object_size: int
    fsync: bool
    writers: set[DiskWriter]  # the fills in flight, so a delete or purge can abort them

    async def run_io(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the store's I/O threads."""
        ...

    def submit_io(self, fn: Callable[..., None], *args: object) -> Future[None] | None:
        """``fn(*args)`` queued on the I/O threads; None once they are shut down."""
        ...

    def track(self, key: bytes, variant: bytes, ident: Ident) -> None:
        """Index a published file as most recent."""
        ...

    def failed(self, what: str, exc: OSError) -> None:
        """Log a failure; a full or read-only disk turns writes off for a while."""
        ...


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DiskWriter:
    """A fill: ``write`` queues bytes, an I/O thread appends them to the temp file.

    At most one drain job runs per writer (a new one starts only when the last is
    done) and the I/O lock orders drain, finish and clean-up, so bytes land in order.
    """

    def __init__(self, store: FillStore, meta: EntryMeta, final: str) -> None:
        self.meta = meta
        self._store = store
        self._final = final
        self._tmp = f.temp_for(final)
        self._meta_bytes = encode_meta(meta)
        self._queue: list[bytes] = []
        self._queued = 0
        self._qlock = threading.Lock()
        self._io = threading.Lock()
        self._fd = -1
        self._sums = f.BlockSums()
        self._size = 0
        self._error: OSError | None = None
        self._state = "open"  # open -> committing -> done | aborted
        self._job: Future[None] | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def file_size(self, body_len: int) -> int:
        return f.file_size(len(self._meta_bytes), body_len)

    def write(self, data: bytes) -> None:
        if self._state != "open" or not data:
            return
        self._size += len(data)
        if self._size > self._store.max_object_size or self._error is not None:
            self.abort()
            return
        with self._qlock:
            self._queue.append(bytes(data))
            self._queued += len(data)
            backlog = self._queued
        if backlog > _MAX_BACKLOG:
            # The fill ignored ``ready``: lose the entry rather than hold the body in memory.
            log.warning("ferryman: disk cache fill of %s abandoned: %d bytes queued, the disk can't keep up",
                        self.meta.key.decode("latin-1"), backlog)
            self.abort()
        elif backlog >= CHUNK and (self._job is None or self._job.done()):
            self._job = self._store.submit_io(self._drain)

    def ready(self) -> asyncio.Future[None] | None:
        """None while the disk keeps up; else a future done once the queue has drained."""
        if self._state != "open" or self._queued < _HIGH_WATER:
            return None
        with self._qlock:
            if self._waiter is None:
                loop = asyncio.get_running_loop()
                self._waiter = (loop, loop.create_future())
            fut = self._waiter[1]
        self._job = self._store.submit_io(self._drain)  # one more pass, in case the last one is ending
        return fut

    def _wake(self) -> None:
        """Release a fill waiting in ``ready`` (from any thread)."""
        with self._qlock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fut = waiter
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:  # the loop is closed
                pass

    async def commit(self) -> bool:
        if self._state != "open":
            return False
        self._state = "committing"
        store = self._store
        store.writers.discard(self)
        if self.file_size(self._size) > store.max_bytes:
            self._state = "open"
            self.abort()
            return False
        try:
            ident = await store.run_io(self._finish)
        except OSError as exc:
            self._state = "aborted"
            store.submit_io(self._cleanup)
            store.failed(f"storing {self._final}", exc)
            return False
        self._state = "done"
        store.track(self.meta.key, self.meta.variant, ident)
        return True

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._store.writers.discard(self)
        with self._qlock:
            self._queue, self._queued = [], 0
        self._wake()
        self._store.submit_io(self._cleanup)
        if self._error is not None:
            self._store.failed(f"storing {self._final}", self._error)

    def _drain(self) -> None:
        with self._io:
            try:
                if self._state == "aborted" or self._error is not None:
                    return
                if self._fd < 0:
                    self._fd = _create_temp(self._tmp, self._meta_bytes)
                while True:
                    with self._qlock:
                        chunks, self._queue, self._queued = self._queue, [], 0
                    if not chunks:
                        return
                    for chunk in chunks:
                        self._sums.update(chunk)
                        _write_all(self._fd, chunk)
            except OSError as exc:
                self._error = exc
            finally:
                if self._waiter is not None:
                    self._wake()  # caught up (or failed): the fill may read on

    def _finish(self) -> Ident:
        self._drain()
        with self._io:
            if self._error is not None:
                raise self._error
            fd, self._fd = self._fd, -1
            sums, sync = self._sums.finish(), self._store.fsync
            return f.seal(fd, self._tmp, self._final, self._meta_bytes, self._size, sums, sync)

    def _cleanup(self) -> None:
        with self._io:
            fd, self._fd = self._fd, -1
            f.discard(fd, self._tmp)
