"""Disk cache tier: one file per entry, published by atomic rename, checked by CRC32.

Layout::

    <root>/<h[0:2]>/<h[2:4]>/<h>-<v>      h = blake2b-128(key), v = blake2b-64(variant), in hex

  Every variant of a key lives in one directory under one name prefix, so ``delete``
  finds the variants other workers wrote with a single listdir.  A fill writes
  ``.tmp-<h>-<v>-<pid>-<random>`` in that same directory and renames it over the
  final name (``os.replace``, atomic within a file system): a reader opens the old
  file, the new one or none -- never a partial one.

File format (integers big-endian)::

    head  24 B  magic b"FRYCACHE" | u16 version=1 | u16 flags=0 | u32 meta_len | u64 body_len
    meta        meta_len bytes of compact JSON {"k","v","s","h","q","t0","t1"}, byte strings
                as latin-1 text (every byte value round-trips); body_size is body_len
    body        body_len bytes
    tail  16 B  u32 CRC32(meta + body) | u64 body_len | b"FEND"

  A file is an entry only if its size is exactly 24 + meta_len + body_len + 16 and
  both lengths agree, so a truncated file is caught from its head alone; the head's
  body_len is written last, just before the fsync.

Durability: a temp file is fsync'ed before the rename, so a published name never
points at data the kernel has not written; after a power cut the rename itself may
be lost (the directory is not fsync'ed, sparing a second flush per fill): a miss,
which a cache can afford.  A worker killed mid-fill leaves only its temp file,
removed at the next start once its pid is gone (or it has not grown for an hour).

Verification: a body up to 1 MiB is read whole by ``get`` and checked before it
returns, so a corrupt small entry is a clean miss.  A larger one is checked while
it streams: ``read_range`` over the whole body holds the last chunk back until the
tail's CRC matches and raises ``CacheEntryCorrupt`` otherwise; a partial range is
served only after a full checking pass.  Either way the bad file is deleted.  Once
a file (device, inode, mtime, size) has passed in this process, its readers offer
``path()``/``fileno()`` for sendfile (published files never change in place).

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
rather than held in memory.  ``update_meta`` copies the body into a new
file under the new meta (checking the old CRC: a bad body is deleted, never re-signed);
``purge_prefix`` reads every head, as only the heads know the keys.  Failures never reach the caller:
ENOSPC, EDQUOT, EACCES, EPERM, EROFS, ENOTDIR turn writes off for 30 s (``begin``
returns None, fills become pass-through); errors are logged at most once a minute
per store, with a count of those suppressed.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import secrets
import struct
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, TypeVar

from ferryman.pipeline.cache.store import (
    CHUNK,
    BadMeta,
    BodyReader,
    BytesReader,
    CacheEntryCorrupt,
    EntryMeta,
    ErrorLog,
    LruIndex,
    Slot,
    check_range,
    encode_meta,
    new_version,
)
from ferryman.pipeline.cache.store import decode_meta as decode_meta_shared

if TYPE_CHECKING:
    from ferryman.pipeline.cache.store import Store

log = logging.getLogger("ferryman")
T = TypeVar("T")
Ident = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size

_MAGIC: Final = b"FRYCACHE"
_VERSION: Final = 2
_END: Final = b"FEND"
_HEAD: Final = struct.Struct(">8sHHIQ")
_TAIL: Final = struct.Struct(">IQ4s")
_MAX_META: Final = 1 << 20  # a head announcing more is garbage
_PEEK: Final = 16 * 1024  # first read of a file: head + meta of almost every entry
_SMALL: Final = 1 << 20  # bodies up to this are read whole and checked by get()
_COPY: Final = 1 << 20  # piece size of checking passes and meta rewrites
_HIGH_WATER: Final = 4 << 20  # queued body bytes past which ``ready`` asks the fill to wait
_MAX_BACKLOG: Final = 64 << 20  # queued body bytes before a fill the disk can't follow gives up
_STALE_TEMP: Final = 3600.0
_WRITES_OFF: Final = 30.0
_TMP: Final = ".tmp-"
_DISABLING: Final = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
)


class _Corrupt(Exception):
    """Not a complete, well-formed entry."""


# -- names and format (pure) -------------------------------------------------------------


def entry_name(key: bytes, variant: bytes) -> tuple[str, str]:
    """(fan-out directory relative to the root, file name) of an entry."""
    h = hashlib.blake2b(key, digest_size=16).hexdigest()
    v = hashlib.blake2b(variant, digest_size=8).hexdigest()
    return os.path.join(h[:2], h[2:4]), f"{h}-{v}"


def decode_meta(data: bytes, body_len: int) -> EntryMeta:
    try:
        return decode_meta_shared(data, body_len)
    except BadMeta as exc:
        raise _Corrupt(str(exc)) from None


def _parse_head(buf: bytes, file_size: int) -> tuple[int, int]:
    if len(buf) < _HEAD.size:
        raise _Corrupt("short head")
    magic, version, _flags, meta_len, body_len = _HEAD.unpack_from(buf)
    if magic != _MAGIC or version != _VERSION or meta_len > _MAX_META:
        raise _Corrupt("bad head")
    if file_size != _HEAD.size + meta_len + body_len + _TAIL.size:
        raise _Corrupt(f"size {file_size} does not match the head (truncated?)")
    return meta_len, body_len


def _check_tail(tail: bytes, crc: int, body_len: int) -> None:
    if len(tail) != _TAIL.size or _TAIL.unpack(tail) != (crc, body_len, _END):
        raise _Corrupt("checksum mismatch")


# -- file operations (run in the I/O threads only) ---------------------------------------


def _ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _open_ro(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _unlink_if_same(path: str, ident: Ident) -> None:
    """Delete a file unless another worker has replaced it since (a new inode)."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == ident[:2]:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_many(files: list[tuple[str, Ident]]) -> None:
    for path, ident in files:
        try:
            _unlink_if_same(path, ident)
        except OSError:
            pass  # eviction is best effort


