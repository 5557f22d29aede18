"""Redis cache tier: one cache shared by every ferryman process and machine that names the same Redis.

The modules: here the Store protocol and the read path; ``redis_writer.py`` a fill and its
commit; ``redis_conn.py`` the client, round trips under the failure policy below, and the
names; ``redis_format.py`` the layout in Redis and the record format (pure).

Failure policy (DESIGN.md 4: what Redis cannot reach degrades, never to a 500)
------------------------------------------------------------------------------

* Every Redis round trip is bounded by ``op_timeout`` (``asyncio.timeout``; a round
  trip that carries a body gets a transfer allowance on top: ``size / 32 MiB/s``).
  redis-py's own retries are off: one attempt, then the answer below.
* On an error or a timeout the operation is a miss (``get`` -> None), not stored
  (``begin`` -> None, ``commit`` -> False) or a no-op (``update_meta``, ``delete`` and
  ``purge_prefix`` -> 0).  Nothing is raised into the caller, not even
  ``CacheEntryCorrupt``: a body is checked before ``get`` returns it, so a corrupt
  entry is deleted and reported as a miss.
* A circuit breaker: after a failure, Redis is not asked anything for 5 s
  (``RedisConn.breaker_seconds``); then one operation probes it while the others keep
  skipping; its success closes the breaker, its failure opens it for another 5 s.
  A dead or hung Redis therefore costs one timeout per 5 s per process, not one per
  request.  "Not an error" answers do not trip it: a missing key, a lost WATCH race,
  a value of the wrong type (someone else's key, or garbage: treated as corrupt).
* Failures are logged at most once a minute per store, with the number suppressed.

Atomicity: a commit is one MULTI/EXEC (DEL the hash, HSET ``m`` [and ``b``], EXPIRE,
ZADD the variant, EXPIRE the set), so other clients see the old entry or the new
one, never a mix.  Every read checks the meta's CRC and the body against the
length and CRC the meta names, so a body that does not belong to its meta (or was
damaged) is never served.  An inline entry is read in one round trip (a MULTI of
HGET ``m`` and ZSCORE); a larger body in a second round trip (HGET ``b``), with
the time allowance its size calls for; if it fails its CRC and ``m`` has changed
meanwhile, a concurrent replacement is assumed (a miss); otherwise the entry is
deleted as corrupt.  An entry is served only while its variant is listed in its
key's set: an entry the set lost (evicted, or raced with a delete) is an orphan,
deleted when found, so ``delete`` and ``purge_prefix`` cannot miss a live entry.

Expiry: entries and sets carry an EXPIRE of ``ttl`` (default 24 h), set at commit
and renewed by ``update_meta`` (a 304).  The store does not derive it from the
response: freshness depends on the route's rules (``default_ttls``,
``ignore_origin``), which the engine does not pass, and a stale entry stays useful
for revalidation and stale-if-error.  Whether an entry is fresh is decided by the
cache policy from its headers, as with the other tiers.  ``ttl`` bounds how long
Redis keeps it; configure Redis with ``maxmemory`` and an LRU ``maxmemory-policy``
(``volatile-lru`` or ``allkeys-lru``) to bound the space.

Costs:
* ``delete(key)``: two round trips (ZRANGE, then one MULTI of DELs and ZREM).
* Variants: at most ``max_variants`` per key (default 32).  A commit that takes a key
  past it removes the least recently used ones (lowest scores) in a second round trip.
* ``purge_prefix``: SCAN MATCH ``P v:<prefix>*`` COUNT 1000 walks the *whole* keyspace
  of the database (O(all keys), in round trips of 1000 keys each; Redis stays
  responsive in between), plus a ``delete`` per primary key found.  Admin use.
* Memory: a writer buffers the body in this process until commit (at most
  ``max_object_size``); a reader holds the whole body while it streams.  Bodies
  above ~8 MiB are allowed up to ``max_object_size``, but each concurrent fill or
  hit of one costs its full size here (and a similar transient amount in redis-py
  while it is sent or parsed), and it blocks Redis' single thread for the copy.

Across processes, a delete or purge aborts the fills in progress *in this process*
only; a fill another process started before the purge may still publish.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from redis.exceptions import WatchError

from ferryman.pipeline.cache.redis_conn import F_BODY, F_META, INLINE_MAX, RedisConn, Skip, wrongtype
from ferryman.pipeline.cache.redis_format import (
    Corrupt,
    check_body,
    encode_entry,
    glob_escape,
    key_hash,
    parse_entry,
    variant_hash,
)
from ferryman.pipeline.cache.redis_writer import RedisWriter
from ferryman.pipeline.cache.store import (
    BodyReader,
    BytesReader,
    EntryMeta,
    new_version,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.client import Pipeline

    from ferryman.pipeline.cache.store import Store

__all__ = ["RedisStore"]

_SCAN_COUNT: Final = 1000
_TOUCH_EVERY: Final = 60.0  # seconds: a hit bumps its variant's score at most this often


class RedisStore:
    """The Store protocol on ``redis.asyncio`` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        max_object_size: int,
        *,
        prefix: bytes = b"ferryman:",
        op_timeout: float = 0.25,
        ttl: float = 86400.0,
        max_variants: int = 32,
    ) -> None:
        self.max_object_size = max_object_size
        self.max_variants = max(1, max_variants)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[RedisWriter] = set()
        self.conn = RedisConn(url, max_object_size, prefix=prefix, op_timeout=op_timeout, ttl=ttl)

    # -- the Store protocol ------------------------------------------------------------------

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        try:
            return await self._get(key, variant)
        except Skip:
            return None
        except Exception as exc:  # noqa: BLE001 - the last line of "never raise into the caller"
            self.conn.log(f"get: unexpected {exc!r}")
            return None

    def begin(self, meta_without_size: EntryMeta) -> RedisWriter | None:
        meta = meta_without_size
        if not self.conn.available or meta.body_size > self.max_object_size:
            return None
        meta = replace(meta, version=new_version())
        writer = RedisWriter(self.conn, self._writers, self.max_object_size, self.max_variants, meta)
        self._writers.add(writer)
        return writer

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        try:
            await self._update_meta(key, variant, meta)
        except Skip:
            return
        except Exception as exc:  # noqa: BLE001
            self.conn.log(f"update_meta: unexpected {exc!r}")

    async def delete(self, key: bytes) -> int:
        self._abort_writers(lambda k: k == key)
        try:
            return await self._delete(key)
        except Skip:
            return 0
        except Exception as exc:  # noqa: BLE001
            self.conn.log(f"delete: unexpected {exc!r}")
            return 0

    async def purge_prefix(self, prefix: bytes) -> int:
        """Delete every entry whose key starts with ``prefix``: a SCAN of the whole keyspace."""
        self._abort_writers(lambda k: k.startswith(prefix))
        conn, purged = self.conn, 0
        try:
            pattern = glob_escape(conn.set_name(prefix)) + b"*"
            skip = len(conn.set_name(b""))
            cursor = 0
            while True:

                def scan(p: Pipeline, c: int = cursor) -> None:
                    p.scan(c, match=pattern, count=_SCAN_COUNT)

                (cursor, names), = await conn.pipe("scanning", scan, transaction=False)
                for name in names:
                    purged += await self._delete(bytes(name)[skip:])
                if not cursor:
                    return purged
        except Skip:
            return purged
        except Exception as exc:  # noqa: BLE001
            conn.log(f"purge_prefix: unexpected {exc!r}")
            return purged

    async def close(self) -> None:
        """Abort fills in progress and close the connection pool."""
        if self.conn.closed:
            return
        self._abort_writers(lambda k: True)
        await self.conn.close()

    # -- operations ------------------------------------------------------------------------

    async def metas(self, key: bytes) -> list[EntryMeta]:
        """The metas of every variant stored under ``key`` (by any instance); [] on any failure."""
        try:
            return await self._metas(key)
        except Skip:
            return []
        except Exception as exc:  # noqa: BLE001 - never raise into the caller
            self.conn.log(f"metas: unexpected {exc!r}")
            return []

    async def _metas(self, key: bytes) -> list[EntryMeta]:
        conn = self.conn
        members, = await conn.pipe("listing variants", lambda p: p.zrange(conn.set_name(key), 0, -1))
        if wrongtype(members) or not members:
            return []
        kh = key_hash(key)
        names = [conn.prefix + b"e:" + kh + b":" + bytes(m) for m in sorted(members)]

        def read(p: Pipeline) -> None:
            for n in names:
                p.hget(n, F_META)

        out: list[EntryMeta] = []
        for raw in await conn.pipe("reading variants", read, size=INLINE_MAX * len(names)):
            if raw is None or wrongtype(raw):
                continue
            try:
                meta = parse_entry(raw).meta
            except Corrupt:
                continue
            if meta.key == key:
                out.append(meta)
        return out

    async def _get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        conn = self.conn
        name, vh = conn.entry_name(key, variant), variant_hash(variant)

        def first(p: Pipeline) -> None:
            p.hget(name, F_META)
            p.zscore(conn.set_name(key), vh.decode("ascii"))  # hex: str and bytes alike

        raw, member = await conn.pipe("reading", first, size=INLINE_MAX)
        if member is not None and not wrongtype(member) and time.time() - float(member) > _TOUCH_EVERY:
            self._touch(key, vh)
        if wrongtype(raw) or wrongtype(member):
            await conn.drop(key, variant, "a value of the wrong type", whole_key=wrongtype(member))
            return None
        if raw is None:
            return None
        if member is None:  # the set lost it: an orphan no delete could reach
            await conn.pipe("deleting an orphan", lambda p: p.delete(name))
            return None
        try:
            parsed = parse_entry(raw)
        except Corrupt as exc:
            await conn.drop(key, variant, str(exc))
            return None
        meta = parsed.meta
        if (meta.key, meta.variant) != (key, variant):
            return None  # a hash collision: another key's entry, not ours to judge
        if parsed.body is not None:
            return meta, BytesReader(parsed.body)
        body, = await conn.pipe("reading a body", lambda p: p.hget(name, F_BODY), size=meta.body_size)
        try:
            return meta, BytesReader(check_body(body, meta.body_size, parsed.body_crc))
        except Corrupt as exc:
            now, = await conn.pipe("re-reading", lambda p: p.hget(name, F_META))
            if now == raw:  # the same entry: its body is bad
                await conn.drop(key, variant, str(exc))
            return None  # else: replaced between our two reads

    def _touch(self, key: bytes, vh: bytes) -> None:
        """Mark a variant used (its score), in the background: a hit does not wait for it."""
        conn = self.conn

        async def touch() -> None:
            try:
                await conn.pipe("marking a variant used", lambda p: p.zadd(
                    conn.set_name(key), {vh: time.time()}, xx=True), transaction=False)
            except Skip:
                pass

        task = asyncio.get_running_loop().create_task(touch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        conn = self.conn
        name = conn.entry_name(key, variant)

        async def cas(pipe: Pipeline) -> None:
            await pipe.watch(name)
            raw = await pipe.hget(name, F_META)  # immediate mode after WATCH
            if raw is None:
                return
            parsed = parse_entry(raw)  # an inline body is checked here: never re-signed if bad
            old = parsed.meta
            if (old.key, old.variant) != (key, variant) or (meta.version and meta.version != old.version):
                return  # another key's, or replaced by a newer fill since: that one wins
            new = replace(meta, key=key, variant=variant, body_size=old.body_size, version=old.version)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(name, F_META, encode_entry(new, old.body_size, parsed.body_crc, parsed.body))
            pipe.expire(name, conn.ttl)
            pipe.zadd(conn.set_name(key), {variant_hash(variant): time.time()}, xx=True)
            pipe.expire(conn.set_name(key), conn.ttl)
            await pipe.execute()

        try:
            await conn.io("updating meta", conn.with_pipeline(cas))
        except WatchError:
            return  # replaced or deleted meanwhile: that newer state wins
        except Corrupt as exc:
            await conn.drop(key, variant, str(exc))

    async def _delete(self, key: bytes) -> int:
        conn = self.conn
        sname = conn.set_name(key)
        members, = await conn.pipe("deleting", lambda p: p.zrange(sname, 0, -1))
        if wrongtype(members):
            await conn.pipe("deleting", lambda p: p.delete(sname))
            return 0
        if not members:
            return 0
        variants = sorted(bytes(m) for m in members)
        h = key_hash(key)

        def remove(p: Pipeline) -> None:
            for v in variants:
                p.delete(conn.prefix + b"e:" + h + b":" + v)
            p.zrem(sname, *variants)  # only these: a variant added meanwhile stays reachable

        results = await conn.pipe("deleting", remove)
        return sum(int(r) for r in results[:-1])

    def _abort_writers(self, match: Callable[[bytes], bool]) -> None:
        for writer in list(self._writers):  # a fill begun before a purge must not publish
            if match(writer.meta.key):
                writer.abort()


if TYPE_CHECKING:

    def _conforms(store: RedisStore, reader: BytesReader) -> tuple[Store, BodyReader]:
        return store, reader
