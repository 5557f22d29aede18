"""The disk cache's entry file: its format (pure) and the file operations the I/O threads run.

File format (integers big-endian)::

    head  24 B  magic b"FRYCACHE" | u16 version=3 | u16 block_shift=16 | u32 meta_len | u64 body_len
    meta        meta_len bytes of compact JSON {"k","v","s","h","q","t0","t1","n"}, byte strings
                as latin-1 text (every byte value round-trips); body_size is body_len
    body        body_len bytes, in blocks of 64 KiB (the last may be shorter)
    sums        8 B per block: xxh3-64 of the block, seeded with its index
    tail  20 B  u64 xxh3-64(head + meta + sums) | u64 body_len | b"FEND"

A file is an entry only if its size is exactly 24 + meta_len + body_len + 8 * blocks + 20,
so a truncated file is caught from its head alone; the head's body_len is written last,
just before the fsync.  The tail's hash covers everything but the body, and each block of
the body has its own sum, so a reader checks the head, the meta and the table of sums
when it opens an entry, and each block just before any of its bytes leave: a damaged
byte anywhere is found before it could reach a client.  A block's sum is seeded with its
index, so blocks swapped in place fail too.

Everything below the format section runs in the store's I/O threads only.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final

import xxhash

from ferryman.pipeline.cache.store import BadMeta, EntryMeta, encode_meta
from ferryman.pipeline.cache.store import decode_meta as decode_meta_shared

Ident = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size

MAGIC: Final = b"FRYCACHE"
VERSION: Final = 3
BLOCK_SHIFT: Final = 16
BLOCK: Final = 1 << BLOCK_SHIFT  # 64 KiB: the unit a reader checks before sending
END: Final = b"FEND"
HEAD: Final = struct.Struct(">8sHHIQ")
TAIL: Final = struct.Struct(">QQ4s")
SUM: Final = struct.Struct(">Q")
MAX_META: Final = 1 << 20  # a head announcing more is garbage
PEEK: Final = 16 * 1024  # first read of a file: head + meta of almost every entry
SMALL: Final = 1 << 20  # bodies up to this are read whole and checked by get()
COPY: Final = 16 * BLOCK  # piece size of meta rewrites (whole blocks)
TMP: Final = ".tmp-"
STALE_TEMP: Final = 3600.0


class Corrupt(Exception):
    """Not a complete, well-formed entry."""


# -- format (pure) -------------------------------------------------------------------------


def entry_name(key: bytes, variant: bytes) -> tuple[str, str]:
    """(fan-out directory relative to the root, file name) of an entry."""
    h = hashlib.blake2b(key, digest_size=16).hexdigest()
    v = hashlib.blake2b(variant, digest_size=8).hexdigest()
    return os.path.join(h[:2], h[2:4]), f"{h}-{v}"


def decode_meta(data: bytes, body_len: int) -> EntryMeta:
    try:
        return decode_meta_shared(data, body_len)
    except BadMeta as exc:
        raise Corrupt(str(exc)) from None


def blocks(body_len: int) -> int:
    return (body_len + BLOCK - 1) >> BLOCK_SHIFT


def file_size(meta_len: int, body_len: int) -> int:
    return HEAD.size + meta_len + body_len + SUM.size * blocks(body_len) + TAIL.size


def parse_head(buf: bytes, size: int) -> tuple[int, int]:
    """(meta_len, body_len) from a file's first bytes; Corrupt unless the file size agrees."""
    if len(buf) < HEAD.size:
        raise Corrupt("short head")
    magic, version, shift, meta_len, body_len = HEAD.unpack_from(buf)
    if magic != MAGIC or version != VERSION or shift != BLOCK_SHIFT or meta_len > MAX_META:
        raise Corrupt("bad head (another format version?)")
    if size != file_size(meta_len, body_len):
        raise Corrupt(f"size {size} does not match the head (truncated?)")
    return meta_len, body_len