def _discard(fd: int, tmp: str) -> None:
    try:
        if fd >= 0:
            os.close(fd)
        _unlink(tmp)
    except OSError:
        pass


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)  # short only at end of file: a truncated entry
    if len(data) != n:
        raise _Corrupt("short read")
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load_head(fd: int, size: int, small_whole: bool = False) -> tuple[bytes, EntryMeta, bytes]:
    """(meta bytes, meta, bytes read from offset 0: the whole file if small_whole and small)."""
    buf = os.pread(fd, min(size, _HEAD.size + _PEEK), 0)
    meta_len, body_len = _parse_head(buf, size)
    want = size if small_whole and body_len <= _SMALL else _HEAD.size + meta_len
    if len(buf) < want:
        buf += _pread_exact(fd, want - len(buf), len(buf))
    meta_bytes = buf[_HEAD.size : _HEAD.size + meta_len]
    return meta_bytes, decode_meta(meta_bytes, body_len), buf


@dataclass(slots=True)
class _Opened:
    meta: EntryMeta
    meta_bytes: bytes
    body: bytes | None  # small: read whole and checked
    fd: int  # large: an open descriptor the reader owns (-1 when small)
    ident: Ident


def _open_entry(path: str, key: bytes, variant: bytes) -> _Opened | None:
    """Open an entry; None if missing or another key's.  Deletes and raises _Corrupt if bad."""
    fd = _open_ro(path)
    if fd is None:
        return None
    keep = False
    try:
        st = os.fstat(fd)
        try:
            meta_bytes, meta, buf = _load_head(fd, st.st_size, small_whole=True)
            if (meta.key, meta.variant) != (key, variant):
                return None  # a hash collision: not ours to judge
            if meta.body_size > _SMALL:
                keep = True
                return _Opened(meta, meta_bytes, None, fd, _ident(st))
            off = _HEAD.size + len(meta_bytes)
            body = buf[off : off + meta.body_size]
            crc = zlib.crc32(body, zlib.crc32(meta_bytes))
            _check_tail(buf[off + meta.body_size :], crc, meta.body_size)
            return _Opened(meta, meta_bytes, body, -1, _ident(st))
        except _Corrupt:
            _unlink_if_same(path, _ident(st))
            raise
    finally:
        if not keep:
            os.close(fd)


def _verify_body(fd: int, meta_bytes: bytes, off: int, body_len: int) -> None:
    crc, pos = zlib.crc32(meta_bytes), 0
    while pos < body_len:
        n = min(_COPY, body_len - pos)
        crc = zlib.crc32(_pread_exact(fd, n, off + pos), crc)
        pos += n
    _check_tail(os.pread(fd, _TAIL.size, off + body_len), crc, body_len)


def _read_piece(fd: int, off: int, n: int, crc: int | None, last_of: int | None) -> tuple[bytes, int | None]:
    """Read n body bytes at off, fold them into crc; with last_of=body_len also check the tail."""
    data = _pread_exact(fd, n + (_TAIL.size if last_of is not None else 0), off)
    tail = b""
    if last_of is not None:
        data, tail = data[:n], data[n:]
    if crc is not None:
        crc = zlib.crc32(data, crc)
        if last_of is not None:
            _check_tail(tail, crc, last_of)
    return data, crc


