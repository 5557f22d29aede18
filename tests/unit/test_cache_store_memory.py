"""Memory cache tier: byte-bounded LRU, oversize objects, variants, purges, readers vs eviction."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ferryman.pipeline.cache.lru import LruIndex
from ferryman.pipeline.cache.memory import MemoryStore
from ferryman.pipeline.cache.store import (
    CHUNK,
    ENTRY_OVERHEAD,
    FIELD_OVERHEAD,
    BodyReader,
    EntryMeta,
    entry_cost,
    meta_cost,
)


def meta(key: bytes, variant: bytes = b"", *, size: int = -1, headers: int = 0) -> EntryMeta:
    return EntryMeta(
        key=key,
        variant=variant,
        status=200,
        headers=tuple((b"x-h%d" % i, b"v") for i in range(headers)),
        request_headers=((b"accept-encoding", b"gzip"),) if variant else (),
        request_time=1.0,
        response_time=2.0,
        body_size=size,
    )


async def put(store: MemoryStore, m: EntryMeta, *chunks: bytes) -> bool:
    writer = store.begin(m)
    if writer is None:
        return False
    for chunk in chunks:
        writer.write(chunk)
    return await writer.commit()


async def body_of(reader: BodyReader, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in reader.read_range(start, reader.size if end is None else end)])


async def keys(store: MemoryStore, *candidates: bytes) -> list[bytes]:
    return [k for k in candidates if await store.get(k, b"") is not None]


def test_costs_count_what_an_entry_really_holds() -> None:
    m = replace(meta(b"k", b"v", headers=2), body_size=100)
    # the fixed per-entry overhead + key 1 + variant 1 + 2 response headers (4+1 bytes, twice:
    # meta and a hit's header block) + 1 request header (15+4) + a per-field overhead each
    assert meta_cost(m) == ENTRY_OVERHEAD + 1 + 1 + 2 * (2 * 5 + FIELD_OVERHEAD) + 19 + FIELD_OVERHEAD
    assert entry_cost(m) == meta_cost(m) + 100


async def test_round_trip_stores_meta_with_the_written_size() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_size=1_000)
    assert await put(store, meta(b"k", headers=1), b"hello ", b"world")
    hit = await store.get(b"k", b"")
    assert hit is not None
    m, reader = hit
    assert m == replace(meta(b"k", headers=1), body_size=11, version=m.version) and m.version > 0
    assert reader.size == 11 and reader.offset == 0 and reader.path() is None and reader.fileno() is None
    assert await body_of(reader) == b"hello world"
    assert await body_of(reader, 6, 9) == b"wor"
    assert await store.get(b"k", b"other") is None
    assert await store.get(b"nope", b"") is None


async def test_ranges_come_in_chunks_of_at_most_256_kib() -> None:
    store = MemoryStore(max_bytes=10 << 20, max_object_size=10 << 20)
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    assert await put(store, meta(b"big"), data)
    hit = await store.get(b"big", b"")
    assert hit is not None
    chunks = [c async for c in hit[1].read_range(10, len(data) - 3)]
    assert max(map(len, chunks)) <= CHUNK and len(chunks) == 4
    assert b"".join(chunks) == data[10:-3]
    with pytest.raises(ValueError):
        async for _ in hit[1].read_range(5, len(data) + 1):
            pass


async def test_byte_accounting_and_eviction_order_is_least_recently_used() -> None:
    one = entry_cost(replace(meta(b"a"), body_size=100))
    store = MemoryStore(max_bytes=3 * one, max_object_size=10_000)
    for k in (b"a", b"b", b"c"):
        assert await put(store, meta(k), b"x" * 100)
    assert store.used_bytes == 3 * one and len(store) == 3
    assert await store.get(b"a", b"") is not None  # a is now the most recent: b is next out
    assert await put(store, meta(b"d"), b"x" * 100)
    assert await keys(store, b"a", b"b", b"c", b"d") == [b"a", b"c", b"d"]
    assert store.used_bytes == 3 * one
    # a bigger entry pushes out as many old ones as it needs, oldest first (c, then a)
    assert await put(store, meta(b"e"), b"x" * (one + 50))
    assert await keys(store, b"a", b"c", b"d", b"e") == [b"d", b"e"]
    assert store.used_bytes == one + entry_cost(replace(meta(b"e"), body_size=one + 50))


async def test_replacing_an_entry_releases_its_old_bytes() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_size=1_000)
    assert await put(store, meta(b"k"), b"x" * 500)
    assert await put(store, meta(b"k"), b"y" * 10)
    assert store.used_bytes == entry_cost(replace(meta(b"k"), body_size=10)) and len(store) == 1
    hit = await store.get(b"k", b"")
    assert hit is not None and await body_of(hit[1]) == b"y" * 10


async def test_oversize_objects_are_never_stored() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    assert store.begin(meta(b"hinted", size=1_001)) is None  # Content-Length already too big
    writer = store.begin(meta(b"grows"))
    assert writer is not None
    writer.write(b"x" * 600)
    writer.write(b"x" * 600)  # past the limit: the writer aborts itself
    writer.write(b"x")
    assert await writer.commit() is False
    assert await store.get(b"grows", b"") is None and store.used_bytes == 0
    assert await put(store, meta(b"exact"), b"x" * 1_000)
    # an object within max_object_size but larger than the whole store is refused too
    tiny = MemoryStore(max_bytes=50, max_object_size=1_000)
    assert await put(tiny, meta(b"k"), b"x" * 100) is False
    assert len(tiny) == 0 and tiny.used_bytes == 0


async def test_aborted_writer_stores_nothing_and_commit_is_once() -> None:
    store = MemoryStore(max_bytes=10_000, max_object_size=1_000)
    writer = store.begin(meta(b"k"))
    assert writer is not None
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    assert await writer.commit() is False
    assert await store.get(b"k", b"") is None
    writer = store.begin(meta(b"k"))
    assert writer is not None
    assert await writer.commit() is True  # an empty body is a body
    assert await writer.commit() is False


async def test_variants_are_stored_side_by_side_and_deleted_together() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    assert await put(store, meta(b"k", b"gzip"), b"zipped")
    assert await put(store, meta(b"k", b"br"), b"brotli")
    assert await put(store, meta(b"k2"), b"other")
    gz, br = await store.get(b"k", b"gzip"), await store.get(b"k", b"br")
    assert gz is not None and br is not None
    assert gz[0].variant == b"gzip" and await body_of(gz[1]) == b"zipped"
    assert await body_of(br[1]) == b"brotli"
    assert await store.get(b"k", b"") is None
    assert await store.delete(b"k") == 2
    assert await store.get(b"k", b"gzip") is None and await store.get(b"k", b"br") is None
    assert await store.delete(b"k") == 0
    assert len(store) == 1 and store.used_bytes == entry_cost(replace(meta(b"k2"), body_size=5))


async def test_purge_prefix_removes_every_matching_key_and_variant() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    slots = [(b"GET http://a/x/1", b""), (b"GET http://a/x/2", b"gz"), (b"GET http://a/x/2", b"br")]
    slots += [(b"GET http://a/y", b""), (b"GET http://b/x/1", b"")]
    for k, v in slots:
        assert await put(store, meta(k, v), b"body")
    assert await store.purge_prefix(b"GET http://a/x/") == 3
    assert await keys(store, b"GET http://a/x/1", b"GET http://a/y", b"GET http://b/x/1") == [
        b"GET http://a/y",
        b"GET http://b/x/1",
    ]
    assert await store.purge_prefix(b"") == 2
    assert len(store) == 0 and store.used_bytes == 0


async def test_a_purge_cancels_fills_in_progress_for_matching_keys() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    doomed, kept = store.begin(meta(b"/a/1")), store.begin(meta(b"/b/1"))
    assert doomed is not None and kept is not None
    doomed.write(b"stale")
    kept.write(b"fresh")
    assert await store.purge_prefix(b"/a/") == 0
    assert await doomed.commit() is False and await kept.commit() is True
    assert await keys(store, b"/a/1", b"/b/1") == [b"/b/1"]


async def test_a_reader_survives_eviction_and_replacement() -> None:
    store = MemoryStore(max_bytes=2_000, max_object_size=1_000)
    assert await put(store, meta(b"old"), b"A" * 900)
    hit = await store.get(b"old", b"")
    assert hit is not None
    stream = hit[1].read_range(0, 900)
    first = await anext(stream)
    assert await put(store, meta(b"new1"), b"B" * 900)
    assert await put(store, meta(b"new2"), b"C" * 900)  # evicts "old"
    assert await store.get(b"old", b"") is None
    rest = b"".join([c async for c in stream])
    assert first + rest == b"A" * 900
    hit2 = await store.get(b"new2", b"")
    assert hit2 is not None
    assert await store.delete(b"new2") == 1
    assert await body_of(hit2[1]) == b"C" * 900


async def test_update_meta_after_304_keeps_the_body_and_refreshes_recency() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    assert await put(store, meta(b"k"), b"body")
    assert await put(store, meta(b"other"), b"x")
    fresh = replace(meta(b"k", headers=3), response_time=99.0, body_size=12345)
    await store.update_meta(b"k", b"", fresh)
    hit = await store.get(b"k", b"")
    assert hit is not None
    assert hit[0] == replace(fresh, body_size=4, version=hit[0].version) and await body_of(hit[1]) == b"body"
    assert store.used_bytes == entry_cost(hit[0]) + entry_cost(replace(meta(b"other"), body_size=1))
    await store.update_meta(b"missing", b"", fresh)  # nothing to update: no entry appears
    assert await store.get(b"missing", b"") is None


async def test_close_refuses_new_fills_and_empties_the_store() -> None:
    store = MemoryStore(max_bytes=100_000, max_object_size=1_000)
    assert await put(store, meta(b"k"), b"body")
    pending = store.begin(meta(b"p"))
    assert pending is not None
    await store.close()
    assert store.begin(meta(b"q")) is None and await pending.commit() is False
    assert await store.get(b"k", b"") is None and store.used_bytes == 0


def test_lru_index_is_ordered_by_use_and_groups_variants() -> None:
    lru: LruIndex[str] = LruIndex(max_bytes=10)
    assert lru.put(b"a", b"", "a", 4) == []
    assert lru.put(b"b", b"1", "b1", 3) == []
    assert lru.put(b"b", b"2", "b2", 3) == []
    assert lru.get(b"a", b"") == "a"  # a becomes most recent
    assert lru.put(b"c", b"", "c", 3) == [((b"b", b"1"), "b1")]
    assert list(lru) == [(b"b", b"2"), (b"a", b""), (b"c", b"")]
    assert lru.get(b"b", b"2", touch=False) == "b2" and list(lru)[0] == (b"b", b"2")
    assert lru.pop_key(b"b") == ["b2"] and lru.used == 7
    assert lru.keys_with_prefix(b"") == [b"a", b"c"]


async def test_each_fill_is_a_new_version_and_update_meta_only_refreshes_its_own() -> None:
    store = MemoryStore(1 << 20, 1 << 20)
    assert await put(store, meta(b"k"), b"one")
    first = store.get_nowait(b"k", b"")
    assert first is not None and first[0].version > 0
    assert await put(store, meta(b"k"), b"two")  # another fill replaces it: a new version
    second = store.get_nowait(b"k", b"")
    assert second is not None and second[0].version not in (0, first[0].version)
    # A 304 for the replaced version must not re-head the new body.
    await store.update_meta(b"k", b"", replace(meta(b"k", headers=2), version=first[0].version))
    now = store.get_nowait(b"k", b"")
    assert now is not None and now[0] == second[0]
    await store.update_meta(b"k", b"", replace(meta(b"k", headers=2), version=second[0].version))
    now = store.get_nowait(b"k", b"")
    assert now is not None and now[0].headers == meta(b"k", headers=2).headers
    assert now[0].version == second[0].version and now[1].slice(0, 3) == b"two"


def test_lru_index_caps_entries_and_variants_per_key_least_recently_used_first() -> None:
    lru: LruIndex[str] = LruIndex(1 << 30, max_entries=4, max_variants=3)
    for v in (b"a", b"b", b"c"):
        assert lru.put(b"k", v, v.decode(), 1) == []
    assert lru.get(b"k", b"a") == "a"  # a is now the most recent variant of k
    assert lru.put(b"k", b"d", "d", 1) == [((b"k", b"b"), "b")]
    assert sorted(lru.variants(b"k")) == [b"a", b"c", b"d"]
    assert lru.put(b"plain", b"", "p", 1) == []  # 4 entries: the cap
    assert lru.put(b"other", b"", "o", 1) == [((b"k", b"c"), "c")]  # past max_entries: the LRU slot
    assert len(lru) == 4 and lru.variants(b"plain") == [b""] and lru.variants(b"nothing") == []
    assert sorted(lru.pop_key(b"k")) == ["a", "d"] and len(lru) == 2
    # a key stored without Vary, then with: both variants listed and capped together
    lru2: LruIndex[str] = LruIndex(1 << 30, max_variants=2)
    lru2.put(b"k", b"", "plain", 1)
    lru2.put(b"k", b"x", "x", 1)
    assert lru2.put(b"k", b"y", "y", 1) == [((b"k", b""), "plain")]


async def test_the_memory_store_reports_what_it_evicts() -> None:
    gone: list[tuple[bytes, bytes]] = []
    store = MemoryStore(max_bytes=1 << 30, max_object_size=1_000, max_entries=2, max_variants=2)
    store.on_evict = lambda k, v: gone.append((k, v))
    for k in (b"a", b"b", b"c"):
        assert await put(store, meta(k), b"x")
    assert gone == [(b"a", b"")] and len(store) == 2
    for v in (b"1", b"2", b"3"):
        assert await put(store, meta(b"v", v), b"y")
    assert (b"v", b"1") in gone and await store.get(b"v", b"1") is None
    assert await store.get(b"v", b"3") is not None