def seal_hash(head: bytes, meta: bytes, sums: bytes) -> int:
    h = xxhash.xxh3_64()
    h.update(head)
    h.update(meta)
    h.update(sums)
    return h.intdigest()


def check_tail(head: bytes, meta: bytes, sums: bytes, tail: bytes, body_len: int) -> None:
    if len(tail) != TAIL.size or TAIL.unpack(tail) != (seal_hash(head, meta, sums), body_len, END):
        raise Corrupt("head, meta or block sums damaged")


def first_bad_block(data: bytes | memoryview, sums: bytes, first: int) -> int | None:
    """Index (within ``data``) of the first block of ``data`` whose sum fails, or None.

    ``data`` starts at block ``first`` of the body and holds whole blocks, but for the
    body's last one.
    """
    view = memoryview(data)
    for i, pos in enumerate(range(0, len(view), BLOCK)):
        n = first + i
        if xxhash.xxh3_64_intdigest(view[pos : pos + BLOCK], seed=n) != SUM.unpack_from(sums, n * 8)[0]:
            return i
    return None


class BlockSums:
    """The table of block sums of a body written in pieces of any size."""

    __slots__ = ("_hash", "_filled", "_index", "_sums")

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_64(seed=0)
        self._filled = 0
        self._index = 0
        self._sums = bytearray()

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(BLOCK - self._filled, len(view))
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK:
                self._close_block()

    def finish(self) -> bytes:
        if self._filled:
            self._close_block()
        return bytes(self._sums)

    def _close_block(self) -> None:
        self._sums += SUM.pack(self._hash.intdigest())
        self._index += 1
        self._hash = xxhash.xxh3_64(seed=self._index)
        self._filled = 0


# -- file operations (I/O threads only) ----------------------------------------------------


def ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def open_ro(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def unlink_if_same(path: str, same: Ident) -> None:
    """Delete a file unless another worker has replaced it since (a new inode)."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == same[:2]:
            os.unlink(path)
    except FileNotFoundError:
        pass


def unlink_many(files: list[tuple[str, Ident]]) -> None:
    for path, same in files:
        try:
            unlink_if_same(path, same)
        except OSError:
            pass  # eviction is best effort


def discard(fd: int, tmp: str) -> None:
    try:
        if fd >= 0:
            os.close(fd)
        unlink(tmp)
    except OSError:
        pass


def pread_exact(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)  # short only at end of file: a truncated entry
    if len(data) != n:
        raise Corrupt("short read")
    return data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def load_head(fd: int, size: int) -> tuple[bytes, bytes, EntryMeta]:
    """(head bytes, meta bytes, meta) of an entry file, unchecked beyond its size."""
    buf = os.pread(fd, min(size, HEAD.size + PEEK), 0)
    meta_len, body_len = parse_head(buf, size)
    if len(buf) < HEAD.size + meta_len:
        buf += pread_exact(fd, HEAD.size + meta_len - len(buf), len(buf))
    meta_bytes = buf[HEAD.size : HEAD.size + meta_len]
    return buf[: HEAD.size], meta_bytes, decode_meta(meta_bytes, body_len)


def load_checked_head(fd: int, size: int) -> tuple[EntryMeta, bytes, bytes]:
    """(meta, meta bytes, block sums) with the tail's hash checked: only the body is left to check."""
    head, meta_bytes, meta = load_head(fd, size)
    body_end = HEAD.size + len(meta_bytes) + meta.body_size
    rest = pread_exact(fd, size - body_end, body_end)
    sums, tail = rest[: -TAIL.size], rest[-TAIL.size :]
    check_tail(head, meta_bytes, sums, tail, meta.body_size)
    return meta, meta_bytes, sums


@dataclass(slots=True)
class Opened:
    meta: EntryMeta
    meta_bytes: bytes
    body: bytes | None  # small: read whole and checked
    fd: int  # large: an open descriptor the reader owns (-1 when small)
    sums: bytes  # large: the checked table of block sums
    first: bytes  # large: block 0, checked
    ident: Ident


def open_entry(path: str, key: bytes, variant: bytes) -> Opened | None:
    """Open an entry; None if missing or another key's.  Deletes and raises Corrupt if bad.

    A small body is read whole and checked; of a large one, the head, meta, sums and
    first block are (the rest is checked block by block as it is read).
    """
    fd = open_ro(path)
    if fd is None:
        return None
    keep = False
    try:
        st = os.fstat(fd)
        try:
            whole = os.pread(fd, min(st.st_size, HEAD.size + PEEK), 0)
            meta_len, body_len = parse_head(whole, st.st_size)
            if body_len <= SMALL:
                if len(whole) < st.st_size:
                    whole += pread_exact(fd, st.st_size - len(whole), len(whole))
                meta_bytes = whole[HEAD.size : HEAD.size + meta_len]
                off = HEAD.size + meta_len
                body = whole[off : off + body_len]
                sums = whole[off + body_len : -TAIL.size]
                check_tail(whole[: HEAD.size], meta_bytes, sums, whole[-TAIL.size :], body_len)
                meta = decode_meta(meta_bytes, body_len)
                if (meta.key, meta.variant) != (key, variant):
                    return None  # a hash collision: not ours to judge
                if first_bad_block(body, sums, 0) is not None:
                    raise Corrupt("body block checksum mismatch")
                return Opened(meta, meta_bytes, body, -1, b"", b"", ident(st))
            meta, meta_bytes, sums = load_checked_head(fd, st.st_size)
            if (meta.key, meta.variant) != (key, variant):
                return None
            first = pread_exact(fd, min(BLOCK, meta.body_size), HEAD.size + len(meta_bytes))
            if first_bad_block(first, sums, 0) is not None:
                raise Corrupt("body block checksum mismatch")
            keep = True
            return Opened(meta, meta_bytes, None, fd, sums, first, ident(st))
        except Corrupt:
            unlink_if_same(path, ident(st))
            raise
    finally:
        if not keep:
            os.close(fd)


def read_blocks(
    fd: int, body_off: int, body_len: int, sums: bytes, first: int, count: int
) -> tuple[bytes, bool]:
    """Blocks first .. first+count-1 of a body, checked: (the good ones, was one bad?)."""
    start = first * BLOCK
    data = pread_exact(fd, min(count * BLOCK, body_len - start), body_off + start)
    bad = first_bad_block(data, sums, first)
    if bad is None:
        return data, False
    return data[: bad * BLOCK], True


def create_temp(tmp: str, meta_bytes: bytes) -> int:
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, HEAD.pack(MAGIC, VERSION, BLOCK_SHIFT, len(meta_bytes), 0) + meta_bytes)
    except BaseException:
        discard(fd, tmp)
        raise
    return fd


def seal(fd: int, tmp: str, final: str, meta_bytes: bytes, body_len: int, sums: bytes, sync: bool) -> Ident:
    """Finish a temp file (sums, tail, head) and publish it under its final name; fd is closed."""
    try:
        head = HEAD.pack(MAGIC, VERSION, BLOCK_SHIFT, len(meta_bytes), body_len)
        write_all(fd, sums + TAIL.pack(seal_hash(head, meta_bytes, sums), body_len, END))
        os.pwrite(fd, head, 0)
        if sync:
            os.fsync(fd)
        st = os.fstat(fd)
        os.close(fd)
    except BaseException:
        discard(fd, tmp)
        raise
    try:
        os.replace(tmp, final)
    except BaseException:
        discard(-1, tmp)
        raise
    return ident(st)