def _create_temp(tmp: str, meta_bytes: bytes) -> int:
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, _HEAD.pack(_MAGIC, _VERSION, 0, len(meta_bytes), 0) + meta_bytes)
    except BaseException:
        _discard(fd, tmp)
        raise
    return fd


def _seal(fd: int, tmp: str, final: str, meta_len: int, body_len: int, crc: int, sync: bool) -> Ident:
    """Finish a temp file and publish it under its final name; fd is closed either way."""
    try:
        _write_all(fd, _TAIL.pack(crc, body_len, _END))
        os.pwrite(fd, _HEAD.pack(_MAGIC, _VERSION, 0, meta_len, body_len), 0)
        if sync:
            os.fsync(fd)
        st = os.fstat(fd)
        os.close(fd)
    except BaseException:
        _discard(fd, tmp)
        raise
    try:
        os.replace(tmp, final)
    except BaseException:
        _discard(-1, tmp)
        raise
    return _ident(st)


def _rewrite(path: str, tmp: str, update: EntryMeta, sync: bool) -> Ident | None:
    """Copy an entry's body under new meta (after a 304), checking the old CRC on the way.

    Only while the file still holds ``update.version`` (when given): a newer fill wins.
    """
    src = _open_ro(path)
    if src is None:
        return None
    out = -1
    try:
        st = os.fstat(src)
        try:
            old_meta, meta, _ = _load_head(src, st.st_size)
            if (meta.key, meta.variant) != (update.key, update.variant):
                return None
            if update.version and update.version != meta.version:
                return _ident(st)
            new_meta = encode_meta(replace(update, version=meta.version))
            off, size = _HEAD.size + len(old_meta), meta.body_size
            out = _create_temp(tmp, new_meta)
            old_crc, crc, pos = zlib.crc32(old_meta), zlib.crc32(new_meta), 0
            while pos < size:
                piece = _pread_exact(src, min(_COPY, size - pos), off + pos)
                old_crc, crc = zlib.crc32(piece, old_crc), zlib.crc32(piece, crc)
                _write_all(out, piece)
                pos += len(piece)
            _check_tail(os.pread(src, _TAIL.size, off + size), old_crc, size)
        except _Corrupt:
            _unlink_if_same(path, _ident(st))  # never launder a bad body under a fresh checksum
            raise
        fd, out = out, -1
        return _seal(fd, tmp, path, len(new_meta), size, crc, sync)
    finally:
        os.close(src)
        if out >= 0:
            _discard(out, tmp)


@dataclass(slots=True)
class _Found:
    key: bytes
    variant: bytes
    ident: Ident
    used_at: float


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fanout(root: str) -> Iterator[str]:
    def is_fan(name: str) -> bool:
        return len(name) == 2 and all(c in "0123456789abcdef" for c in name)

    for a in filter(is_fan, _listdir(root)):
        for b in filter(is_fan, _listdir(os.path.join(root, a))):
            yield os.path.join(root, a, b)


def _stale_temp(path: str, name: str) -> bool:
    """A fill nobody will finish: its writer's pid is gone, or it has not grown for an hour."""
    try:
        pid = int(name.split("-")[3])  # .tmp-<h>-<v>-<pid>-<random>
        if time.time() - os.stat(path).st_mtime > _STALE_TEMP or pid <= 0:
            return True
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return True
    except (FileNotFoundError, PermissionError):  # already gone / a live process of another user
        return False
    return False


def _scan(root: str, purge: bytes | None) -> tuple[list[_Found], int]:
    """Walk the fan-out reading heads only: drop bad files, and dead fills unless purging.

    With ``purge``, delete the entries whose key starts with it; return (entries left, purged).
    """
    found: list[_Found] = []
    purged = 0
    for sub in _fanout(root):
        for name in _listdir(sub):
            path = os.path.join(sub, name)
            if name.startswith(_TMP):
                if purge is None and _stale_temp(path, name):
                    _unlink(path)
                continue
            fd = None
            try:
                fd = _open_ro(path)
                if fd is None:
                    continue
                st = os.fstat(fd)
                _, meta, _ = _load_head(fd, st.st_size)
            except _Corrupt:
                _unlink(path)
                continue
            except OSError:
                continue  # unreadable now; not ours to delete
            finally:
                if fd is not None:
                    os.close(fd)
            if entry_name(meta.key, meta.variant)[1] != name:
                _unlink(path)  # misplaced: get() would never find it
            elif purge is not None and meta.key.startswith(purge):
                purged += _unlink(path)
            else:
                found.append(_Found(meta.key, meta.variant, _ident(st), max(st.st_atime, st.st_mtime)))
    return found, purged


