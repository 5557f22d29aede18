"""Redis cache tier: one cache shared by every ferryman process and machine that names the same Redis.

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
  (``breaker_seconds``); then one operation probes it while the others keep
  skipping; its success closes the breaker, its failure opens it for another 5 s.
  A dead or hung Redis therefore costs one timeout per 5 s per process, not one per
  request.  "Not an error" answers do not trip it: a missing key, a lost WATCH race,
  a value of the wrong type (someone else's key, or garbage: treated as corrupt).
* Failures are logged at most once a minute per store, with the number suppressed.

Layout (``P`` = ``prefix``, ``H`` = blake2b-128(key) hex, ``V`` = blake2b-64(variant) hex)
------------------------------------------------------------------------------------

    P e:H:V     a hash, one per entry: field ``m`` = head + meta (+ the body when it is
                at most 1 MiB, "inline"); field ``b`` = the body when it is larger
    P v:KEY     a sorted set per primary key (KEY raw, so SCAN MATCH can filter on its
                prefix): the ``V`` of every variant stored under it, scored by when it
                was last stored, refreshed or read (reads bump it at most once a minute)

``m`` (integers big-endian)::

    head  32 B  magic b"FRYREDIS" | u16 version=1 | u16 flags (1: body inline) | u32 meta_len
                | u64 body_len | u32 CRC32(meta) | u32 CRC32(body)
    meta        compact JSON {"k","v","s","h","q","t0","t1"}, byte strings as latin-1 text
    body        body_len bytes, only when inline

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
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError, WatchError

from ferryman.pipeline.cache.redis_format import Corrupt as _Corrupt
from ferryman.pipeline.cache.redis_format import (
    check_body,
    encode_entry,
    glob_escape,
    key_hash,
    parse_entry,
    variant_hash,
)
from ferryman.pipeline.cache.store import (
    BodyReader,
    BufferedWriter,
    BytesReader,
    EntryMeta,
    ErrorLog,
    new_version,
)

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

    from ferryman.pipeline.cache.store import Store

log = logging.getLogger("ferryman")
T = TypeVar("T")

_INLINE_MAX: Final = 1 << 20  # bodies up to this live in the meta field: one round trip per hit
_TRANSFER_RATE: Final = 32 << 20  # bytes/s assumed for a body's time allowance
_SCAN_COUNT: Final = 1000
_TOUCH_EVERY: Final = 60.0  # seconds: a hit bumps its variant's score at most this often
BREAKER_SECONDS: Final = 5.0
_F_META: Final = b"m"
_F_BODY: Final = b"b"


class _Skip(Exception):
    """Redis is unavailable (this operation failed, or the breaker is open)."""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _wrongtype(value: object) -> bool:
    return isinstance(value, ResponseError) and "WRONGTYPE" in str(value)


# -- the store ----------------------------------------------------------------------------


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
        self.url = _redacted(url)
        self.max_object_size = max_object_size
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.ttl = max(1, int(ttl))
        self.max_variants = max(1, max_variants)
        self._tasks: set[asyncio.Task[None]] = set()
        self.breaker_seconds = BREAKER_SECONDS
        self._writers: set[RedisWriter] = set()
        self._open_until = 0.0  # breaker: 0 closed, else monotonic time it may be probed again
        self._probing = False
        self._log = ErrorLog(f"redis cache {self.url}")
        self._closed = False
        self._redis: Redis | None = None
        try:
            self._redis = Redis.from_url(
                url,
                retry=Retry(NoBackoff(), 0),  # one attempt: the breaker decides when to try again
                socket_connect_timeout=op_timeout,
                socket_timeout=self._deadline(max_object_size),  # a backstop: asyncio.timeout rules
            )
        except ValueError as exc:  # a URL the config check let through (e.g. ?db=x): never raise
            self._closed = True
            self._log(f"unusable URL ({exc}); the cache passes everything through")

    # -- names ----------------------------------------------------------------------------

    def entry_name(self, key: bytes, variant: bytes) -> bytes:
        return self.prefix + b"e:" + key_hash(key) + b":" + variant_hash(variant)

    def set_name(self, key: bytes) -> bytes:
        return self.prefix + b"v:" + key

    @property
    def _client(self) -> Redis:
        assert self._redis is not None  # None only if closed from the start, and _io checks that first
        return self._redis

    @property
    def available(self) -> bool:
        """False while closed or while the breaker keeps Redis out."""
        return not self._closed and (not self._open_until or time.monotonic() >= self._open_until)

    # -- the Store protocol ------------------------------------------------------------------

    async def get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        try:
            return await self._get(key, variant)
        except _Skip:
            return None
        except Exception as exc:  # noqa: BLE001 - the last line of "never raise into the caller"
            self._log(f"get: unexpected {exc!r}")
            return None

    def begin(self, meta_without_size: EntryMeta) -> RedisWriter | None:
        meta = meta_without_size
        if not self.available or meta.body_size > self.max_object_size:
            return None
        writer = RedisWriter(self, replace(meta, version=new_version()))
        self._writers.add(writer)
        return writer

    async def update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        try:
            await self._update_meta(key, variant, meta)
        except _Skip:
            return
        except Exception as exc:  # noqa: BLE001
            self._log(f"update_meta: unexpected {exc!r}")

    async def delete(self, key: bytes) -> int:
        self._abort_writers(lambda k: k == key)
        try:
            return await self._delete(key)
        except _Skip:
            return 0
        except Exception as exc:  # noqa: BLE001
            self._log(f"delete: unexpected {exc!r}")
            return 0

    async def purge_prefix(self, prefix: bytes) -> int:
        """Delete every entry whose key starts with ``prefix``: a SCAN of the whole keyspace."""
        self._abort_writers(lambda k: k.startswith(prefix))
        purged = 0
        try:
            pattern = glob_escape(self.set_name(prefix)) + b"*"
            skip = len(self.set_name(b""))
            cursor = 0
            while True:

                def scan(p: Pipeline, c: int = cursor) -> None:
                    p.scan(c, match=pattern, count=_SCAN_COUNT)

                (cursor, names), = await self._pipe("scanning", scan, transaction=False)
                for name in names:
                    purged += await self._delete(bytes(name)[skip:])
                if not cursor:
                    return purged
        except _Skip:
            return purged
        except Exception as exc:  # noqa: BLE001
            self._log(f"purge_prefix: unexpected {exc!r}")
            return purged

    async def close(self) -> None:
        """Abort fills in progress and close the connection pool."""
        if self._closed:
            return
        self._closed = True
        self._abort_writers(lambda k: True)
        try:
            if self._redis is not None:
                await self._redis.aclose()
        except Exception as exc:  # noqa: BLE001
            self._log(f"closing: {exc!r}")

    # -- operations ------------------------------------------------------------------------

    async def metas(self, key: bytes) -> list[EntryMeta]:
        """The metas of every variant stored under ``key`` (by any instance); [] on any failure."""
        try:
            return await self._metas(key)
        except _Skip:
            return []
        except Exception as exc:  # noqa: BLE001 - never raise into the caller
            self._log(f"metas: unexpected {exc!r}")
            return []

    async def _metas(self, key: bytes) -> list[EntryMeta]:
        members, = await self._pipe("listing variants", lambda p: p.zrange(self.set_name(key), 0, -1))
        if _wrongtype(members) or not members:
            return []
        kh = key_hash(key)
        names = [self.prefix + b"e:" + kh + b":" + bytes(m) for m in sorted(members)]

        def read(p: Pipeline) -> None:
            for n in names:
                p.hget(n, _F_META)

        out: list[EntryMeta] = []
        for raw in await self._pipe("reading variants", read, size=_INLINE_MAX * len(names)):
            if raw is None or _wrongtype(raw):
                continue
            try:
                meta = parse_entry(raw).meta
            except _Corrupt:
                continue
            if meta.key == key:
                out.append(meta)
        return out

    async def _get(self, key: bytes, variant: bytes) -> tuple[EntryMeta, BodyReader] | None:
        name, vh = self.entry_name(key, variant), variant_hash(variant)

        def first(p: Pipeline) -> None:
            p.hget(name, _F_META)
            p.zscore(self.set_name(key), vh.decode("ascii"))  # hex: str and bytes alike

        raw, member = await self._pipe("reading", first, size=_INLINE_MAX)
        if member is not None and not _wrongtype(member) and time.time() - float(member) > _TOUCH_EVERY:
            self._touch(key, vh)
        if _wrongtype(raw) or _wrongtype(member):
            await self._drop(key, variant, "a value of the wrong type", whole_key=_wrongtype(member))
            return None
        if raw is None:
            return None
        if member is None:  # the set lost it: an orphan no delete could reach
            await self._pipe("deleting an orphan", lambda p: p.delete(name))
            return None
        try:
            parsed = parse_entry(raw)
        except _Corrupt as exc:
            await self._drop(key, variant, str(exc))
            return None
        meta = parsed.meta
        if (meta.key, meta.variant) != (key, variant):
            return None  # a hash collision: another key's entry, not ours to judge
        if parsed.body is not None:
            return meta, BytesReader(parsed.body)
        body, = await self._pipe("reading a body", lambda p: p.hget(name, _F_BODY), size=meta.body_size)
        try:
            return meta, BytesReader(check_body(body, meta.body_size, parsed.body_crc))
        except _Corrupt as exc:
            now, = await self._pipe("re-reading", lambda p: p.hget(name, _F_META))
            if now == raw:  # the same entry: its body is bad
                await self._drop(key, variant, str(exc))
            return None  # else: replaced between our two reads

    async def _publish(self, meta: EntryMeta, body: bytes) -> bool:
        meta = replace(meta, body_size=len(body))
        crc = zlib.crc32(body)
        inline = len(body) <= _INLINE_MAX
        fields = {_F_META: encode_entry(meta, len(body), crc, body if inline else None)}
        if not inline:
            fields[_F_BODY] = body
        name, sname = self.entry_name(meta.key, meta.variant), self.set_name(meta.key)

        def publish(p: Pipeline) -> None:
            p.delete(name)  # a large body left by the entry this one replaces must go too
            p.hset(name, mapping=fields)  # type: ignore[arg-type]  # bytes keys are fine
            p.expire(name, self.ttl)
            p.zadd(sname, {variant_hash(meta.variant): time.time()})
            p.expire(sname, self.ttl)
            p.zcard(sname)

        results = await self._pipe("storing", publish, size=len(body))
        if any(_wrongtype(r) for r in results):  # the set's name holds something else
            await self._drop(meta.key, meta.variant, "a value of the wrong type", whole_key=True)
            return False
        if results[-1] > self.max_variants:
            await self._trim(meta.key, int(results[-1]) - self.max_variants)
        return True

    async def _trim(self, key: bytes, extra: int) -> None:
        """Remove a key's ``extra`` least recently used variants."""
        sname, h = self.set_name(key), key_hash(key)
        popped, = await self._pipe("trimming variants", lambda p: p.zpopmin(sname, extra))
        if popped and not _wrongtype(popped):
            names = [self.prefix + b"e:" + h + b":" + bytes(m) for m, _ in popped]
            await self._pipe("trimming variants", lambda p: p.delete(*names))

    def _touch(self, key: bytes, vh: bytes) -> None:
        """Mark a variant used (its score), in the background: a hit does not wait for it."""

        async def touch() -> None:
            try:
                await self._pipe("marking a variant used", lambda p: p.zadd(
                    self.set_name(key), {vh: time.time()}, xx=True), transaction=False)
            except _Skip:
                pass

        task = asyncio.get_running_loop().create_task(touch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _update_meta(self, key: bytes, variant: bytes, meta: EntryMeta) -> None:
        name = self.entry_name(key, variant)

        async def cas(pipe: Pipeline) -> None:
            await pipe.watch(name)
            raw = await pipe.hget(name, _F_META)  # immediate mode after WATCH
            if raw is None:
                return
            parsed = parse_entry(raw)  # an inline body is checked here: never re-signed if bad
            old = parsed.meta
            if (old.key, old.variant) != (key, variant) or (meta.version and meta.version != old.version):
                return  # another key's, or replaced by a newer fill since: that one wins
            new = replace(meta, key=key, variant=variant, body_size=old.body_size, version=old.version)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(name, _F_META, encode_entry(new, old.body_size, parsed.body_crc, parsed.body))
            pipe.expire(name, self.ttl)
            pipe.zadd(self.set_name(key), {variant_hash(variant): time.time()}, xx=True)
            pipe.expire(self.set_name(key), self.ttl)
            await pipe.execute()

        try:
            await self._io("updating meta", self._with_pipeline(cas))
        except WatchError:
            return  # replaced or deleted meanwhile: that newer state wins
        except _Corrupt as exc:
            await self._drop(key, variant, str(exc))

    async def _delete(self, key: bytes) -> int:
        sname = self.set_name(key)
        members, = await self._pipe("deleting", lambda p: p.zrange(sname, 0, -1))
        if _wrongtype(members):
            await self._pipe("deleting", lambda p: p.delete(sname))
            return 0
        if not members:
            return 0
        variants = sorted(bytes(m) for m in members)
        h = key_hash(key)

        def remove(p: Pipeline) -> None:
            for v in variants:
                p.delete(self.prefix + b"e:" + h + b":" + v)
            p.zrem(sname, *variants)  # only these: a variant added meanwhile stays reachable

        results = await self._pipe("deleting", remove)
        return sum(int(r) for r in results[:-1])

    async def _drop(self, key: bytes, variant: bytes, why: str, whole_key: bool = False) -> None:
        """Delete a corrupt entry (and, with ``whole_key``, its key's set)."""
        self._log(f"deleted corrupt entry {key!r} [{variant!r}]: {why}")
        name, sname = self.entry_name(key, variant), self.set_name(key)

        def drop(p: Pipeline) -> None:
            p.delete(name)
            if whole_key:
                p.delete(sname)
            else:
                p.zrem(sname, variant_hash(variant))

        try:
            await self._pipe("deleting a corrupt entry", drop)
        except _Skip:
            pass

    # -- I/O under the failure policy --------------------------------------------------------

    def _deadline(self, size: int) -> float:
        return self.op_timeout + max(size, 0) / _TRANSFER_RATE

    async def _pipe(
        self, what: str, fill: Callable[[Pipeline], object], *, size: int = 0, transaction: bool = True
    ) -> list[Any]:
        """One round trip: the commands ``fill`` queues, in MULTI/EXEC unless ``transaction`` is False.

        A WRONGTYPE reply is returned in its command's place (the data is bad, Redis is
        fine: the caller decides); any other error is a failure of Redis.
        """

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=transaction) as p:
                fill(p)
                results: list[Any] = await p.execute(raise_on_error=False)
            for r in results:
                if isinstance(r, Exception) and not _wrongtype(r):
                    raise r
            return results

        return await self._io(what, run(), size)

    def _with_pipeline(self, body: Callable[[Pipeline], Awaitable[None]]) -> Awaitable[None]:
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as p:
                await body(p)

        return run()

    async def _io(self, what: str, op: Awaitable[T], size: int = 0) -> T:
        """Await ``op`` within its deadline, under the breaker; ``_Skip`` when Redis is out."""
        if self._closed:
            _close_unawaited(op)
            raise _Skip
        probe = False
        if self._open_until:
            if time.monotonic() < self._open_until or self._probing:
                _close_unawaited(op)
                raise _Skip
            self._probing = probe = True
        try:
            async with asyncio.timeout(self._deadline(size)):
                result = await op
        except (WatchError, _Corrupt):
            self._recovered(probe)  # Redis answered: these are about the data
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the client is "Redis is out"
            self._trip(what, exc)
            raise _Skip from None
        finally:
            if probe:
                self._probing = False
        self._recovered(probe)
        return result

    def _trip(self, what: str, exc: BaseException) -> None:
        detail = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
        self._open_until = time.monotonic() + self.breaker_seconds
        self._log(f"{what}: {detail}; not asking Redis for {self.breaker_seconds:g} s")

    def _recovered(self, probe: bool) -> None:
        if probe:
            log.warning("redis cache %s: reachable again", self.url)
        self._open_until = 0.0

    def _abort_writers(self, match: Callable[[bytes], bool]) -> None:
        for writer in list(self._writers):  # a fill begun before a purge must not publish
            if match(writer.meta.key):
                writer.abort()



def _close_unawaited(op: Awaitable[object]) -> None:
    close = getattr(op, "close", None)  # a coroutine never started: no "never awaited" warning
    if close is not None:
        close()


class RedisWriter(BufferedWriter):
    """A fill: the body is buffered (at most ``max_object_size``) and sent by ``commit``."""

    __slots__ = ("_store",)

    def __init__(self, store: RedisStore, meta: EntryMeta) -> None:
        super().__init__(store._writers, store.max_object_size, meta)
        self._store = store

    async def commit(self) -> bool:
        body = self._take()
        if body is None:
            return False
        store = self._store
        try:
            return await store._publish(self.meta, body)
        except _Skip:
            return False
        except Exception as exc:  # noqa: BLE001
            store._log(f"commit: unexpected {exc!r}")
            return False

if TYPE_CHECKING:

    def _conforms(store: RedisStore, reader: BytesReader) -> tuple[Store, BodyReader]:
        return store, reader
