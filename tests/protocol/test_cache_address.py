"""The cache's answers to forward requests whose rules wait for the destination's
address (conn/cache_address.py): judged on the addresses the resolver has for the
name, hits and followers of a fill alike, with fake transports and a resolver whose
cache the test fills (no DNS)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from ferryman.conn.engine import Engine
from tests.protocol.test_cache_flow import FRESH, cached_engine, client, park_upstream, request, shut, store

RULES = "cache: {store: memory}\nforward: {rules: [{name: no-ten, deny: {networks: [10.0.0.0/8]}}]}\n"


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = await cached_engine(RULES)
    yield eng
    await shut(eng)


def resolves_to(engine: Engine, ip: str) -> None:
    """What the resolver has cached for origin.test now (as if DNS had answered that)."""
    engine.resolver._cache[("origin.test", 80)] = (engine.loop.time() + 60, [(socket.AF_INET, (ip, 80))])


async def test_hit_is_served_or_refused_by_the_address_the_name_has_now(engine: Engine) -> None:
    resolves_to(engine, "192.0.2.1")
    await store(engine, FRESH)
    ds, tr = client(engine)
    ds.data_received(request())
    assert b"Cache-Status: ferryman; hit" in tr.take()  # judged at once: the address is known
    resolves_to(engine, "10.1.2.3")  # the name moved into a denied network
    ds, tr = client(engine)
    ds.data_received(request())
    out = tr.take()
    assert out.startswith(b"HTTP/1.1 403 ") and b"(rule: no-ten)" in out and tr.closed


async def test_a_follower_of_a_fill_is_judged_on_the_address_too(engine: Engine) -> None:
    resolves_to(engine, "192.0.2.1")
    up, up_tr = park_upstream(engine)  # the leader's pooled connection: peer 127.0.0.1
    leader, leader_tr = client(engine)
    leader.data_received(request())
    assert up_tr.take().startswith(b"GET /a ")
    resolves_to(engine, "10.1.2.3")
    follower, follower_tr = client(engine)
    follower.data_received(request())  # would join the leader's fill: refused first
    out = follower_tr.take()
    assert out.startswith(b"HTTP/1.1 403 ") and b"(rule: no-ten)" in out
    up.data_received(FRESH)
    assert leader_tr.take().endswith(b"\r\n\r\nhi")
    assert follower_tr.take() == b""
