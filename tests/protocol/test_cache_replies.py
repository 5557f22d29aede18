"""The cache's response-side answers at the connection edge, one test per branch, never a
bool: ``Cache.takeover`` and ``Cache.on_not_modified`` (the upstream answered the cache's
validation) and ``Cache.serve_stale_on_error`` (it failed) say `ANSWERS` (the cache
answers the client from its entry) or `PASSES` (the connection relays the response or
answers the error); ``Cache.continue_without_client`` says `ADOPTED` (the cache reads on
for a fill's followers) or `ABANDONED`.

Fake transports as in test_cache_flow.py: the upstream is a real `UpstreamConnection`
with a fake transport parked in the pool; the resolver is replaced where a test dials.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferryman.conn.cache_flow import Cache
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.conn.exchange import Exchange
from ferryman.errors import (
    AuthBusy,
    ClientProtocolError,
    DnsError,
    FerrymanError,
    Forbidden,
    LoopDetected,
    NoHealthyUpstream,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamFull,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ferryman.http1.events import Framing, ResponseHead
from ferryman.pipeline.cache.action import ABANDONED, ADOPTED, ANSWERS, PASSES, CacheReply, Orphan
from tests.protocol.test_cache_flow import FRESH, MUST_VALIDATE, cached_engine, request, shut, store, until
from tests.protocol.test_downstream import FakeTransport, client, park_upstream

# Validated on every use (max-age=0) and servable stale on error for ten minutes.
STALE_IF_ERROR = (
    b'HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\nETag: "v1"\r\n'
    b"Content-Length: 2\r\n\r\nhi"
)
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=600\r\n\r\n'
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"


class Replies:
    """What the four response-side methods returned, in call order, by method."""

    def __init__(self, cache: Cache) -> None:
        self.calls: list[tuple[str, CacheReply | Orphan]] = []
        for name in ("takeover", "on_not_modified", "serve_stale_on_error", "continue_without_client"):
            self._wrap(cache, name)

    def _wrap(self, cache: Cache, name: str) -> None:
        real = getattr(cache, name)

        def spy(*args: Any) -> CacheReply | Orphan:
            out: CacheReply | Orphan = real(*args)
            self.calls.append((name, out))
            return out

        setattr(cache, name, spy)

    def of(self, name: str) -> list[CacheReply | Orphan]:
        return [out for n, out in self.calls if n == name]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = await cached_engine()
    yield eng
    await shut(eng)


def replies(engine: Engine) -> Replies:
    assert engine.cache is not None
    return Replies(engine.cache)


ORIGIN = ("http", "origin.test", 80)


def empty_pool(engine: Engine) -> None:
    """Close the idle upstream connections (the one `store` used): a request dials now."""
    while (conn := engine.pool.acquire(ORIGIN)) is not None:
        conn.close()


async def revalidating(engine: Engine, stored: bytes) -> tuple[Any, FakeTransport, Downstream, FakeTransport]:
    """``stored`` in the cache, then a GET that sends its conditional request upstream."""
    await store(engine, stored)
    empty_pool(engine)
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(request())
    assert b'If-None-Match: "v1"' in up_tr.take()
    return up, up_tr, ds, tr


def current(ds: Downstream) -> Exchange:
    assert ds.cur is not None
    return ds.cur


# -- takeover / on_not_modified -------------------------------------------------------------
async def test_304_to_the_validation_answers_from_the_freshened_entry(engine: Engine) -> None:
    rec = replies(engine)
    up, up_tr, ds, tr = await revalidating(engine, MUST_VALIDATE)
    ex = current(ds)
    up.data_received(NOT_MODIFIED)
    assert rec.of("takeover") == [ANSWERS] and rec.of("on_not_modified") == [ANSWERS]
    assert ex.cache_takeover and ex.cache_result == "revalidated"
    await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
    assert tr.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert engine.pool.idle_count(ORIGIN) == 1 and not up_tr.closed  # the 304 read, the socket reused


async def test_304_not_selecting_the_entry_passes_and_is_relayed(engine: Engine) -> None:
    """A 304 whose validator is not the stored one cannot freshen it (RFC 9111 4.3.4)."""
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, MUST_VALIDATE)
    ex = current(ds)
    up.data_received(b'HTTP/1.1 304 Not Modified\r\nETag: "v2"\r\n\r\n')
    assert rec.of("takeover") == [PASSES] and rec.of("on_not_modified") == [PASSES]
    assert not ex.cache_takeover
    assert tr.take().startswith(b"HTTP/1.1 304 Not Modified\r\n")


async def test_on_not_modified_without_a_stored_entry_passes(engine: Engine) -> None:
    rec = replies(engine)
    up, _ = park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(request())  # a plain miss: nothing stored to freshen
    cache = engine.cache
    assert cache is not None
    head = ResponseHead(304, b"Not Modified", "1.1", [(b"ETag", b'"v1"')], Framing.NONE, 0, True, frozenset())
    assert cache.on_not_modified(ds, current(ds), head) is PASSES
    assert rec.of("on_not_modified") == [PASSES]
    del up


async def test_5xx_within_stale_if_error_answers_with_the_stale_entry(engine: Engine) -> None:
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, STALE_IF_ERROR)
    up.data_received(UNAVAILABLE)
    assert rec.of("takeover") == [ANSWERS] and rec.of("on_not_modified") == []
    assert current(ds).cache_result == "stale-if-error"
    await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
    assert tr.take().startswith(b"HTTP/1.1 200 OK\r\n")


async def test_5xx_without_stale_if_error_passes_and_is_relayed(engine: Engine) -> None:
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, MUST_VALIDATE)
    up.data_received(UNAVAILABLE)
    assert rec.of("takeover") == [PASSES]
    assert tr.take().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


async def test_new_200_to_the_validation_passes_and_is_relayed(engine: Engine) -> None:
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, MUST_VALIDATE)
    up.data_received(b'HTTP/1.1 200 OK\r\nETag: "v2"\r\nContent-Length: 3\r\n\r\nnew')
    assert rec.of("takeover") == [PASSES]
    out = tr.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nnew")


# -- continue_without_client ----------------------------------------------------------------
LONG = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 4\r\n\r\n"


async def test_leader_leaving_mid_body_with_a_follower_is_adopted(engine: Engine) -> None:
    rec = replies(engine)
    up, up_tr = park_upstream(engine)
    leader, _ = client(engine)
    leader.data_received(request())
    follower, follower_tr = client(engine)
    follower.data_received(request())
    up.data_received(LONG + b"ab")
    leader.connection_lost(None)
    assert rec.of("continue_without_client") == [ADOPTED]
    assert not up_tr.closed  # the cache reads on for the follower
    up.data_received(b"cd")
    await until(lambda: bytes(follower_tr.out).endswith(b"\r\n\r\nabcd"))


async def test_leader_leaving_mid_body_alone_is_abandoned(engine: Engine) -> None:
    rec = replies(engine)
    up, up_tr = park_upstream(engine)
    leader, _ = client(engine)
    leader.data_received(request())
    up.data_received(LONG + b"ab")
    leader.connection_lost(None)
    assert rec.of("continue_without_client") == [ABANDONED]
    assert up_tr.closed
    cache = engine.cache
    assert cache is not None and not cache.fills


async def test_leader_leaving_before_the_response_head_is_abandoned(engine: Engine) -> None:
    """Followers wait, but nothing has been stored yet: they fetch for themselves."""
    rec = replies(engine)
    _, up_tr = park_upstream(engine)
    leader, _ = client(engine)
    leader.data_received(request())
    follower, _ = client(engine)
    follower.data_received(request())
    _, follower_up_tr = park_upstream(engine)
    leader.connection_lost(None)
    assert rec.of("continue_without_client") == [ABANDONED]
    assert up_tr.closed
    await until(lambda: bytes(follower_up_tr.out).startswith(b"GET /a "))


# -- serve_stale_on_error -------------------------------------------------------------------
async def test_upstream_garbage_within_stale_if_error_answers_with_the_stale_entry(engine: Engine) -> None:
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, STALE_IF_ERROR)
    up.data_received(b"garbage\r\n\r\n")  # 502 UpstreamProtocolError: the origin is broken
    assert rec.of("serve_stale_on_error") == [ANSWERS]
    assert current(ds).cache_result == "stale-if-error"
    await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
    assert tr.take().startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_name_that_no_longer_resolves_answers_with_the_stale_entry(engine: Engine) -> None:
    """The origin's name does not resolve (502 DnsError): the origin is unreachable."""
    rec = replies(engine)
    await store(engine, STALE_IF_ERROR)

    async def unresolvable(host: str, port: int) -> list[Any]:
        raise DnsError(f"cannot resolve {host}")

    engine.resolver.resolve = unresolvable  # type: ignore[method-assign]
    empty_pool(engine)
    ds, tr = client(engine)
    ds.data_received(request())  # nothing parked: the revalidation dials, and resolves first
    await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
    assert rec.of("serve_stale_on_error") == [ANSWERS]
    assert tr.take().startswith(b"HTTP/1.1 200 OK\r\n")


