"""Disk cache tier: one file per entry, published by atomic rename, checked block by block.

The modules: here the store and its reader (the read path); ``disk_writer.py`` a fill (the
queue, the drain thread, sealing and publishing); ``disk_file.py`` the file format and the
blocking file operations the I/O threads run.

Layout::

    <root>/<h[0:2]>/<h[2:4]>/<h>-<v>      h = blake2b-128(key), v = blake2b-64(variant), in hex

  Every variant of a key lives in one directory under one name prefix, so ``delete``
  finds the variants other workers wrote with a single listdir.  A fill writes
  ``.tmp-<h>-<v>-<pid>-<random>`` in that same directory and renames it over the
  final name (``os.replace``, atomic within a file system): a reader opens the old
  file, the new one or none -- never a partial one.  The file format is in
  ``disk_file.py``; files of another format version are misses, deleted when seen.

Durability: a temp file is fsync'ed before the rename, so a published name never
points at data the kernel has not written; after a power cut the rename itself may
be lost (the directory is not fsync'ed, sparing a second flush per fill): a miss,
which a cache can afford.  A worker killed mid-fill leaves only its temp file,
removed at the next start once its pid is gone (or it has not grown for an hour).

Verification, on every read (nothing is trusted from an earlier read, in this process
or another): ``get`` checks the head, the meta and the table of block sums against
the tail's hash, and the body's first 64 KiB block (a body up to 1 MiB is read whole
and every block checked), so damage there is a clean miss.  ``read_range`` then reads
whole blocks and checks each against its sum before any of its bytes leave; at a bad
block it yields the good bytes before it and raises ``CacheEntryCorrupt``, and the
consumer closes the connection, so a client gets a short response of good bytes at
worst, never a damaged byte and never a body passed off as complete.  A bad file is
deleted wherever it is found.  Readers never offer ``path()``/``fileno()`` (sendfile
would skip the checks).  Once per file per process: nothing.  At start-up, the scan
reads only heads and metas (sizes and names checked), not bodies.

Several workers, one directory: files are only published by rename and never
modified, so any process may read, replace or unlink any of them, and a missing
file (ENOENT wherever it shows) is a miss.  Each worker keeps its own in-memory
index, rebuilt at start from the files' heads in LRU order of max(atime, mtime),
and looks at the file system on an index miss, so it finds its siblings' fills.
The size cap is per process and approximate: each worker evicts what it knows,
so under N workers the directory may run over ``max_bytes`` for a while.

Threads: all file I/O runs in a small dedicated pool; coroutines only await it, and
``Writer.write`` only queues bytes for it.  Past 4 MiB queued, ``Writer.ready`` hands the
fill a future to wait on, and the fill stops reading its upstream until the disk has
caught up; a fill that ignores it and runs 64 MiB ahead is abandoned (and logged)
rather than held in memory.  ``update_meta`` copies the body into a new file under the
new meta (checking every block: a bad body is deleted, never re-signed);
``purge_prefix`` reads every head, as only the heads know the keys.  Failures never reach the caller:
ENOSPC, EDQUOT, EACCES, EPERM, EROFS, ENOTDIR turn writes off for 30 s (``begin``
returns None, fills become pass-through); errors are logged at most once a minute
per store, with a count of those suppressed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Final, TypeVar

from ferryman.pipeline.cache import disk_file as f
from ferryman.pipeline.cache.disk_file import Ident, entry_name
from ferryman.pipeline.cache.disk_writer import DiskWriter
from ferryman.pipeline.cache.lru import LruIndex, Slot
from ferryman.pipeline.cache.store import (
    CHUNK,
    BodyReader,
    BytesReader,
    CacheEntryCorrupt,
    EntryMeta,
    ErrorLog,
    check_range,
    new_version,
)

if TYPE_CHECKING:
    from ferryman.pipeline.cache.store import Store

__all__ = ["DiskReader", "DiskStore", "entry_name"]

T = TypeVar("T")

_WRITES_OFF: Final = 30.0
_DISABLING: Final = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
)
_READ_BLOCKS: Final = CHUNK // f.BLOCK  # blocks per read while streaming
_Corrupt = f.Corrupt


# -- the store (event loop side) ----------------------------------------------------------


class DiskStore:
    """File-per-entry cache shared by the workers of one machine.  Call ``open()`` first."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        max_object_size: int,
        *,
        fsync: bool = True,
        threads: int = 4,
        max_entries: int = 1_000_000,
        max_variants: int = 32,
    ) -> None:
        self.root = os.fspath(path)
        self.max_bytes = max_bytes
        self.max_object_size = max_object_size
        self.fsync = fsync
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ferryman-cache")
        self._index: LruIndex[Ident] = LruIndex(max_bytes, max_entries, max_variants)
        self.on_evict: Callable[[bytes, bytes], None] | None = None  # told of what this process evicts
        self.writers: set[DiskWriter] = set()
        self._writes_off_until = 0.0
        self._log = ErrorLog(f"disk cache {self.root}")
        self._closed = False

    @property
    def used_bytes(self) -> int:
        return self._index.used

    def __len__(self) -> int:
        return len(self._index)

    async def open(self) -> None:
        """Create the directory, prove it writable, remove dead fills and bad files, rebuild the index."""
        try:
            await self.run_io(f.prepare, self.root)
        except OSError as exc:
            self.failed("preparing the directory", exc)
        try:
            found, _ = await self.run_io(f.scan, self.root, None)
        except OSError as exc:
            self.failed("scanning", exc)
            return
        for entry in sorted(found, key=lambda e: e.used_at):
            self.track(entry.key, entry.variant, entry.ident)

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        if self._closed:
            return None
        path = self._final(key, variant)
        try:
            opened = await self.run_io(f.open_entry, path, key, variant)
        except _Corrupt as exc:
            self._index.pop(key, variant)
            self._log(f"deleted corrupt {path}: {exc}")
            return None
        except OSError as exc:
            self._log(f"reading {path}: {exc}")
            return None
        if opened is None:
            self._index.pop(key, variant)
            return None
        if self._index.get(key, variant) != opened.ident:
            self.track(key, variant, opened.ident)
        if opened.body is not None:
            return opened.meta, BytesReader(opened.body)
        return opened.meta, DiskReader(self, opened, path)

    def begin(self, meta_without_size: EntryMeta) -> DiskWriter | None:
        meta = meta_without_size
        if self._closed or meta.body_size > self.max_object_size:
            return None
        if time.monotonic() < self._writes_off_until:
            return None
        meta = replace(meta, version=new_version())
        writer = DiskWriter(self, meta, self._final(meta.key, meta.variant))
        if writer.file_size(0) > self.max_bytes:
            return None
        self.writers.add(writer)
        return writer

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        if self._closed or time.monotonic() < self._writes_off_until:
            return
        final = self._final(key, variant)
        try:
            update = replace(meta, key=key, variant=variant)
            ident = await self.run_io(f.rewrite, final, f.temp_for(final), update, self.fsync)
        except _Corrupt as exc:
            self._index.pop(key, variant)
            self._log(f"deleted corrupt {final}: {exc}")
            return
        except OSError as exc:
            self.failed("updating meta", exc)
            return
        if ident is None:
            self._index.pop(key, variant)
        else:
            self.track(key, variant, ident)

    def variants(self, key: bytes) -> list[bytes]:
        """Variants of ``key`` this process knows on disk (from the start-up scan and its own fills)."""
        return [b""] if self._closed else (self._index.variants(key) or [b""])

    async def delete(self, key: bytes) -> int:
        if self._closed:
            return 0
        self._abort_writers(lambda k: k == key)
        self._index.pop_key(key)
        sub, name = entry_name(key, b"")
        try:
            return await self.run_io(f.unlink_key, os.path.join(self.root, sub), name.split("-")[0] + "-")
        except OSError as exc:
            self._log(f"deleting: {exc}")
            return 0

    async def purge_prefix(self, prefix: bytes) -> int:
        """Delete every entry whose key starts with prefix: a scan of all heads (admin use)."""
        if self._closed:
            return 0
        self._abort_writers(lambda k: k.startswith(prefix))
        for key in self._index.keys_with_prefix(prefix):
            self._index.pop_key(key)
        try:
            return (await self.run_io(f.scan, self.root, prefix))[1]
        except OSError as exc:
            self._log(f"purging: {exc}")
            return 0

    async def close(self) -> None:
        """Abort fills in progress and wait for the I/O threads.  Finish readers first."""
        if self._closed:
            return
        self._closed = True
        self._abort_writers(lambda k: True)
        await asyncio.to_thread(self._pool.shutdown, True)
        self._index.clear()

    # -- the I/O threads, the index, failures (``run_io`` .. ``failed``: a fill's ``FillStore``) --

    def _final(self, key: bytes, variant: bytes) -> str:
        sub, name = entry_name(key, variant)
        return os.path.join(self.root, sub, name)

    async def run_io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit_io(self, fn: Callable[..., None], *args: object) -> Future[None] | None:
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            return None

    def track(self, key: bytes, variant: bytes, ident: Ident) -> None:
        """Index a file as most recent; unlink what the size cap pushes out."""
        evicted = self._index.put(key, variant, ident, ident[3])
        if evicted:
            self.submit_io(f.unlink_many, [(self._final(*s), v) for s, v in evicted])
            if self.on_evict is not None:
                for (k, v), _ in evicted:
                    self.on_evict(k, v)

    async def _corrupt(self, path: str, slot: Slot, ident: Ident, exc: Exception) -> None:
        if self._index.get(*slot, touch=False) == ident:
            self._index.pop(*slot)
        self._log(f"deleting corrupt {path}: {exc}")
        try:
            await self.run_io(f.unlink_if_same, path, ident)
        except OSError:
            pass

    def _abort_writers(self, match: Callable[[bytes], bool]) -> None:
        for writer in list(self.writers):  # a fill begun before a purge must not publish
            if match(writer.meta.key):
                writer.abort()

    def failed(self, what: str, exc: OSError) -> None:
        if exc.errno in _DISABLING:
            self._writes_off_until = time.monotonic() + _WRITES_OFF
            self._log(f"{what}: {exc}; cache writes off for {_WRITES_OFF:g} s")
        else:
            self._log(f"{what}: {exc}")


