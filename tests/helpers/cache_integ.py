"""Shared pieces of the cache integration tests: a path-dispatching origin that counts
what it is asked, Cache-Status parsing, and the config blocks of a caching ferryman.

The origin answers each request with ``answer(origin, head, writer)`` (an async
function that writes one whole response), so a test can script delays and events;
every request head is recorded in ``Origin.requests`` by ``read_request``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from tests.helpers.integ_servers import Origin, origin_server, read_request, request_path

Answer = Callable[[Origin, bytes, asyncio.StreamWriter], Awaitable[None]]


@contextmanager
def counting_origin(answer: Answer) -> Iterator[Origin]:
    """A keep-alive origin on 127.0.0.1 that answers every request with ``answer``."""

    async def handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(origin, reader)
            await answer(origin, head, writer)

    with origin_server(handler) as origin:
        yield origin


def method_of(head: bytes) -> str:
    return head.split(b" ", 1)[0].decode("latin-1")


def path_of(head: bytes) -> str:
    return request_path(head).split("?", 1)[0]


def count(origin: Origin, path: str, method: str | None = "GET") -> int:
    """How many requests for ``path`` (exact, query ignored) the origin has received."""
    return sum(
        1 for h in list(origin.requests) if path_of(h) == path and (method is None or method_of(h) == method)
    )


def heads_for(origin: Origin, path: str) -> list[bytes]:
    return [h for h in list(origin.requests) if path_of(h) == path]


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
