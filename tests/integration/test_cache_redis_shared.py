"""Two ferryman processes, one Redis cache: what one stores the other serves, and a Redis outage
is pass-through (200 from the origin), never a 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream
from tests.helpers.wait import wait_for
from tests.integration.test_cache_store_redis import RedisServer


@dataclass
class Pair:
    redis: RedisServer
    origin: Backend
    a: Ferryman
    b: Ferryman


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Instances A and B (reverse mode, ``cache: {store: redis}``) in front of one counting origin."""
    server = RedisServer(tmp_path).start()
    try:
        with backends("origin") as (origin,), ExitStack() as stack:
            cfg: dict[str, Any] = {
                "routes": [{"upstream": "o", "cache": {"enabled": True, "default_ttls": {200: "60s"}}}],
                "upstreams": {"o": upstream(origin.url)},
                "cache": {"store": "redis"},
                "shared": {"redis": server.url},
            }
            instances = []
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                instances.append(stack.enter_context(run_reverse(tmp_path / name, **cfg)))
            yield Pair(server, origin, *instances)
    finally:
        server.stop()


def get(fm: Ferryman, path: str) -> httpx.Response:
    # One Host for both instances: it is part of the cache key (their ports are not the same)
    return httpx.get(fm.proxy + path, headers={"Host": "site.test"}, timeout=10, trust_env=False)


def stored_entries(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        return len(list(r.scan_iter(match=b"ferryman:e:*")))


def test_what_one_instance_stores_the_other_serves(pair: Pair) -> None:
    first = get(pair.a, "/page")
    assert first.status_code == 200 and first.text == "origin"
    assert "stored" in first.headers["cache-status"]
    wait_for(lambda: stored_entries(pair.redis.url) == 1, 5, what="A's fill committed to Redis")

    second = get(pair.b, "/page")
    assert second.status_code == 200 and second.text == "origin"
    assert "hit" in second.headers["cache-status"], second.headers["cache-status"]
    assert pair.origin.count() == 1  # B never asked the origin
    assert int(second.headers["age"]) >= 0

    again = get(pair.a, "/page")  # and A serves its own entry from Redis too
    assert "hit" in again.headers["cache-status"]
    assert pair.origin.count() == 1


def test_redis_stopped_is_pass_through_never_500(pair: Pair) -> None:
    get(pair.a, "/known")
    wait_for(lambda: stored_entries(pair.redis.url) == 1, 5, what="A's fill committed to Redis")
    assert "hit" in get(pair.b, "/known").headers["cache-status"]
    before = pair.origin.count()

    pair.redis.stop()
    t0 = time.monotonic()
    answers = [get(fm, path) for fm in (pair.a, pair.b) for path in ("/known", "/new", "/known", "/new")]
    seen = [(r.status_code, r.text, r.headers.get("cache-status", "")) for r in answers]
    assert [s[:2] for s in seen] == [(200, "origin")] * 8, seen
    assert not any("hit" in s[2] for s in seen), seen
    assert pair.origin.count() == before + 8, seen  # every one of them went to the origin
    assert time.monotonic() - t0 < 5
    for fm in (pair.a, pair.b):
        assert fm.proc.poll() is None
        assert "redis cache" in fm.stderr()  # the outage is logged (once a minute at most)


def test_redis_hung_costs_at_most_a_timeout(pair: Pair) -> None:
    get(pair.a, "/hung")
    wait_for(lambda: stored_entries(pair.redis.url) == 1, 5, what="A's fill committed to Redis")
    pair.redis.pause()  # accepts connections, answers nothing
    try:
        for fm in (pair.a, pair.b):
            t0 = time.monotonic()
            r = get(fm, "/hung")
            assert r.status_code == 200 and r.text == "origin"
            assert time.monotonic() - t0 < 2.0  # one op_timeout (0.25 s), then the breaker
            t0 = time.monotonic()
            assert get(fm, "/hung").status_code == 200
            assert time.monotonic() - t0 < 0.5  # breaker open: Redis is not even asked
    finally:
        pair.redis.resume()