class DiskReader:
    """A large body on disk.  Owns a descriptor: eviction or replacement can't cut it short."""

    size: int
    offset: int

    def __init__(self, store: DiskStore, opened: f.Opened, path: str) -> None:
        self._store = store
        self._opened = opened
        self._path = path
        self._fd = opened.fd
        self.size = opened.meta.body_size
        self.offset = f.HEAD.size + len(opened.meta_bytes)
        self._busy = 0
        self._closed = False
        self._release = weakref.finalize(self, os.close, opened.fd)

    def path(self) -> str | None:
        return None  # every block is checked in user space before it leaves: no sendfile

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        self._closed = True
        if not self._busy:
            self._release()

    async def read_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Whole blocks are read and checked; the bytes of [start, end) in them are yielded.

        At a bad block: the good bytes before it, then ``CacheEntryCorrupt`` (file deleted).
        """
        check_range(start, end, self.size)
        if self._closed:
            raise ValueError("reader closed")
        self._busy += 1
        try:
            opened = self._opened
            pos = start - start % f.BLOCK
            while pos < end:
                if pos == 0:
                    data, bad = opened.first, False  # checked by get()
                else:
                    count = min(_READ_BLOCKS, (end - pos + f.BLOCK - 1) // f.BLOCK)
                    data, bad = await self._io(
                        f.read_blocks, self._fd, self.offset, self.size, opened.sums, pos // f.BLOCK, count
                    )
                lo, hi = max(start, pos) - pos, min(end, pos + len(data)) - pos
                if hi > lo:
                    yield data if (lo, hi) == (0, len(data)) else data[lo:hi]
                if bad:
                    await self._bad(f.Corrupt(f"body block {(pos + len(data)) // f.BLOCK} checksum mismatch"))
                pos += len(data)
        finally:
            self._busy -= 1
            if self._closed and not self._busy:
                self._release()

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self._store.run_io(fn, *args)
        except (f.Corrupt, OSError, RuntimeError) as exc:  # RuntimeError: the store was closed
            if isinstance(exc, f.Corrupt):
                await self._bad(exc)
            raise CacheEntryCorrupt(f"cache file {self._path}: {exc}") from None

    async def _bad(self, exc: f.Corrupt) -> None:
        meta = self._opened.meta
        await self._store._corrupt(self._path, (meta.key, meta.variant), self._opened.ident, exc)
        raise CacheEntryCorrupt(f"cache file {self._path}: {exc}")


if TYPE_CHECKING:

    def _conforms(store: DiskStore, reader: DiskReader) -> tuple[Store, BodyReader]:
        return store, reader