def _prepare(root: str) -> None:
    """Create the root and prove it writable with a throw-away file."""
    os.makedirs(root, exist_ok=True)
    probe = os.path.join(root, f"{_TMP}probe-x-{os.getpid()}-{secrets.token_hex(4)}")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    os.unlink(probe)


def _unlink_key(directory: str, prefix: str) -> int:
    return sum(_unlink(os.path.join(directory, n)) for n in _listdir(directory) if n.startswith(prefix))


# -- the store (event loop side) ----------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    ident: Ident
    verified: bool = False  # this file's CRC has passed in this process


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
    ) -> None:
        self.root = os.fspath(path)
        self.max_bytes = max_bytes
        self.max_object_size = max_object_size
        self.fsync = fsync
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ferryman-cache")
        self._index: LruIndex[_Slot] = LruIndex(max_bytes)
        self._writers: set[DiskWriter] = set()
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
            await self._run(_prepare, self.root)
        except OSError as exc:
            self._failed("preparing the directory", exc)
        try:
            found, _ = await self._run(_scan, self.root, None)
        except OSError as exc:
            self._failed("scanning", exc)
            return
        for f in sorted(found, key=lambda f: f.used_at):
            self._track(f.key, f.variant, f.ident)

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        if self._closed:
            return None
        path = self._final(key, variant)
        try:
            opened = await self._run(_open_entry, path, key, variant)
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
        slot = self._index.get(key, variant)
        if slot is None or slot.ident != opened.ident:
            slot = self._track(key, variant, opened.ident)
        if opened.body is not None:
            slot.verified = True
            return opened.meta, BytesReader(opened.body)
        return opened.meta, DiskReader(self, opened, path, slot.verified)

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
        self._writers.add(writer)
        return writer

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        if self._closed or time.monotonic() < self._writes_off_until:
            return
        final = self._final(key, variant)
        try:
            update = replace(meta, key=key, variant=variant)
            ident = await self._run(_rewrite, final, _temp_for(final), update, self.fsync)
        except _Corrupt as exc:
            self._index.pop(key, variant)
            self._log(f"deleted corrupt {final}: {exc}")
            return
        except OSError as exc:
            self._failed("updating meta", exc)
            return
        if ident is None:
            self._index.pop(key, variant)
        else:
            self._track(key, variant, ident)

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
            return await self._run(_unlink_key, os.path.join(self.root, sub), name.split("-")[0] + "-")
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
            return (await self._run(_scan, self.root, prefix))[1]
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

    # -- internals -----------------------------------------------------------------------

    def _final(self, key: bytes, variant: bytes) -> str:
        sub, name = entry_name(key, variant)
        return os.path.join(self.root, sub, name)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _submit(self, fn: Callable[..., None], *args: object) -> Future[None] | None:
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            return None

    def _track(self, key: bytes, variant: bytes, ident: Ident) -> _Slot:
        """Index a file as most recent; unlink what the size cap pushes out."""
        slot = _Slot(ident)
        evicted = self._index.put(key, variant, slot, ident[3])
        if evicted:
            self._submit(_unlink_many, [(self._final(*s), v.ident) for s, v in evicted])
        return slot

    def _verified(self, slot: Slot, ident: Ident) -> None:
        found = self._index.get(*slot, touch=False)
        if found is not None and found.ident == ident:
            found.verified = True

    async def _corrupt(self, path: str, slot: Slot, ident: Ident, exc: Exception) -> None:
        found = self._index.get(*slot, touch=False)
        if found is not None and found.ident == ident:
            self._index.pop(*slot)
        self._log(f"deleting corrupt {path}: {exc}")
        try:
            await self._run(_unlink_if_same, path, ident)
        except OSError:
            pass

    def _abort_writers(self, match: Callable[[bytes], bool]) -> None:
        for writer in list(self._writers):  # a fill begun before a purge must not publish
            if match(writer.meta.key):
                writer.abort()

    def _failed(self, what: str, exc: OSError) -> None:
        if exc.errno in _DISABLING:
            self._writes_off_until = time.monotonic() + _WRITES_OFF
            self._log(f"{what}: {exc}; cache writes off for {_WRITES_OFF:g} s")
        else:
            self._log(f"{what}: {exc}")



def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _temp_for(final: str) -> str:
    directory, name = os.path.split(final)
    return os.path.join(directory, f"{_TMP}{name}-{os.getpid()}-{secrets.token_hex(4)}")


