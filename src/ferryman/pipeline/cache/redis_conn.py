"""The Redis cache tier's connection: round trips under its failure policy, and its names.

The policy itself (deadlines, the circuit breaker, what a failure answers, logging) is
described in ``redis_store.py``; the layout the names spell is in ``redis_format.py``.
Here: the redis-py client, ``pipe`` (one round trip) and ``io`` (any awaitable) within
their deadline and under the breaker, raising ``Skip`` when Redis is out, and ``drop``
(delete a corrupt entry), which the read path and a fill (``redis_writer.py``) share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError, WatchError

from ferryman.pipeline.cache.redis_format import Corrupt, key_hash, variant_hash
from ferryman.pipeline.cache.store import ErrorLog

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["BREAKER_SECONDS", "F_BODY", "F_META", "INLINE_MAX", "RedisConn", "Skip", "wrongtype"]

log = logging.getLogger("ferryman")
T = TypeVar("T")

INLINE_MAX: Final = 1 << 20  # bodies up to this live in the meta field: one round trip per hit
_TRANSFER_RATE: Final = 32 << 20  # bytes/s assumed for a body's time allowance
BREAKER_SECONDS: Final = 5.0
F_META: Final = b"m"
F_BODY: Final = b"b"


class Skip(Exception):
    """Redis is unavailable (this operation failed, or the breaker is open)."""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def wrongtype(value: object) -> bool:
    return isinstance(value, ResponseError) and "WRONGTYPE" in str(value)


class RedisConn:
    """One Redis as the store uses it: names, round trips, the breaker, the error log."""

    def __init__(
        self, url: str, max_object_size: int, *, prefix: bytes, op_timeout: float, ttl: float
    ) -> None:
        self.url = _redacted(url)
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.ttl = max(1, int(ttl))
        self.breaker_seconds = BREAKER_SECONDS
        self._open_until = 0.0  # breaker: 0 closed, else monotonic time it may be probed again
        self._probing = False
        self.log = ErrorLog(f"redis cache {self.url}")
        self.closed = False
        self._redis: Redis | None = None
        try:
            self._redis = Redis.from_url(
                url,
                retry=Retry(NoBackoff(), 0),  # one attempt: the breaker decides when to try again
                socket_connect_timeout=op_timeout,
                socket_timeout=self._deadline(max_object_size),  # a backstop: asyncio.timeout rules
            )
        except ValueError as exc:  # a URL the config check let through (e.g. ?db=x): never raise
            self.closed = True
            self.log(f"unusable URL ({exc}); the cache passes everything through")

    # -- names ----------------------------------------------------------------------------

    def entry_name(self, key: bytes, variant: bytes) -> bytes:
        return self.prefix + b"e:" + key_hash(key) + b":" + variant_hash(variant)

    def set_name(self, key: bytes) -> bytes:
        return self.prefix + b"v:" + key

    @property
    def _client(self) -> Redis:
        assert self._redis is not None  # None only if closed from the start, and io checks that first
        return self._redis

    @property
    def available(self) -> bool:
        """False while closed or while the breaker keeps Redis out."""
        return not self.closed and (not self._open_until or time.monotonic() >= self._open_until)

    async def close(self) -> None:
        """Refuse further operations and close the connection pool."""
        self.closed = True
        try:
            if self._redis is not None:
                await self._redis.aclose()
        except Exception as exc:  # noqa: BLE001
            self.log(f"closing: {exc!r}")

    # -- shared by the read path and fills ---------------------------------------------------

    async def drop(self, key: bytes, variant: bytes, why: str, whole_key: bool = False) -> None:
        """Delete a corrupt entry (and, with ``whole_key``, its key's set)."""
        self.log(f"deleted corrupt entry {key!r} [{variant!r}]: {why}")
        name, sname = self.entry_name(key, variant), self.set_name(key)

        def drop(p: Pipeline) -> None:
            p.delete(name)
            if whole_key:
                p.delete(sname)
            else:
                p.zrem(sname, variant_hash(variant))

        try:
            await self.pipe("deleting a corrupt entry", drop)
        except Skip:
            pass

    # -- I/O under the failure policy --------------------------------------------------------

    def _deadline(self, size: int) -> float:
        return self.op_timeout + max(size, 0) / _TRANSFER_RATE

    async def pipe(
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
                if isinstance(r, Exception) and not wrongtype(r):
                    raise r
            return results

        return await self.io(what, run(), size)

    def with_pipeline(self, body: Callable[[Pipeline], Awaitable[None]]) -> Awaitable[None]:
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as p:
                await body(p)

        return run()

    async def io(self, what: str, op: Awaitable[T], size: int = 0) -> T:
        """Await ``op`` within its deadline, under the breaker; ``Skip`` when Redis is out."""
        if self.closed:
            _close_unawaited(op)
            raise Skip
        probe = False
        if self._open_until:
            if time.monotonic() < self._open_until or self._probing:
                _close_unawaited(op)
                raise Skip
            self._probing = probe = True
        try:
            async with asyncio.timeout(self._deadline(size)):
                result = await op
        except (WatchError, Corrupt):
            self._recovered(probe)  # Redis answered: these are about the data
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the client is "Redis is out"
            self._trip(what, exc)
            raise Skip from None
        finally:
            if probe:
                self._probing = False
        self._recovered(probe)
        return result

    def _trip(self, what: str, exc: BaseException) -> None:
        detail = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
        self._open_until = time.monotonic() + self.breaker_seconds
        self.log(f"{what}: {detail}; not asking Redis for {self.breaker_seconds:g} s")

    def _recovered(self, probe: bool) -> None:
        if probe:
            log.warning("redis cache %s: reachable again", self.url)
        self._open_until = 0.0


def _close_unawaited(op: Awaitable[object]) -> None:
    close = getattr(op, "close", None)  # a coroutine never started: no "never awaited" warning
    if close is not None:
        close()
