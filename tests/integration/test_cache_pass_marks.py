"""Misses for a URL lately answered uncacheable go upstream at once, not one after another
(pipeline/cache/passes.py, Varnish's hit-for-pass), and the URL is stored again within
about a second (the mark's probe) once its response can be.

The origin holds every request for the watched path until ``N`` of them are in flight
together (or a deadline passes): if the proxy made them wait for one another's fill, the
origin never sees them together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers.origin import Origin, answering, path_of, response, serve
from tests.helpers.procs import run_ferryman
from tests.helpers.wait import wait_for

N = 8
BARRIER_WAIT = 5.0  # the origin answers anyway after this, so a failing test ends


class Gate:
    """Counts the requests in flight for a path; records whether N were ever in flight."""

    def __init__(self) -> None:
        self.armed = False  # hold /gated requests until N are in flight
        self.cacheable = False
        self.inflight = 0
        self.peak = 0
        self.reached: asyncio.Event | None = None
        self.lock = threading.Lock()

    async def answer(self, origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
        if self.reached is None:
            self.reached = asyncio.Event()
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        if self.inflight >= N:
            self.reached.set()
        try:
            if self.armed and path_of(head) == "/gated":
                try:
                    await asyncio.wait_for(self.reached.wait(), BARRIER_WAIT)
                except TimeoutError:
                    pass
        finally:
            self.inflight -= 1
        cc = "max-age=300" if self.cacheable else "no-store"
        writer.write(response(200, b"dynamic", {"Cache-Control": cc}))
        await writer.drain()


def fetch_all(proxy: str, url: str, n: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: httpx.get(url, proxy=proxy, timeout=30), range(n)))


def test_misses_for_an_uncacheable_url_do_not_wait_for_each_other(tmp_path: Path) -> None:
    gate = Gate()
    with serve(answering(gate.answer)) as origin, run_ferryman(
        tmp_path, cache={"store": "memory", "forward": True}
    ) as fm:
        proxy = f"http://127.0.0.1:{fm.port}"
        url = f"{origin.url}/gated"
        # The first answer says no-store: the URL is marked.
        assert httpx.get(url, proxy=proxy, timeout=30).headers["cache-control"] == "no-store"
        gate.armed, gate.peak = True, 0
        answers = fetch_all(proxy, url, N)
        assert [r.status_code for r in answers] == [200] * N
        assert gate.peak >= N, f"only {gate.peak} of {N} misses reached the origin together"


def test_a_marked_url_is_stored_again_once_its_response_can_be(tmp_path: Path) -> None:
    gate = Gate()
    with serve(answering(gate.answer)) as origin, run_ferryman(
        tmp_path, cache={"store": "memory", "forward": True}
    ) as fm:
        proxy = f"http://127.0.0.1:{fm.port}"
        url = f"{origin.url}/page"
        assert httpx.get(url, proxy=proxy, timeout=30).headers["cache-control"] == "no-store"
        gate.cacheable = True
        t0 = time.monotonic()

        def hit() -> bool:
            r = httpx.get(url, proxy=proxy, timeout=30)
            return r.status_code == 200 and "hit" in r.headers.get("cache-status", "")

        wait_for(hit, timeout=10, what="a hit once the origin's answer became cacheable", interval=0.05)
        assert time.monotonic() - t0 < 5  # the mark's probe, once a second, found it storable
        before = len(origin.requests)
        assert hit() and len(origin.requests) == before