class DiskReader:
    """A large body on disk.  Owns a descriptor: eviction or replacement can't cut it short."""

    size: int
    offset: int

    def __init__(self, store: DiskStore, opened: _Opened, path: str, verified: bool) -> None:
        self._store = store
        self._opened = opened
        self._path = path
        self._fd = opened.fd
        self._verified = verified
        self.size = opened.meta.body_size
        self.offset = _HEAD.size + len(opened.meta_bytes)
        self._busy = 0
        self._closed = False
        self._release = weakref.finalize(self, os.close, opened.fd)

    def path(self) -> str | None:
        return self._path if self._verified and not self._closed else None

    def fileno(self) -> int | None:
        return self._fd if self._verified and not self._closed else None

    def close(self) -> None:
        self._closed = True
        if not self._busy:
            self._release()

    async def read_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        check_range(start, end, self.size)
        if self._closed:
            raise ValueError("reader closed")
        self._busy += 1
        try:
            if not self._verified and (start, end) != (0, self.size):
                await self._io(_verify_body, self._fd, self._opened.meta_bytes, self.offset, self.size)
                self._passed()
            crc = None if self._verified else zlib.crc32(self._opened.meta_bytes)
            pos = start
            while pos < end:
                n = min(CHUNK, end - pos)
                last_of = self.size if crc is not None and pos + n == end else None
                data, crc = await self._io(_read_piece, self._fd, self.offset + pos, n, crc, last_of)
                if last_of is not None:
                    self._passed()
                pos += n
                yield data
        finally:
            self._busy -= 1
            if self._closed and not self._busy:
                self._release()

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self._store._run(fn, *args)
        except (_Corrupt, OSError, RuntimeError) as exc:  # RuntimeError: the store was closed
            meta = self._opened.meta
            if isinstance(exc, _Corrupt):
                await self._store._corrupt(self._path, (meta.key, meta.variant), self._opened.ident, exc)
            raise CacheEntryCorrupt(f"cache file {self._path}: {exc}") from None

    def _passed(self) -> None:
        self._verified = True
        meta = self._opened.meta
        self._store._verified((meta.key, meta.variant), self._opened.ident)


class DiskWriter:
    """A fill: ``write`` queues bytes, an I/O thread appends them to the temp file.

    At most one drain job runs per writer (a new one starts only when the last is
    done) and the I/O lock orders drain, finish and clean-up, so bytes land in order.
    """

    def __init__(self, store: DiskStore, meta: EntryMeta, final: str) -> None:
        self.meta = meta
        self._store = store
        self._final = final
        self._tmp = _temp_for(final)
        self._meta_bytes = encode_meta(meta)
        self._queue: list[bytes] = []
        self._queued = 0
        self._qlock = threading.Lock()
        self._io = threading.Lock()
        self._fd = -1
        self._crc = zlib.crc32(self._meta_bytes)
        self._size = 0
        self._error: OSError | None = None
        self._state = "open"  # open -> committing -> done | aborted
        self._job: Future[None] | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def file_size(self, body_len: int) -> int:
        return _HEAD.size + len(self._meta_bytes) + body_len + _TAIL.size

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
            self._job = self._store._submit(self._drain)

    def ready(self) -> asyncio.Future[None] | None:
        """None while the disk keeps up; else a future done once the queue has drained."""
        if self._state != "open" or self._queued < _HIGH_WATER:
            return None
        with self._qlock:
            if self._waiter is None:
                loop = asyncio.get_running_loop()
                self._waiter = (loop, loop.create_future())
            fut = self._waiter[1]
        self._job = self._store._submit(self._drain)  # one more pass, in case the last one is ending
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
        store._writers.discard(self)
        if self.file_size(self._size) > store.max_bytes:
            self._state = "open"
            self.abort()
            return False
        try:
            ident = await store._run(self._finish)
        except OSError as exc:
            self._state = "aborted"
            store._submit(self._cleanup)
            store._failed(f"storing {self._final}", exc)
            return False
        self._state = "done"
        store._track(self.meta.key, self.meta.variant, ident)
        return True

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._store._writers.discard(self)
        with self._qlock:
            self._queue, self._queued = [], 0
        self._wake()
        self._store._submit(self._cleanup)
        if self._error is not None:
            self._store._failed(f"storing {self._final}", self._error)

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
                        self._crc = zlib.crc32(chunk, self._crc)
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
            meta_len, sync = len(self._meta_bytes), self._store.fsync
            return _seal(fd, self._tmp, self._final, meta_len, self._size, self._crc, sync)

    def _cleanup(self) -> None:
        with self._io:
            fd, self._fd = self._fd, -1
            _discard(fd, self._tmp)


if TYPE_CHECKING:

    def _conforms(store: DiskStore, reader: DiskReader) -> tuple[Store, BodyReader]:
        return store, reader
