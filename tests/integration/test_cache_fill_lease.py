"""A background cache fill (a Range miss's whole-object fetch, a stale-while-revalidate
refresh) holds a server slot like any request: it counts toward ``max_conns`` and the
in-flight requests of ``/status``, waits in the upstream's queue when every server is
full, gives the slot back exactly once when it ends, and its failures count against the
server's passive health.  It used to dial a server picked without a lease: a concurrent
request then went past ``max_conns: 1`` and a failing fill never ejected its server.

The origin here is slow on purpose: a fill's body stops after its first bytes until
the test opens its gate, so the fill is in flight for as long as the test looks.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.helpers.origin import Origin, header_value, path_of, read_head, reset, serve
from tests.helpers.procs import Ferryman, free_port, run_reverse
from tests.helpers.rawhttp import Response, connect, read_response
from tests.helpers.wait import wait_for, wait_port, wait_text

BODY = bytes(range(256)) * 4  # 1024 bytes
FIRST = 100  # bytes a held fill sends before waiting for its gate


@dataclass
class Load:
    """What the origin is doing: requests being served at once, and the most ever."""

    open: int = 0
    peak: int = 0
    swr: dict[str, int] = field(default_factory=dict)  # requests per /swr-* path


def _handler(load: Load) -> Any:
    async def handle(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            load.open += 1
            load.peak = max(load.peak, load.open)
            try:
                if not await _answer(origin, load, head, writer):
                    return
            finally:
                load.open -= 1

    return handle


async def _gate(origin: Origin, name: str) -> None:
    await asyncio.get_running_loop().run_in_executor(None, origin.event(name).wait, 20)


async def _answer(origin: Origin, load: Load, head: bytes, writer: asyncio.StreamWriter) -> bool:
    path = path_of(head)
    rng = header_value(head, "range")
    cacheable = b"Cache-Control: max-age=300\r\nETag: \"v1\"\r\n"
    if rng is not None:  # a pass-through Range request: answered at once
        start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        part = BODY[start : end + 1]
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (start, end, len(BODY), len(part), part))
    elif path.startswith("/big/"):  # a whole object whose body waits for the gate
        writer.write(b"HTTP/1.1 200 OK\r\n" + cacheable + b"Content-Length: %d\r\n\r\n" % len(BODY))
        writer.write(BODY[:FIRST])
        await writer.drain()
        await _gate(origin, path)
        writer.write(BODY[FIRST:])
    elif path.startswith("/early/"):  # an interim response before the whole object
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + cacheable + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    elif path.startswith("/stall/"):  # the whole object's body stops after its first bytes
        writer.write(b"HTTP/1.1 200 OK\r\n" + cacheable + b"Content-Length: %d\r\n\r\n" % len(BODY))
        writer.write(BODY[:FIRST])
        await writer.drain()
        await _gate(origin, path)  # opened only when the test ends
        return False
    elif path.startswith("/broken/"):  # the whole object fails: RST
        reset(writer)
        return False
    elif path.startswith("/swr-"):
        n = load.swr[path] = load.swr.get(path, 0) + 1
        if n > 1 and path.startswith("/swr-fail"):
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom")
        else:
            if n > 1:
                await _gate(origin, path)
            body = b"version %d" % n
            # Stale as soon as stored (Age over max-age), within its stale-while-revalidate.
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-while-revalidate=600\r\n"
                         b"Age: 5\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    elif path.startswith("/hold/"):
        await _gate(origin, path)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    return True


@dataclass
class Site:
    fm: Ferryman
    admin: int
    origin: Origin
    load: Load

    def status(self) -> dict[str, Any]:
        doc = httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5, trust_env=False).json()
        assert isinstance(doc, dict)
        return doc

    def servers(self, group: str) -> list[dict[str, Any]]:
        return list(self.status()["upstreams"][group])

    def active(self, group: str) -> list[int]:
        return [s["active"] for s in self.servers(group)]

    def queued(self, group: str) -> int:
        return int(self.status()["queued"][group])

    def send(self, path: str, extra: str = "") -> socket.socket:
        sock = connect(self.fm.port, timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{extra}\r\n".encode())
        return sock

    def get(self, path: str, extra: str = "") -> Response:
        with self.send(path, extra) as sock:
            return read_response(sock, timeout=10)

    def open_gate(self, path: str) -> None:
        self.origin.event(path).set()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fill_lease")
    admin = free_port()
    load = Load()
    with serve(_handler(load)) as origin, serve(_handler(load)) as origin2:
        one = [{"url": origin.url, "max_conns": 1}]
        eject_first = {"failures": 1, "window": "60s", "ejection": "60s", "max_ejected_share": 1.0}
        ups = {
            "one": {"servers": one, "queue": {"max": 10, "timeout": "5s"}},
            "pair": {"servers": [{"url": origin.url}, {"url": origin2.url}],
                     "passive": {**eject_first, "max_ejected_share": 0.5}},
            "frail": {"servers": [{"url": origin.url}], "passive": eject_first},
        }
        routes = [
            {"match": {"path_prefix": "/broken/"}, "upstream": "pair", "cache": {"enabled": True}},
            {"match": {"path_prefix": "/swr-fail"}, "upstream": "frail", "cache": {"enabled": True}},
            {"upstream": "one", "cache": {"enabled": True}},
        ]
        with run_reverse(tmp, routes=routes, upstreams=ups, admin={"listen": f"127.0.0.1:{admin}"},
                         cache={"store": "memory"},
                         timeouts={"upstream_header": "10s", "upstream_idle": "10s",
                                   "shutdown_grace": "1s"}) as fm:
            wait_port(admin)
            yield Site(fm, admin, origin, load)


def _range(first: int, last: int) -> str:
    return f"Range: bytes={first}-{last}\r\n"


def test_a_range_fill_holds_the_servers_slot_and_a_concurrent_request_queues(site: Site) -> None:
    site.load.peak = 0
    first = site.get("/big/a", _range(0, 9))
    assert first.status == 206 and first.body == BODY[:10]  # from the fill, still running
    assert site.active("one") == [1]  # the fill is in flight on the server
    other = site.send("/plain")
    wait_for(lambda: site.queued("one") == 1, what="the request to queue behind the fill")
    assert site.load.open == 1 and site.load.peak == 1  # max_conns: 1 held at the origin
    site.open_gate("/big/a")
    with other:
        assert read_response(other, timeout=10).status == 200
    wait_for(lambda: site.active("one") == [0], what="the fill's slot to come back")
    assert site.load.peak == 1
    hit = site.get("/big/a", _range(10, 19))
    assert hit.status == 206 and hit.body == BODY[10:20] and "hit" in (hit.head.get("cache-status") or "")


def test_a_range_fill_meeting_a_full_server_waits_its_turn(site: Site) -> None:
    site.load.peak = 0
    hold = site.send("/hold/b")
    wait_for(lambda: site.load.open == 1, what="the slow request at the origin")
    ranged = site.send("/big/b", _range(0, 9))
    wait_for(lambda: site.queued("one") == 1, what="the fill to wait in the queue")
    assert site.active("one") == [1] and site.load.peak == 1
    site.open_gate("/big/b")  # the fill's body will not wait once it runs
    site.open_gate("/hold/b")
    with hold:
        assert read_response(hold, timeout=10).status == 200
    with ranged:
        got = read_response(ranged, timeout=10)
    assert got.status == 206 and got.body == BODY[:10]
    wait_for(lambda: site.active("one") == [0] and site.queued("one") == 0, what="slots back")
    assert site.load.peak == 1


def test_a_failing_range_fill_counts_against_its_server(site: Site) -> None:
    got = site.get("/broken/c", _range(0, 9))
    assert got.status == 206 and got.body == BODY[:10]  # passed through once the fill failed
    servers = site.servers("pair")
    assert [s["ejected"] for s in servers].count(True) == 1, servers  # the fill's server (failures: 1)
    assert [s["active"] for s in servers] == [0, 0]


def test_a_stale_while_revalidate_refresh_holds_a_slot_until_it_ends(site: Site) -> None:
    path = "/swr-held"
    assert site.get(path).body == b"version 1"
    stale = site.get(path)
    assert stale.body == b"version 1" and "hit" in (stale.head.get("cache-status") or "")
    wait_for(lambda: site.load.swr.get(path) == 2, what="the refresh at the origin")
    assert site.active("one") == [1]
    site.open_gate(path)
    wait_for(lambda: site.active("one") == [0], what="the refresh's slot to come back")
    wait_for(lambda: site.get(path).body == b"version 2", what="the refreshed entry")


def test_a_failing_refresh_counts_against_its_server(site: Site) -> None:
    path = "/swr-fail"
    assert site.get(path).body == b"version 1"
    assert site.get(path).body == b"version 1"  # stale, served at once; the refresh gets a 500
    wait_for(lambda: site.servers("frail")[0]["ejected"], what="the server ejected (failures: 1)")
    assert site.active("frail") == [0]


def test_a_fill_goes_on_past_an_interim_response(site: Site) -> None:
    # A 103 before the 200 used to end the fill ("no body"): its slot must not come back
    # at the interim's end either, only at the final response's.
    got = site.get("/early/d", _range(0, 9))
    assert got.status == 206 and got.body == BODY[:10]
    wait_for(lambda: site.active("one") == [0], what="the fill's slot to come back")
    hit = site.get("/early/d", _range(10, 19))
    assert hit.status == 206 and hit.body == BODY[10:20] and "hit" in (hit.head.get("cache-status") or "")


def test_a_fill_purged_meanwhile_keeps_its_slot_until_the_server_is_done(site: Site) -> None:
    first = site.get("/big/p", _range(0, 9))
    assert first.status == 206 and first.body == BODY[:10]
    purge = connect(site.fm.port, timeout=10)
    with purge:
        purge.sendall(b"PURGE /big/p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        assert read_response(purge, timeout=10).status in (200, 404)  # stored or not yet
    assert site.active("one") == [1]  # the server is still sending: the slot is still taken
    site.open_gate("/big/p")
    wait_for(lambda: site.active("one") == [0], what="the purged fill's slot to come back")
    assert not site.servers("one")[0]["ejected"]  # a purge is not the server's fault


def test_a_fill_kept_across_a_reload_gives_its_slot_back_once(site: Site) -> None:
    first = site.get("/big/r", _range(0, 9))
    assert first.status == 206 and site.active("one") == [1]
    site.fm.reload()
    wait_text(site.fm.stderr, "configuration reloaded")
    # The server stays, so the new Plan's group takes over its in-flight count: the fill
    # still holds its slot there, and gives it back once (into the new group's count).
    assert site.active("one") == [1]
    site.open_gate("/big/r")
    wait_for(lambda: site.get("/big/r", _range(10, 19)).status == 206, what="the object served")
    wait_for(lambda: site.active("one") == [0], what="nothing in flight")
    hit = site.get("/big/r", _range(20, 29))
    assert hit.body == BODY[20:30] and "hit" in (hit.head.get("cache-status") or "")
    assert site.active("one") == [0]
    assert "Traceback" not in site.fm.stderr()


# -- a fill ended by a timeout ----------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Short upstream timeouts, so a stalled fill is given up within a second."""
    tmp = tmp_path_factory.mktemp("fill_lease_quick")
    admin = free_port()
    load = Load()
    with serve(_handler(load)) as origin:
        ups = {"one": {"servers": [{"url": origin.url, "max_conns": 1}],
                       "passive": {"failures": 1, "window": "60s", "ejection": "60s",
                                   "max_ejected_share": 1.0}}}
        routes = [{"upstream": "one", "cache": {"enabled": True}}]
        with run_reverse(tmp, routes=routes, upstreams=ups, admin={"listen": f"127.0.0.1:{admin}"},
                         cache={"store": "memory"},
                         timeouts={"upstream_header": "600ms", "upstream_idle": "600ms",
                                   "shutdown_grace": "1s"}) as fm:
            wait_port(admin)
            yield Site(fm, admin, origin, load)


def test_a_stalled_fill_counts_against_its_server_and_gives_its_slot_back(quick: Site) -> None:
    first = quick.get("/stall/s", _range(0, 9))
    assert first.status == 206 and first.body == BODY[:10]  # the first bytes did arrive
    assert quick.active("one") == [1]
    wait_for(lambda: quick.servers("one")[0]["ejected"], what="the stalled fill to count (failures: 1)")
    assert quick.active("one") == [0]
