"""Vary: variants per URL are capped, least recently used first, and a hit costs the same
whatever the number of variants (issue 9.4).

One URL varies on User-Agent and is asked for by thousands of agents.  With the disk
store and ``max_variants: 8`` the directory holds 8 files for it, the most recent agent
is a hit and the first ones were evicted; with the memory store exactly the 32 most
recently used variants are kept.  With the memory store
(default cap, 32) only 32 variants are kept, and a hit on that URL takes about as long
as a hit on a URL that does not vary (variants are found by a hash of the selecting
values; before, lookup compared the request with every stored variant in turn).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.helpers.cache_integ import admin_cache, reverse_cache_config
from tests.helpers.origin import Origin, answering, header_value, path_of, response, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.rawhttp import RawClient
from tests.helpers.wait import wait_for


async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    path = path_of(head)
    headers = {"Cache-Control": "max-age=600"}
    if path == "/vary":
        headers["Vary"] = "User-Agent"
        body = f"for {header_value(head, 'user-agent')}".encode()
    else:
        body = b"the same for everyone"
    writer.write(response(200, body, headers))
    await writer.drain()


class Client:
    """One keep-alive connection: (Cache-Status, body) of each GET."""

    def __init__(self, port: int) -> None:
        self.raw = RawClient(port)

    def get(self, path: str, agent: str) -> tuple[bytes, bytes]:
        req = f"GET {path} HTTP/1.1\r\nHost: site.test\r\nUser-Agent: {agent}\r\n\r\n"
        resp = self.raw.request(req.encode())
        return (resp.header("cache-status") or "").encode("latin-1"), resp.body

    def close(self) -> None:
        self.raw.close()


def test_variants_per_url_are_capped_least_recently_used_first(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = {"store": "disk", "path": str(cache_dir), "max_variants": 8}
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **reverse_cache_config(free_port(), free_port(), origin.url, cache=cache)
    ) as fm:
        client = Client(fm.port)
        try:
            for n in range(300):
                status, body = client.get("/vary", f"agent/{n}")
                assert body == f"for agent/{n}".encode() and b"stored" in status

            def files() -> list[Path]:
                return [p for p in cache_dir.rglob("*-*") if p.is_file() and not p.name.startswith(".tmp-")]

            wait_for(lambda: len(files()) == 8 or None, 10, "8 variant files on disk")
            # Fills commit in the disk threads, not quite in request order: the last one is
            # surely among the 8 most recent, the first ones surely not.
            status, body = client.get("/vary", "agent/299")
            assert b"hit" in status and body == b"for agent/299"
            status, body = client.get("/vary", "agent/0")
            assert b"hit" not in status and body == b"for agent/0"
            wait_for(lambda: len(files()) == 8 or None, 10, "still 8 variant files")
        finally:
            client.close()


def test_a_hit_costs_the_same_whatever_the_number_of_variants(tmp_path: Path) -> None:
    admin = free_port()
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **reverse_cache_config(free_port(), admin, origin.url)
    ) as fm:
        client = Client(fm.port)
        try:
            client.get("/plain", "any")
            for n in range(3_000):
                client.get("/vary", f"agent/{n}")
            assert b"hit" in client.get("/vary", "agent/2999")[0]
            assert b"hit" in client.get("/plain", "any")[0]
            assert admin_cache(admin)["entries"] == 32 + 1  # the default cap, and /plain
            # the 32 most recently used variants are kept (memory fills commit in order)
            for n in range(2_968, 3_000):
                assert b"hit" in client.get("/vary", f"agent/{n}")[0], n
            assert b"hit" not in client.get("/vary", "agent/2967")[0]
            assert b"hit" in client.get("/vary", "agent/2999")[0]
            plain = vary = 0.0
            for _ in range(300):  # interleaved, so load on the machine hits both alike
                t0 = time.perf_counter()
                client.get("/plain", "any")
                t1 = time.perf_counter()
                client.get("/vary", "agent/2999")
                t2 = time.perf_counter()
                plain += t1 - t0
                vary += t2 - t1
            timing = f"300 hits: {vary * 1000:.0f} ms varying, {plain * 1000:.0f} ms plain"
            assert vary < 3 * plain + 0.05, timing
        finally:
            client.close()