async def test_failure_without_stale_if_error_passes_and_answers_the_error(engine: Engine) -> None:
    rec = replies(engine)
    up, _, ds, tr = await revalidating(engine, MUST_VALIDATE)
    up.data_received(b"garbage\r\n\r\n")
    assert rec.of("serve_stale_on_error") == [PASSES]
    assert tr.take().startswith(b"HTTP/1.1 502 ")


async def test_failure_of_a_plain_miss_passes(engine: Engine) -> None:
    rec = replies(engine)
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(request())
    up.data_received(b"garbage\r\n\r\n")
    assert rec.of("serve_stale_on_error") == [PASSES]
    assert tr.take().startswith(b"HTTP/1.1 502 ")


ORIGIN_FAILURES = [
    UpstreamConnectError("connect to 127.0.0.1 port 80 failed: Connection refused"),
    UpstreamClosed("upstream closed the connection"),
    UpstreamProtocolError("bad framing"),
    UpstreamTimeout("upstream first byte timeout"),
    DnsError("cannot resolve origin.test"),
    NoHealthyUpstream("no healthy server in upstream 'web'"),
    UpstreamFull("every server is full"),
]
NOT_ORIGIN_FAILURES = [
    LoopDetected("request aimed at ferryman itself (origin.test:80)"),
    Forbidden("access to origin.test denied (rule: no-loopback)"),
    ClientProtocolError("bad chunk"),
    AuthBusy("too many password checks waiting"),  # 503, but ours
    FerrymanError("internal error"),  # 500, but ours
]


