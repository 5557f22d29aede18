"""Redis cache tier against a real redis-server: layout, sharing, corruption, outages, the breaker."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ferryman.pipeline.cache.redis_format import key_hash, variant_hash
from ferryman.pipeline.cache.redis_store import RedisStore
from ferryman.pipeline.cache.store import BodyReader, EntryMeta
from tests.helpers.procs import free_port
from tests.helpers.wait import wait_for, wait_for_async

BIG = 2 * 1024 * 1024 + 77  # above the 1 MiB inline limit: a second round trip, its own field
MAX = 4 * 1024 * 1024


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port: no persistence, stopped at the end."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed (.ci/run installs redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc

        def pong() -> bool:  # ready when it answers PING
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False

        try:
            wait_for(pong, 10, f"redis-server on port {self.port} to answer PING")
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


# Tests that are not about time give Redis all the time a loaded machine needs: with the
# default 0.25 s a slow round trip is an outage (a miss, nothing deleted, the breaker open).
STEADY = 5.0


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, MAX, op_timeout=STEADY)
    yield s
    await s.close()


@pytest.fixture
async def timed_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """The default op_timeout (0.25 s), for the tests of outages and the breaker."""
    s = RedisStore(redis_server.url, MAX)
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_server.url)
    yield r
    await r.aclose()


def meta(key: bytes, variant: bytes = b"", size: int = -1, tag: bytes = b"1") -> EntryMeta:
    return EntryMeta(
        key=key,
        variant=variant,
        status=200,
        headers=((b"content-type", b"text/plain"), (b"x-tag", tag), (b"x-bytes", bytes(range(1, 256)))),
        request_headers=((b"accept-encoding", variant),) if variant else (),
        request_time=1700000000.25,
        response_time=1700000000.5,
        body_size=size,
    )


def pattern(n: int, seed: int = 0) -> bytes:
    return (bytes(range(seed % 251, 251)) + bytes(range(seed % 251))) * (n // 251) + b"z" * (n % 251)


async def put(store: RedisStore, m: EntryMeta, body: bytes, piece: int = 100_000) -> bool:
    writer = store.begin(m)
    if writer is None:
        return False
    for i in range(0, len(body), piece):
        writer.write(body[i : i + piece])
    return await writer.commit()


async def read_all(reader: BodyReader, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in reader.read_range(start, reader.size if end is None else end)])


async def body(store: RedisStore, key: bytes, variant: bytes = b"") -> bytes | None:
    got = await store.get(key, variant)
    if got is None:
        return None
    return await read_all(got[1])


def entry_name(key: bytes, variant: bytes = b"") -> bytes:
    return b"ferryman:e:" + key_hash(key) + b":" + variant_hash(variant)


# -- the protocol --------------------------------------------------------------------------


async def test_round_trip_small_and_large_bodies(store: RedisStore, raw: Redis) -> None:
    small, large = b"hello world", pattern(BIG)
    assert await put(store, meta(b"http://a/small", size=len(small)), small)
    assert await put(store, meta(b"http://a/large"), large)
    for key, data in ((b"http://a/small", small), (b"http://a/large", large)):
        got = await store.get(key, b"")
        assert got is not None
        m, reader = got
        # every header byte round-trips; body_size is what was written
        assert m == replace(meta(key, size=len(data)), version=m.version)
        assert reader.size == len(data) and reader.path() is None and reader.fileno() is None
        assert await read_all(reader) == data
        assert await read_all(reader, 5, 9) == data[5:9]
    assert await store.get(b"http://a/none", b"") is None
    # the layout: one hash per entry (inline body vs a separate field), a set of variants per key
    assert await raw.hkeys(entry_name(b"http://a/small")) == [b"m"]
    assert sorted(await raw.hkeys(entry_name(b"http://a/large"))) == [b"b", b"m"]
    assert await raw.zrange(b"ferryman:v:http://a/small", 0, -1) == [variant_hash(b"")]


async def test_entries_and_sets_expire_after_ttl(redis_server: RedisServer, raw: Redis) -> None:
    s = RedisStore(redis_server.url, MAX, prefix=b"t:", ttl=120, op_timeout=STEADY)
    try:
        assert await put(s, meta(b"http://a/t"), b"x")
        assert 0 < await raw.ttl(b"t:e:" + key_hash(b"http://a/t") + b":" + variant_hash(b"")) <= 120
        assert 0 < await raw.ttl(b"t:v:http://a/t") <= 120
    finally:
        await s.close()


async def test_variants_are_kept_apart_and_replaced_in_place(store: RedisStore) -> None:
    assert await put(store, meta(b"http://a/v", b"gzip"), b"zipped")
    assert await put(store, meta(b"http://a/v", b"br"), b"brotli")
    assert await body(store, b"http://a/v", b"gzip") == b"zipped"
    assert await body(store, b"http://a/v", b"br") == b"brotli"
    assert await store.get(b"http://a/v", b"") is None
    # a large body replaced by a small one: the old body field must not survive
    assert await put(store, meta(b"http://a/v", b"br"), pattern(BIG))
    assert await put(store, meta(b"http://a/v", b"br", tag=b"2"), b"small again")
    got = await store.get(b"http://a/v", b"br")
    assert got is not None and dict(got[0].headers)[b"x-tag"] == b"2"
    assert await read_all(got[1]) == b"small again"


async def test_metas_lists_every_variant_for_other_instances(
    store: RedisStore, redis_server: RedisServer
) -> None:
    for v in (b"gzip", b"br"):
        assert await put(store, meta(b"http://a/m", v), b"body " + v)
    # A second instance: knows nothing locally.
    other = RedisStore(redis_server.url, 64 << 20, op_timeout=STEADY)
    try:
        assert sorted(m.variant for m in await other.metas(b"http://a/m")) == [b"br", b"gzip"]
        assert await other.metas(b"http://a/none") == []
    finally:
        await other.close()


async def test_delete_removes_every_variant(store: RedisStore, raw: Redis) -> None:
    for v in (b"", b"gzip", b"br"):
        assert await put(store, meta(b"http://a/d", v), b"body " + v)
    assert await put(store, meta(b"http://a/keep"), b"other")
    assert await store.delete(b"http://a/d") == 3
    for v in (b"", b"gzip", b"br"):
        assert await store.get(b"http://a/d", v) is None
    assert not await raw.exists(b"ferryman:v:http://a/d")
    assert await store.delete(b"http://a/d") == 0
    assert await body(store, b"http://a/keep") == b"other"


async def test_delete_aborts_a_fill_in_progress(store: RedisStore) -> None:
    writer = store.begin(meta(b"http://a/f"))
    assert writer is not None
    writer.write(b"partial")
    await store.delete(b"http://a/f")
    assert await writer.commit() is False
    assert await store.get(b"http://a/f", b"") is None


async def test_purge_prefix_matches_the_prefix_literally(store: RedisStore) -> None:
    keys = [b"http://a/x", b"http://a/y?q=1", b"http://a/[*]?", b"http://b/x", b"http://c/*x", b"http://c/ax"]
    for k in keys:
        assert await put(store, meta(k), k)
    assert await put(store, meta(b"http://a/x", b"gzip"), b"gz")
    assert await store.purge_prefix(b"http://a/") == 4
    assert [k for k in keys if await store.get(k, b"") is not None] == keys[3:]
    assert await store.purge_prefix(b"http://c/*") == 1  # a glob character is just a character
    assert await body(store, b"http://c/ax") == b"http://c/ax"
    assert await store.purge_prefix(b"http://nothing/") == 0


async def test_oversize_refused_or_aborted(store: RedisStore, raw: Redis) -> None:
    assert store.begin(meta(b"http://a/o", size=MAX + 1)) is None  # a Content-Length above the limit
    writer = store.begin(meta(b"http://a/o"))
    assert writer is not None
    writer.write(b"x" * MAX)
    writer.write(b"x")  # one byte too many: the writer aborts itself
    assert await writer.commit() is False
    assert await store.get(b"http://a/o", b"") is None
    assert await raw.exists(entry_name(b"http://a/o")) == 0
    assert await put(store, meta(b"http://a/o"), b"x" * MAX)  # exactly the limit is fine


async def test_abort_discards(store: RedisStore) -> None:
    writer = store.begin(meta(b"http://a/ab"))
    assert writer is not None
    writer.write(b"abc")
    writer.abort()
    writer.abort()
    assert await writer.commit() is False
    assert await store.get(b"http://a/ab", b"") is None


async def test_update_meta_keeps_the_body(store: RedisStore) -> None:
    for key, data in ((b"http://a/u1", b"small"), (b"http://a/u2", pattern(BIG, 3))):
        assert await put(store, meta(key), data)
        await store.update_meta(key, b"", meta(key, tag=b"fresh"))
        got = await store.get(key, b"")
        assert got is not None
        assert dict(got[0].headers)[b"x-tag"] == b"fresh" and got[0].body_size == len(data)
        assert await read_all(got[1]) == data
    await store.update_meta(b"http://a/none", b"", meta(b"http://a/none"))  # nothing there: no-op
    assert await store.get(b"http://a/none", b"") is None


# -- several instances -------------------------------------------------------------------


async def test_two_stores_share_entries(redis_server: RedisServer, store: RedisStore) -> None:
    other = RedisStore(redis_server.url, MAX, op_timeout=STEADY)
    try:
        data = pattern(BIG, 9)
        assert await put(store, meta(b"http://a/s"), b"from A")
        assert await put(store, meta(b"http://a/big"), data)
        assert await body(other, b"http://a/s") == b"from A"
        assert await body(other, b"http://a/big") == data
        await other.update_meta(b"http://a/s", b"", meta(b"http://a/s", tag=b"by B"))
        got = await store.get(b"http://a/s", b"")
        assert got is not None and dict(got[0].headers)[b"x-tag"] == b"by B"
        assert await other.delete(b"http://a/s") == 1
        assert await store.get(b"http://a/s", b"") is None
        assert await other.purge_prefix(b"http://a/") == 1
        assert await store.get(b"http://a/big", b"") is None
    finally:
        await other.close()


async def test_prefixes_keep_stores_apart(redis_server: RedisServer, store: RedisStore) -> None:
    other = RedisStore(redis_server.url, MAX, prefix=b"other:", op_timeout=STEADY)
    try:
        assert await put(store, meta(b"http://a/p"), b"mine")
        assert await other.get(b"http://a/p", b"") is None
        assert await other.purge_prefix(b"http://") == 0
        assert await body(store, b"http://a/p") == b"mine"
    finally:
        await other.close()


# -- corruption ----------------------------------------------------------------------------


async def test_garbage_value_is_a_miss_and_deleted(store: RedisStore, raw: Redis) -> None:
    assert await put(store, meta(b"http://a/g"), b"good")
    await raw.set(entry_name(b"http://a/g"), b"garbage")  # not even a hash
    assert await store.get(b"http://a/g", b"") is None
    assert await raw.exists(entry_name(b"http://a/g")) == 0
    assert store.conn.available  # bad data is not an outage
    assert await put(store, meta(b"http://a/g"), b"good again")
    assert await body(store, b"http://a/g") == b"good again"


async def test_garbage_set_is_a_miss_not_an_error(store: RedisStore, raw: Redis) -> None:
    assert await put(store, meta(b"http://a/gs"), b"good")
    await raw.delete(b"ferryman:v:http://a/gs")
    await raw.set(b"ferryman:v:http://a/gs", b"not a set")
    assert await store.get(b"http://a/gs", b"") is None
    assert await store.delete(b"http://a/gs") == 0
    assert await put(store, meta(b"http://a/gs"), b"fine")
    assert await body(store, b"http://a/gs") == b"fine"


@pytest.mark.parametrize("size", [100, BIG])
async def test_flipped_bytes_are_caught_before_serving(store: RedisStore, raw: Redis, size: int) -> None:
    key = b"http://a/flip%d" % size
    data = pattern(size, 5)
    assert await put(store, meta(key), data)
    name = entry_name(key)
    field = b"m" if size < 1 << 20 else b"b"
    stored = bytearray(await raw.hget(name, field) or b"")
    stored[-3] ^= 0x40  # the body's third-last byte, inline or not
    await raw.hset(name, field, bytes(stored))
    assert await store.get(key, b"") is None
    assert await raw.exists(name) == 0
    assert await raw.zscore(b"ferryman:v:" + key, variant_hash(b"")) is None


async def test_bad_meta_is_a_miss_and_never_re_signed(store: RedisStore, raw: Redis) -> None:
    assert await put(store, meta(b"http://a/m"), b"body")
    name = entry_name(b"http://a/m")
    await raw.hset(name, b"m", b"FRYREDIS" + b"\x00" * 40)
    assert await store.get(b"http://a/m", b"") is None
    assert await raw.exists(name) == 0
    # an inline body gone bad is not laundered under fresh meta by a 304
    assert await put(store, meta(b"http://a/m"), b"body")
    stored = bytearray(await raw.hget(name, b"m") or b"")
    stored[-1] ^= 1
    await raw.hset(name, b"m", bytes(stored))
    await store.update_meta(b"http://a/m", b"", meta(b"http://a/m", tag=b"new"))
    assert await raw.exists(name) == 0
    assert await store.get(b"http://a/m", b"") is None


async def test_orphan_entry_is_not_served(store: RedisStore, raw: Redis) -> None:
    assert await put(store, meta(b"http://a/orphan"), b"body")
    await raw.delete(b"ferryman:v:http://a/orphan")  # e.g. evicted by Redis under maxmemory
    assert await store.get(b"http://a/orphan", b"") is None
    assert await raw.exists(entry_name(b"http://a/orphan")) == 0


# -- outages and the breaker -------------------------------------------------------------


async def test_redis_down_is_a_quick_miss(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="ferryman")
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", MAX)  # nothing listens there
    try:
        t0 = time.monotonic()
        for i in range(20):
            assert await s.get(b"http://a/%d" % i, b"") is None
        writer = s.begin(meta(b"http://a/w"))
        assert writer is None or await writer.commit() is False
        assert await s.delete(b"http://a/1") == 0
        assert await s.purge_prefix(b"http://") == 0
        await s.update_meta(b"http://a/1", b"", meta(b"http://a/1"))
        assert time.monotonic() - t0 < 1.0
        assert not s.conn.available  # the breaker is open
        assert s.begin(meta(b"http://a/w")) is None
        errors = [r for r in caplog.records if r.name == "ferryman" and r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "redis cache" in errors[0].getMessage()
    finally:
        await s.close()


async def test_hung_redis_costs_one_timeout_then_recovers(
    redis_server: RedisServer, timed_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = timed_store
    caplog.set_level(logging.WARNING, logger="ferryman")
    assert await put(store, meta(b"http://a/h"), b"before")
    store.conn.breaker_seconds = 0.5
    redis_server.pause()  # accepts connections, answers nothing
    try:
        t0 = time.monotonic()
        for _ in range(20):
            assert await store.get(b"http://a/h", b"") is None
        elapsed = time.monotonic() - t0
        assert 0.2 < elapsed < 1.0  # one op_timeout (0.25 s), then the breaker answers
        assert store.begin(meta(b"http://a/h")) is None
    finally:
        redis_server.resume()

    async def served() -> bool:
        return await body(store, b"http://a/h") == b"before"

    await wait_for_async(served, 5, "the store to try Redis again")
    assert store.conn.available
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_breaker_recovers_after_a_restart(redis_server: RedisServer, timed_store: RedisStore) -> None:
    store = timed_store
    store.conn.breaker_seconds = 0.3
    assert await put(store, meta(b"http://a/r"), b"before")
    redis_server.stop()
    assert await store.get(b"http://a/r", b"") is None
    tripped = time.monotonic()
    assert not store.conn.available
    assert store.begin(meta(b"http://a/r")) is None
    redis_server.start()  # same port, empty (no persistence)
    if time.monotonic() - tripped < 0.25:
        assert not await put(store, meta(b"http://a/r"), b"early")  # the breaker still keeps Redis out
    async def stored() -> bool:
        return await put(store, meta(b"http://a/r"), b"after")

    await wait_for_async(stored, 5, "the store to try Redis again")
    assert await body(store, b"http://a/r") == b"after"


async def test_close_then_everything_is_a_no_op(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, MAX)
    assert await put(s, meta(b"http://a/c"), b"x")
    pending = s.begin(meta(b"http://a/c2"))
    assert pending is not None
    await s.close()
    await s.close()
    assert await pending.commit() is False
    assert await s.get(b"http://a/c", b"") is None
    assert s.begin(meta(b"http://a/c")) is None
    assert await s.delete(b"http://a/c") == 0


async def test_an_unusable_url_is_a_pass_through_store() -> None:
    s = RedisStore("redis://127.0.0.1:6379/0?db=not-a-number", MAX)  # the config check can't see this
    assert await s.get(b"http://a/1", b"") is None
    assert s.begin(meta(b"http://a/1")) is None
    assert await s.delete(b"http://a/1") == 0
    await s.close()


async def test_variants_per_key_are_capped_least_recently_used_first(
    redis_server: RedisServer, raw: Redis
) -> None:
    store = RedisStore(redis_server.url, MAX, max_variants=3, op_timeout=STEADY)
    try:
        for v in (b"a", b"b", b"c"):
            assert await put(store, meta(b"http://a/v", v), v)
        await raw.zadd(b"ferryman:v:http://a/v", {variant_hash(b"a"): time.time() + 5})  # a: used last
        assert await put(store, meta(b"http://a/v", b"d"), b"d")
        assert await store.get(b"http://a/v", b"b") is None  # the least recently used went
        assert not await raw.exists(store.conn.entry_name(b"http://a/v", b"b"))
        for v in (b"a", b"c", b"d"):
            hit = await store.get(b"http://a/v", v)
            assert hit is not None and await read_all(hit[1]) == v
        assert await raw.zcard(b"ferryman:v:http://a/v") == 3
        assert len(await store.metas(b"http://a/v")) == 3
    finally:
        await store.close()
