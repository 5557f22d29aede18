"""Disk cache tier on real files: format, persistence, corruption, crashes, races, failures."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import xxhash

from ferryman.pipeline.cache import disk_writer
from ferryman.pipeline.cache.disk import DiskStore, entry_name
from ferryman.pipeline.cache.store import CHUNK, BodyReader, CacheEntryCorrupt, EntryMeta

SRC = Path(__file__).resolve().parents[2] / "src"
BIG = 2 * 1024 * 1024 + 123  # above the 1 MiB read-whole limit: checked while streaming
HEAD, TAIL, BLOCK = 24, 20, 65536


def body_span(raw: bytes | bytearray) -> tuple[int, int]:
    """(start, end) of the body in an entry file: head | meta | body | sums | tail."""
    meta_len, body_len = struct.unpack(">IQ", raw[12:HEAD])
    return HEAD + meta_len, HEAD + meta_len + body_len


def meta(key: bytes, variant: bytes = b"", size: int = -1) -> EntryMeta:
    return EntryMeta(
        key=key,
        variant=variant,
        status=200,
        headers=((b"content-type", b"text/plain"), (b"x-bytes", bytes(range(1, 256)))),
        request_headers=((b"accept-encoding", variant),) if variant else (),
        request_time=1700000000.25,
        response_time=1700000000.5,
        body_size=size,
    )


def pattern(n: int, seed: int = 0) -> bytes:
    return (bytes(range(seed % 251, 251)) + bytes(range(seed % 251))) * (n // 251) + b"z" * (n % 251)


async def put(store: DiskStore, m: EntryMeta, body: bytes, piece: int = 100_000) -> bool:
    writer = store.begin(m)
    if writer is None:
        return False
    for i in range(0, len(body), piece):
        writer.write(body[i : i + piece])
    return await writer.commit()


async def read_all(reader: BodyReader, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in reader.read_range(start, reader.size if end is None else end)])


async def body(store: DiskStore, key: bytes, variant: bytes = b"") -> bytes | None:
    hit = await store.get(key, variant)
    return None if hit is None else await read_all(hit[1])


def file_of(root: Path, key: bytes, variant: bytes = b"") -> Path:
    sub, name = entry_name(key, variant)
    return root / sub / name


def files(root: Path, temp: bool = False) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.startswith(".tmp-") == temp)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
async def store(root: Path) -> AsyncIterator[DiskStore]:
    s = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await s.open()
    yield s
    await s.close()


async def test_round_trip_and_the_file_format(store: DiskStore, root: Path) -> None:
    data = pattern(5000)
    assert await put(store, meta(b"GET http://a/x"), data, piece=777)
    hit = await store.get(b"GET http://a/x", b"")
    assert hit is not None
    m, reader = hit
    assert m == replace(meta(b"GET http://a/x"), body_size=5000, version=m.version) and m.version > 0
    assert (
        reader.size == 5000
        and await read_all(reader) == data
        and await read_all(reader, 10, 20) == data[10:20]
    )
    # one file, in <root>/<h[:2]>/<h[2:4]>/, laid out as head | meta | body | tail
    path = file_of(root, b"GET http://a/x")
    assert files(root) == [path] and path.parent.parent.parent == root
    raw = path.read_bytes()
    magic, version, shift, meta_len, body_len = struct.unpack(">8sHHIQ", raw[:HEAD])
    assert (magic, version, shift, body_len) == (b"FRYCACHE", 3, 16, 5000)
    meta_bytes = raw[HEAD : HEAD + meta_len]
    assert json.loads(meta_bytes)["k"] == "GET http://a/x"
    assert raw[HEAD + meta_len : HEAD + meta_len + 5000] == data
    sums = raw[HEAD + meta_len + 5000 : -TAIL]  # one 64 KiB block: one sum, seeded with its index
    assert sums == struct.pack(">Q", xxhash.xxh3_64_intdigest(data, seed=0))
    sealed = xxhash.xxh3_64_intdigest(raw[: HEAD + meta_len] + sums)
    assert struct.unpack(">QQ4s", raw[-TAIL:]) == (sealed, 5000, b"FEND")
    assert store.used_bytes == len(raw) and len(store) == 1


async def test_large_bodies_stream_checked_and_never_offer_sendfile(store: DiskStore, root: Path) -> None:
    data = pattern(BIG, 7)
    assert await put(store, meta(b"big"), data)
    for _ in range(2):  # a second read checks again: nothing is trusted from the first
        hit = await store.get(b"big", b"")
        assert hit is not None
        reader = hit[1]
        assert reader.size == BIG and reader.path() is None and reader.fileno() is None
        chunks = [c async for c in reader.read_range(0, BIG)]
        assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK
        assert reader.path() is None and reader.fileno() is None
        for start, end in ((BIG - CHUNK - 5, BIG - 3), (1, 2), (BLOCK - 1, BLOCK + 1), (0, BIG), (BIG, BIG)):
            assert await read_all(reader, start, end) == data[start:end]
        reader.close()


async def test_entries_persist_across_a_new_store_on_the_same_directory(root: Path) -> None:
    first = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await first.open()
    assert await put(first, meta(b"k", b"gzip"), b"zipped")
    assert await put(first, meta(b"k", b"br"), b"brotli")
    assert await put(first, meta(b"big"), pattern(BIG))
    used = first.used_bytes
    await first.close()
    second = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await second.open()
    try:
        assert len(second) == 3 and second.used_bytes == used
        hit = await second.get(b"k", b"br")
        assert hit is not None and hit[0] == replace(meta(b"k", b"br"), body_size=6, version=hit[0].version)
        assert await read_all(hit[1]) == b"brotli"
        assert await body(second, b"big") == pattern(BIG)
    finally:
        await second.close()


@pytest.mark.parametrize("size", [3000, BIG])
async def test_a_truncated_file_is_a_miss_and_is_removed(store: DiskStore, root: Path, size: int) -> None:
    assert await put(store, meta(b"k"), pattern(size))
    path = file_of(root, b"k")
    os.truncate(path, path.stat().st_size - 5)
    assert await store.get(b"k", b"") is None
    assert not path.exists() and len(store) == 0


async def test_a_file_truncated_under_an_open_reader_never_completes(store: DiskStore, root: Path) -> None:
    assert await put(store, meta(b"k"), pattern(BIG))
    hit = await store.get(b"k", b"")
    assert hit is not None
    path = file_of(root, b"k")
    os.truncate(path, body_span(path.read_bytes())[1] - 10)  # into the body's last block
    got = bytearray()
    with pytest.raises(CacheEntryCorrupt):
        async for chunk in hit[1].read_range(0, BIG):
            got += chunk
    assert len(got) < BIG and not path.exists()


async def test_a_corrupt_small_body_is_a_miss_and_is_removed(store: DiskStore, root: Path) -> None:
    assert await put(store, meta(b"k"), pattern(3000))
    path = file_of(root, b"k")
    raw = bytearray(path.read_bytes())
    raw[body_span(raw)[1] - 100] ^= 0x01
    path.write_bytes(raw)
    assert await store.get(b"k", b"") is None
    assert not path.exists()


async def test_a_corrupt_large_body_is_never_served_complete(store: DiskStore, root: Path) -> None:
    data = pattern(BIG, 3)
    assert await put(store, meta(b"k"), data)
    path = file_of(root, b"k")
    raw = bytearray(path.read_bytes())
    raw[body_span(raw)[1] - 1] ^= 0x40  # the very last body byte: every block but the last is good
    path.write_bytes(raw)
    hit = await store.get(b"k", b"")
    assert hit is not None  # the head is fine; the body is checked as it streams
    got = bytearray()
    with pytest.raises(CacheEntryCorrupt):
        async for chunk in hit[1].read_range(0, BIG):
            got += chunk
    assert len(got) < BIG and data.startswith(got)  # the consumer can tell: short, then an error
    assert not path.exists() and await store.get(b"k", b"") is None


async def test_a_range_is_served_from_checked_blocks_and_stops_at_a_bad_one(
    store: DiskStore, root: Path
) -> None:
    data = pattern(BIG)
    assert await put(store, meta(b"k"), data)
    path = file_of(root, b"k")
    raw = bytearray(path.read_bytes())
    start, _ = body_span(raw)
    bad = 10 * BLOCK + 5  # in block 10
    raw[start + bad] ^= 0x01
    path.write_bytes(raw)
    hit = await store.get(b"k", b"")
    assert hit is not None
    # Far from the damage: its blocks check out, so it is served.
    assert await read_all(hit[1], 100, 200) == data[100:200]
    assert await read_all(hit[1], 12 * BLOCK, 13 * BLOCK + 7) == data[12 * BLOCK : 13 * BLOCK + 7]
    # Across it: only the bytes before the bad block come out, then the error.
    got = bytearray()
    with pytest.raises(CacheEntryCorrupt):
        async for chunk in hit[1].read_range(3 * BLOCK + 1, BIG):
            got += chunk
    assert bytes(got) == data[3 * BLOCK + 1 : 10 * BLOCK]
    assert not path.exists() and await store.get(b"k", b"") is None


async def test_bad_and_stale_files_are_cleaned_at_start(root: Path, tmp_path: Path) -> None:
    first = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await first.open()
    assert await put(first, meta(b"good"), b"good body")
    assert await put(first, meta(b"cut"), pattern(BIG))
    await first.close()
    cut = file_of(root, b"cut")
    os.truncate(cut, cut.stat().st_size - 1)  # found from its head alone: the body is not read
    good = file_of(root, b"good")
    directory = good.parent
    dead_pid = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))  # reaped
    crashed = directory / f".tmp-{good.name}-{dead_pid}-0badf00d"
    crashed.write_bytes(b"FRYCACHE half a fill")
    old_live = directory / f".tmp-{good.name}-{os.getpid()}-00000001"
    old_live.write_bytes(b"")
    os.utime(old_live, (time.time() - 7200, time.time() - 7200))
    live = directory / f".tmp-{good.name}-{os.getpid()}-00000002"  # a sibling's fill in progress
    live.write_bytes(b"")
    junk = directory / ("0" * 32 + "-" + "0" * 16)
    junk.write_bytes(b"not a cache file at all")
    misplaced = directory / ("f" * 32 + "-" + "f" * 16)
    misplaced.write_bytes(good.read_bytes())
    second = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await second.open()
    try:
        assert files(root) == [good] and files(root, temp=True) == [live]
        assert len(second) == 1 and await body(second, b"good") == b"good body"
    finally:
        await second.close()


async def test_eviction_by_size_removes_the_least_recently_used_files(root: Path) -> None:
    probe = DiskStore(root, max_bytes=1 << 20, max_object_size=1 << 20)
    await probe.open()
    assert await put(probe, meta(b"a"), b"x" * 1000)
    one = probe.used_bytes
    await probe.close()
    store = DiskStore(root, max_bytes=3 * one, max_object_size=1 << 20)
    await store.open()
    for k in (b"b", b"c"):
        assert await put(store, meta(k), b"x" * 1000)
    assert await store.get(b"a", b"") is not None  # a is now the most recent: b goes next
    assert await put(store, meta(b"d"), b"x" * 1000)
    assert store.used_bytes == 3 * one
    await store.close()  # waits for the background unlinks
    assert files(root) == sorted(file_of(root, k) for k in (b"a", b"c", b"d"))
    # at start, recency comes from the files' times: the oldest go first under a smaller cap
    for age, k in enumerate((b"d", b"a", b"c")):
        os.utime(file_of(root, k), (time.time() - 1000 * (age + 1),) * 2)
    small = DiskStore(root, max_bytes=2 * one, max_object_size=1 << 20)
    await small.open()
    await small.close()
    assert files(root) == sorted(file_of(root, k) for k in (b"d", b"a"))


async def test_a_file_deleted_behind_the_index_is_a_miss(store: DiskStore, root: Path) -> None:
    assert await put(store, meta(b"small"), b"body")
    assert await put(store, meta(b"big"), pattern(BIG))
    assert len(store) == 2
    file_of(root, b"small").unlink()  # another worker evicted it
    assert await store.get(b"small", b"") is None and len(store) == 1
    hit = await store.get(b"big", b"")
    assert hit is not None
    file_of(root, b"big").unlink()  # evicted while a reader holds it: the reader still finishes
    assert await read_all(hit[1]) == pattern(BIG)
    assert await store.get(b"big", b"") is None and len(store) == 0


async def test_workers_see_each_others_fills_deletes_and_purges(root: Path) -> None:
    one = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    two = DiskStore(root, max_bytes=64 << 20, max_object_size=16 << 20)
    await one.open()
    await two.open()
    try:
        assert await put(one, meta(b"/a/1", b"gzip"), b"v1")
        assert await put(two, meta(b"/a/1", b"br"), b"v2")
        assert await put(two, meta(b"/a/2"), b"v3")
        assert await put(two, meta(b"/b/1"), b"v4")
        assert await body(one, b"/a/1", b"br") == b"v2"  # not in one's index: found on disk
        assert await one.delete(b"/a/1") == 2  # both variants, whoever wrote them
        assert await two.get(b"/a/1", b"br") is None
        assert await one.purge_prefix(b"/a/") == 1  # /a/2, written by two
        assert await two.get(b"/a/2", b"") is None and await body(two, b"/b/1") == b"v4"
    finally:
        await one.close()
        await two.close()


async def test_update_meta_rewrites_the_head_and_keeps_the_body(store: DiskStore, root: Path) -> None:
    data = pattern(BIG, 9)
    assert await put(store, meta(b"k"), data)
    fresh = replace(meta(b"k"), headers=((b"etag", b'"v2"'),), response_time=1800000000.0, body_size=0)
    await store.update_meta(b"k", b"", fresh)
    hit = await store.get(b"k", b"")
    assert hit is not None and hit[0] == replace(fresh, body_size=BIG, version=hit[0].version)
    assert await read_all(hit[1]) == data
    assert files(root) == [file_of(root, b"k")] and files(root, temp=True) == []
    await store.update_meta(b"missing", b"", fresh)  # nothing to update: no entry appears
    assert await store.get(b"missing", b"") is None


async def test_update_meta_never_launders_a_corrupt_body(store: DiskStore, root: Path) -> None:
    assert await put(store, meta(b"k"), pattern(3000))
    path = file_of(root, b"k")
    raw = bytearray(path.read_bytes())
    raw[body_span(raw)[1] - 1] ^= 0x01
    path.write_bytes(raw)
    await store.update_meta(b"k", b"", replace(meta(b"k"), response_time=2e9))
    assert not path.exists() and files(root, temp=True) == []
    assert await store.get(b"k", b"") is None


async def test_oversize_and_aborted_fills_leave_nothing(store: DiskStore, root: Path) -> None:
    assert store.begin(meta(b"hinted", size=(16 << 20) + 1)) is None
    grows = store.begin(meta(b"grows"))
    aborted = store.begin(meta(b"aborted"))
    assert grows is not None and aborted is not None
    for _ in range(17):
        grows.write(b"x" * (1 << 20))  # past max_object_size: aborts itself
    aborted.write(b"y" * (1 << 20))
    aborted.abort()
    assert await grows.commit() is False and await aborted.commit() is False
    await store.close()
    assert files(root) == [] and files(root, temp=True) == []


async def test_an_unusable_directory_degrades_to_pass_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = DiskStore(tmp_path / "file" / "cache", max_bytes=1 << 20, max_object_size=1 << 20)
    with caplog.at_level(logging.ERROR, logger="ferryman"):
        await store.open()  # ENOTDIR: no exception
        assert store.begin(meta(b"k")) is None
        assert await store.get(b"k", b"") is None
        assert await store.delete(b"k") == 0 and await store.purge_prefix(b"") == 0
        await store.close()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


@pytest.mark.parametrize("where", ["create", "write"])
async def test_a_full_or_forbidden_disk_fails_fills_quietly(
    store: DiskStore,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    def create(tmp: str, meta_bytes: bytes) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", tmp)

    def write(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "create":
        monkeypatch.setattr(disk_writer, "_create_temp", create)
    else:
        monkeypatch.setattr(disk_writer, "_write_all", write)
    with caplog.at_level(logging.ERROR, logger="ferryman"):
        big = store.begin(meta(b"big"))
        assert big is not None
        for _ in range(8):
            big.write(b"x" * CHUNK)  # the I/O thread fails; the writer notices and gives up
        assert await big.commit() is False
        assert store.begin(meta(b"next")) is None  # writes are off for a while
        assert await store.get(b"big", b"") is None
        await store.close()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert files(root) == [] and files(root, temp=True) == []


CHILD = """
import asyncio, os, sys
from ferryman.pipeline.cache.disk import DiskStore
from ferryman.pipeline.cache.store import EntryMeta

