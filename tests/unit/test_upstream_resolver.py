"""The resolver's cache is bounded, negative answers included (issue 9.1)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from ferryman.errors import DnsError
from ferryman.upstream.dial import Resolver


async def test_negative_answers_for_distinct_names_do_not_grow_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        if host.startswith("ok"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    resolver = Resolver(ttl=30.0, negative_ttl=30.0, max_entries=50)
    for n in range(1_000):  # a client asking for one made-up name after another
        with pytest.raises(DnsError):
            await resolver.resolve(f"nx{n}.example", 80)
        assert len(resolver._cache) <= 50
    with pytest.raises(DnsError):  # a negative answer is still cached: not asked again
        await resolver.resolve("nx999.example", 80)
    assert asked.count("nx999.example") == 1
    assert await resolver.resolve("ok.example", 80) == [(socket.AF_INET, ("127.0.0.1", 80))]


async def test_known_answers_only_from_a_fresh_positive_cache_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        if host.startswith("ok"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.7", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    resolver = Resolver(ttl=30.0, negative_ttl=30.0)
    now = loop.time()
    assert resolver.known("ok.example", 80, now) is None  # never asked: a lookup is needed
    await resolver.resolve("ok.example", 80)
    assert resolver.known("ok.example", 80, now) == [(socket.AF_INET, ("127.0.0.7", 80))]
    assert resolver.known("ok.example", 80, now + 31) is None  # expired
    with pytest.raises(DnsError):
        await resolver.resolve("nx.example", 80)
    assert resolver.known("nx.example", 80, now) is None  # a negative answer: resolve raises
