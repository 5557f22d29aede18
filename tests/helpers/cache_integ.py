"""Shared pieces of the cache integration tests: Cache-Status parsing, the config blocks
of a caching ferryman, and its admin counters.  (The origin is `tests.helpers.origin`:
``serve(answering(answer))`` and ``count(origin, path)``.)"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx


def cache_status(r: httpx.Response | Mapping[str, str]) -> str:
    headers = r.headers if isinstance(r, httpx.Response) else r
    return str(headers.get("cache-status", ""))


def members(r: httpx.Response) -> list[str]:
    """The Cache-Status parameters, e.g. ``["ferryman", "hit", "ttl=59"]``."""
    return [p.strip() for p in cache_status(r).split(";") if p.strip()]


def is_hit(r: httpx.Response) -> bool:
    return "hit" in members(r)


def is_stored(r: httpx.Response) -> bool:
    return "stored" in members(r)


def ttl_of(r: httpx.Response) -> int | None:
    m = re.search(r"(?:^|;)\s*ttl=(-?\d+)", cache_status(r))
    return None if m is None else int(m.group(1))


def reverse_cache_config(
    listen_port: int, admin_port: int, upstream_url: str, *, routes: list[dict[str, Any]] | None = None,
    cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Overrides for ``run_ferryman``: one reverse listener, an admin listener, a cache."""
    if routes is None:
        routes = [{"name": "all", "upstream": "o", "cache": {"enabled": True}}]
    return {
        "listeners": [{"listen": f"127.0.0.1:{listen_port}", "mode": "reverse"}],
        "routes": routes,
        "upstreams": {"o": {"servers": [{"url": upstream_url}]}},
        "cache": cache if cache is not None else {"store": "memory"},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "timeouts": {"shutdown_grace": "1s"},
    }


def admin_cache(admin_port: int) -> dict[str, Any]:
    """The cache part of the admin /status document (keys, hits, misses, fills)."""
    doc = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=5, trust_env=False).json()
    cache = doc["cache"]
    assert isinstance(cache, dict)
    return cache