def meta(key):
    return EntryMeta(key, b"", 200, ((b"content-type", b"text/plain"),), (), 1.0, 2.0, -1)

def temp_bytes(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(root) for n in ns
               if n.startswith(".tmp-"))

async def main(root, committed):
    store = DiskStore(root, 1 << 30, 1 << 30)
    await store.open()
    writer = store.begin(meta(b"committed"))
    writer.write(committed)
    assert await writer.commit()
    writer = store.begin(meta(b"doomed"))
    writer.write(b"D" * 1_000_000)
    while temp_bytes(root) < 1_000_000:
        await asyncio.sleep(0.005)
    print("writing", flush=True)
    while True:  # a slow upstream: the fill never ends
        writer.write(b"D" * 65536)
        await asyncio.sleep(0.01)

asyncio.run(main(sys.argv[1], bytes(range(256)) * 12000))
"""


async def test_a_worker_killed_mid_fill_leaves_no_entry_and_no_temp_file(root: Path) -> None:
    committed = bytes(range(256)) * 12000  # 3 MB: checked while it streams
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # ready: the doomed fill is on disk and growing
        assert line == b"writing\n", proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert files(root, temp=True) != []  # the crash left its half-written fill behind
    store = DiskStore(root, max_bytes=1 << 30, max_object_size=1 << 30)
    await store.open()
    try:
        assert files(root, temp=True) == [] and files(root) == [file_of(root, b"committed")]
        assert await store.get(b"doomed", b"") is None
        hit = await store.get(b"committed", b"")
        assert hit is not None and hit[0].body_size == len(committed)
        assert await read_all(hit[1]) == committed
    finally:
        await store.close()