def rewrite(path: str, tmp: str, update: EntryMeta, sync: bool) -> Ident | None:
    """Copy an entry's body under new meta (after a 304), checking every block on the way.

    Only while the file still holds ``update.version`` (when given): a newer fill wins.
    """
    src = open_ro(path)
    if src is None:
        return None
    out = -1
    try:
        st = os.fstat(src)
        try:
            meta, old_meta, sums = load_checked_head(src, st.st_size)
            if (meta.key, meta.variant) != (update.key, update.variant):
                return None
            if update.version and update.version != meta.version:
                return ident(st)
            new_meta = encode_meta(replace(update, version=meta.version))
            off, size = HEAD.size + len(old_meta), meta.body_size
            out = create_temp(tmp, new_meta)
            for pos in range(0, size, COPY):
                piece = pread_exact(src, min(COPY, size - pos), off + pos)
                if first_bad_block(piece, sums, pos // BLOCK) is not None:
                    raise Corrupt("body block checksum mismatch")
                write_all(out, piece)
        except Corrupt:
            unlink_if_same(path, ident(st))  # never launder a bad body under a fresh head
            raise
        fd, out = out, -1
        return seal(fd, tmp, path, new_meta, size, sums, sync)
    finally:
        os.close(src)
        if out >= 0:
            discard(out, tmp)


@dataclass(slots=True)
class Found:
    key: bytes
    variant: bytes
    ident: Ident
    used_at: float


def listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def fanout(root: str) -> Iterator[str]:
    def is_fan(name: str) -> bool:
        return len(name) == 2 and all(c in "0123456789abcdef" for c in name)

    for a in filter(is_fan, listdir(root)):
        for b in filter(is_fan, listdir(os.path.join(root, a))):
            yield os.path.join(root, a, b)


def stale_temp(path: str, name: str) -> bool:
    """A fill nobody will finish: its writer's pid is gone, or it has not grown for an hour."""
    try:
        pid = int(name.split("-")[3])  # .tmp-<h>-<v>-<pid>-<random>
        if time.time() - os.stat(path).st_mtime > STALE_TEMP or pid <= 0:
            return True
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return True
    except (FileNotFoundError, PermissionError):  # already gone / a live process of another user
        return False
    return False


def scan(root: str, purge: bytes | None) -> tuple[list[Found], int]:
    """Walk the fan-out reading heads only: drop bad files, and dead fills unless purging.

    With ``purge``, delete the entries whose key starts with it; return (entries left, purged).
    """
    found: list[Found] = []
    purged = 0
    for sub in fanout(root):
        for name in listdir(sub):
            path = os.path.join(sub, name)
            if name.startswith(TMP):
                if purge is None and stale_temp(path, name):
                    unlink(path)
                continue
            fd = None
            try:
                fd = open_ro(path)
                if fd is None:
                    continue
                st = os.fstat(fd)
                _, _, meta = load_head(fd, st.st_size)
            except Corrupt:
                unlink(path)  # a bad file, or one of an older format: a miss either way
                continue
            except OSError:
                continue  # unreadable now; not ours to delete
            finally:
                if fd is not None:
                    os.close(fd)
            if entry_name(meta.key, meta.variant)[1] != name:
                unlink(path)  # misplaced: get() would never find it
            elif purge is not None and meta.key.startswith(purge):
                purged += unlink(path)
            else:
                found.append(Found(meta.key, meta.variant, ident(st), max(st.st_atime, st.st_mtime)))
    return found, purged


def prepare(root: str) -> None:
    """Create the root and prove it writable with a throw-away file."""
    os.makedirs(root, exist_ok=True)
    probe = os.path.join(root, f"{TMP}probe-x-{os.getpid()}-{secrets.token_hex(4)}")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    os.unlink(probe)


def unlink_key(directory: str, prefix: str) -> int:
    return sum(unlink(os.path.join(directory, n)) for n in listdir(directory) if n.startswith(prefix))


def temp_for(final: str) -> str:
    directory, name = os.path.split(final)
    return os.path.join(directory, f"{TMP}{name}-{os.getpid()}-{secrets.token_hex(4)}")