@pytest.mark.parametrize("exc", ORIGIN_FAILURES, ids=lambda e: type(e).__name__)
async def test_an_origin_failure_answers_with_the_stale_entry(engine: Engine, exc: FerrymanError) -> None:
    rec = replies(engine)
    _, _, ds, tr = await revalidating(engine, STALE_IF_ERROR)
    ds.fail(current(ds), exc)
    assert rec.of("serve_stale_on_error") == [ANSWERS]
    await until(lambda: bytes(tr.out).endswith(b"\r\n\r\nhi"))
    assert tr.take().startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("exc", NOT_ORIGIN_FAILURES, ids=lambda e: type(e).__name__)
async def test_a_refusal_or_an_error_of_ferrymans_own_passes(engine: Engine, exc: FerrymanError) -> None:
    """Not the origin failing: the client gets the error, whatever its status (a 500 or
    503 of ferryman's own included), never the stale entry."""
    rec = replies(engine)
    _, _, ds, tr = await revalidating(engine, STALE_IF_ERROR)
    ds.fail(current(ds), exc)
    assert rec.of("serve_stale_on_error") == [PASSES]
    assert tr.take().startswith(b"HTTP/1.1 %d " % exc.status)


async def test_a_loop_found_after_resolving_passes_with_508() -> None:
    """The revalidation's address is one of ferryman's own listeners (a loop through DNS):
    the post-resolve phase refuses it, and the refusal is answered, not the stale entry."""
    engine = await cached_engine(
        "listeners: [{listen: '127.0.0.1:80', mode: forward}]\ncache: {store: memory}\n"
    )
    try:
        rec = replies(engine)
        await store(engine, STALE_IF_ERROR)

        async def ourselves(host: str, port: int) -> list[Any]:
            return [(socket.AF_INET, ("127.0.0.1", port))]

        engine.resolver.resolve = ourselves  # type: ignore[method-assign]
        empty_pool(engine)
        ds, tr = client(engine)
        ds.data_received(request())
        await until(lambda: bool(tr.out))
        assert rec.of("serve_stale_on_error") == [PASSES]
        out = tr.take()
        assert out.startswith(b"HTTP/1.1 508 ") and b"aimed at ferryman itself" in out
    finally:
        await shut(engine)


async def test_fresh_entries_are_never_asked(engine: Engine) -> None:
    """A hit answers without the upstream: none of the response-side methods runs."""
    rec = replies(engine)
    await store(engine, FRESH)
    ds, tr = client(engine)
    ds.data_received(request())
    assert tr.take().endswith(b"\r\n\r\nhi")
    assert rec.calls == []
