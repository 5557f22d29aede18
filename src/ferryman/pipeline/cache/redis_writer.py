"""A fill of the Redis cache tier: the body buffered in this process, published by one MULTI/EXEC.

The commit and its atomicity are described in ``redis_store.py``, the record it writes in
``redis_format.py``.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING

from ferryman.pipeline.cache.redis_conn import F_BODY, F_META, INLINE_MAX, RedisConn, Skip, wrongtype
from ferryman.pipeline.cache.redis_format import encode_entry, key_hash, variant_hash
from ferryman.pipeline.cache.store import BufferedWriter, EntryMeta

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["RedisWriter"]


class RedisWriter(BufferedWriter):
    """A fill: the body is buffered (at most ``max_object_size``) and sent by ``commit``."""

    __slots__ = ("_conn", "_max_variants")

    def __init__(
        self, conn: RedisConn, writers: set[RedisWriter], max_object_size: int, max_variants: int,
        meta: EntryMeta,
    ) -> None:
        super().__init__(writers, max_object_size, meta)
        self._conn = conn
        self._max_variants = max_variants

    async def commit(self) -> bool:
        body = self._take()
        if body is None:
            return False
        try:
            return await self._publish(self.meta, body)
        except Skip:
            return False
        except Exception as exc:  # noqa: BLE001
            self._conn.log(f"commit: unexpected {exc!r}")
            return False

    async def _publish(self, meta: EntryMeta, body: bytes) -> bool:
        conn = self._conn
        meta = replace(meta, body_size=len(body))
        crc = zlib.crc32(body)
        inline = len(body) <= INLINE_MAX
        fields = {F_META: encode_entry(meta, len(body), crc, body if inline else None)}
        if not inline:
            fields[F_BODY] = body
        name, sname = conn.entry_name(meta.key, meta.variant), conn.set_name(meta.key)

        def publish(p: Pipeline) -> None:
            p.delete(name)  # a large body left by the entry this one replaces must go too
            p.hset(name, mapping=fields)  # type: ignore[arg-type]  # bytes keys are fine
            p.expire(name, conn.ttl)
            p.zadd(sname, {variant_hash(meta.variant): time.time()})
            p.expire(sname, conn.ttl)
            p.zcard(sname)

        results = await conn.pipe("storing", publish, size=len(body))
        if any(wrongtype(r) for r in results):  # the set's name holds something else
            await conn.drop(meta.key, meta.variant, "a value of the wrong type", whole_key=True)
            return False
        if results[-1] > self._max_variants:
            await self._trim(meta.key, int(results[-1]) - self._max_variants)
        return True

    async def _trim(self, key: bytes, extra: int) -> None:
        """Remove a key's ``extra`` least recently used variants."""
        conn = self._conn
        sname, h = conn.set_name(key), key_hash(key)
        popped, = await conn.pipe("trimming variants", lambda p: p.zpopmin(sname, extra))
        if popped and not wrongtype(popped):
            names = [conn.prefix + b"e:" + h + b":" + bytes(m) for m, _ in popped]
            await conn.pipe("trimming variants", lambda p: p.delete(*names))
