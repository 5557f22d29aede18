"""The cache's fills through a real ferryman and a real nginx origin, counting what reaches
the origin from nginx's access log: a fill completes whatever the client's speed; one
object gets one whole-object fill; purges and invalidations stick across fills in flight;
revalidations are coalesced like misses.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import admin_cache, is_hit, is_stored, reverse_cache_config
from tests.helpers.origin import (
    Origin,
    answering,
    count,
    header_value,
    heads_for,
    method_of,
    path_of,
    response,
    serve,
)
from tests.helpers.procs import Ferryman, Nginx, free_port, run_ferryman, run_nginx
from tests.helpers.rawhttp import curl, raw_client
from tests.helpers.wait import wait_for, wait_port

MiB = 1 << 20
LINE = re.compile(rb'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}) (?P<bytes>\d+)')


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    status: int
    size: int


def origin_log(ng: Nginx) -> list[Hit]:
    out = []
    for line in ng.access_log().encode().splitlines():
        m = LINE.search(line)
        if m:
            out.append(Hit(m["method"].decode(), m["path"].decode(), int(m["status"]), int(m["bytes"])))
    return out


def make_file(ng: Nginx, name: str, size: int) -> bytes:
    """A file nginx serves with Last-Modified a month ago: heuristically fresh for a while."""
    data = os.urandom(size)
    path = ng.root / name
    path.write_bytes(data)
    old = time.time() - 30 * 86400
    os.utime(path, (old, old))
    return data


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Nginx]:
    with run_nginx(tmp_path / "nginx") as ng:
        yield ng


def disk_proxy(tmp_path: Path, **cache: object) -> Iterator[Ferryman]:
    return run_ferryman(tmp_path, cache={"store": "disk", "path": str(tmp_path / "cache"), **cache})


def entry_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def fetch(fm: Ferryman, url: str, *headers: str) -> tuple[dict[str, str], int]:
    """GET through the proxy with curl (a fast reader); (response headers, body bytes)."""
    args = ["-x", fm.proxy, "-o", "/dev/null", "-D", "-", "-w", "\n%{size_download}"]
    for h in headers:
        args += ["-H", h]
    out = curl(*args, url).stdout.decode("latin-1")
    head, _, size = out.rpartition("\n")
    fields = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields, int(size)


# -- issue 8.7: "stored" means stored, whatever the client's speed --------------------------
def test_fast_client_fills_of_a_big_object_are_all_published(tmp_path: Path, origin: Nginx) -> None:
    make_file(origin, "big64", 64 * MiB)
    fills = 6
    with disk_proxy(tmp_path, max_size="1GiB") as fm:
        for i in range(fills):
            fields, size = fetch(fm, f"{origin.url}/big64?n={i}")
            assert size == 64 * MiB
            assert "stored" in fields["cache-status"], fields
        files = wait_for(lambda: (f := entry_files(tmp_path / "cache")) and len(f) >= fills and f, 20,
                           f"{fills} published entries")
        assert len(files) == fills
        for i in range(fills):
            fields, size = fetch(fm, f"{origin.url}/big64?n={i}")
            assert size == 64 * MiB and "hit" in fields["cache-status"], fields
    assert sum(1 for h in origin_log(origin) if h.path.startswith("/big64")) == fills


# -- issue 9.2: one object, one whole-object fill ------------------------------------------
def _range_get(fm: Ferryman, url: str, start: int, end: int) -> tuple[int, bytes, str]:
    with httpx.Client(proxy=fm.proxy, timeout=30, trust_env=False) as client:
        r = client.get(url, headers={"Range": f"bytes={start}-{end - 1}"})
        return r.status_code, r.content, r.headers.get("cache-status", "")


def test_concurrent_range_misses_and_a_plain_miss_make_one_whole_object_fill(
    tmp_path: Path, origin: Nginx
) -> None:
    size = 48 * MiB
    data = make_file(origin, "update.bin", size)
    url = f"{origin.url}/update.bin"
    with run_ferryman(tmp_path, cache={"store": "disk", "path": str(tmp_path / "cache")}) as fm:

        def plain() -> tuple[int, bytes, str]:
            with httpx.Client(proxy=fm.proxy, timeout=30, trust_env=False) as client:
                r = client.get(url)
                return r.status_code, r.content, r.headers.get("cache-status", "")

        for wave in (1, 2):
            with ThreadPoolExecutor(21) as pool:
                ranges = [pool.submit(_range_get, fm, url, i * 2 * MiB, i * 2 * MiB + MiB) for i in range(20)]
                whole = pool.submit(plain)
                for i, fut in enumerate(ranges):
                    status, body, _ = fut.result(60)
                    assert status == 206 and body == data[i * 2 * MiB : i * 2 * MiB + MiB], (wave, i)
                status, body, _ = whole.result(60)
                assert status == 200 and body == data
            if wave == 1:
                wait_for(lambda: entry_files(tmp_path / "cache"), 20, "the object stored")
                first = origin_log(origin)
        hits = origin_log(origin)
    whole_fetches = [h for h in hits if h.path == "/update.bin" and h.status == 200]
    assert len(whole_fetches) == 1, hits
    assert hits == first, "the second wave must be answered from the cache"


def test_a_range_already_arrived_is_answered_from_the_fill(tmp_path: Path, origin: Nginx) -> None:
    size = 48 * MiB
    data = make_file(origin, "slowread.bin", size)
    url = f"{origin.url}/slowread.bin"
    with run_ferryman(tmp_path, cache={"store": "disk", "path": str(tmp_path / "cache")}) as fm:
        with raw_client(fm.port, timeout=30) as leader:
            leader.send(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
            head = leader.read_head()
            assert head.status == 200 and "stored" in (head.get("cache-status") or "")
            assert leader.read_exact(4 * MiB) == data[: 4 * MiB]  # the leader then stops reading
            status, body, cs = _range_get(fm, url, MiB, 2 * MiB)
            assert status == 206 and body == data[MiB : 2 * MiB] and "collapsed" in cs
            assert origin_log(origin) == []  # nginx logs a request when it ends: only the fill runs
            assert leader.read_exact(size - 4 * MiB) == data[4 * MiB :]
        wait_for(lambda: origin_log(origin), 10, "the fill logged")
    assert [(h.path, h.status) for h in origin_log(origin)] == [("/slowread.bin", 200)]


@pytest.mark.parametrize("store", ["memory", "disk"])
@pytest.mark.parametrize("first_range", [False, True])
def test_an_object_of_exactly_max_object_size_is_cached(
    tmp_path: Path, origin: Nginx, store: str, first_range: bool
) -> None:
    make_file(origin, "exact", MiB)
    cache = {"store": store, "path": str(tmp_path / "cache"), "max_object_size": "1MiB", "max_size": "8MiB"}
    with run_ferryman(tmp_path, cache=cache) as fm:
        first, size = fetch(fm, f"{origin.url}/exact", *(["Range: bytes=0-9"] if first_range else []))
        assert size == (10 if first_range else MiB), first
        if not first_range:
            assert "stored" in first["cache-status"], first
        # A request during the background fill follows it: it asks the origin nothing more.
        wait_for(lambda: "hit" in fetch(fm, f"{origin.url}/exact")[0]["cache-status"], 5, "a hit")
    assert len(origin_log(origin)) == 1


def test_the_disk_store_by_default_caches_objects_bigger_than_the_memory_limit(
    tmp_path: Path, origin: Nginx
) -> None:
    make_file(origin, "big80", 80 * MiB)
    with disk_proxy(tmp_path) as fm:
        first, size = fetch(fm, f"{origin.url}/big80")
        assert size == 80 * MiB and "stored" in first["cache-status"], first
        wait_for(lambda: entry_files(tmp_path / "cache"), 20, "the entry published")
        second, size = fetch(fm, f"{origin.url}/big80")
        assert size == 80 * MiB and "hit" in second["cache-status"], second
    assert len(origin_log(origin)) == 1


# -- a scripted origin for the timing-sensitive cases ---------------------------------------
# /gate/*: waits for the test's "go:<path>" before its head; /vary-gate/*: head and a first
# part at once, the rest on "go:<path>" (Vary: Accept-Encoding); /nc/*: no-cache with an ETag,
# 304 to a matching If-None-Match only on "go:<path>"; /swr/*: stale at once, revalidatable.
ETAG = '"v1"'


async def scripted_answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    path, method = path_of(head), method_of(head)
    n = count(origin, path, method)
    if method != "GET":
        writer.write(response(200, b"posted"))
    elif path.startswith("/gate/"):
        await asyncio.to_thread(origin.event(f"go:{path}").wait, 10)
        writer.write(response(200, f"{path} #{n}".encode(), {"Cache-Control": "max-age=600"}))
    elif path.startswith("/vary-gate/"):
        ae = header_value(head, "accept-encoding") or "-"
        body = f"{ae} #{n} ".encode().ljust(2000, b".")
        writer.write(response(200, body, {"Cache-Control": "max-age=600", "Vary": "Accept-Encoding"})[:-1000])
        await writer.drain()
        await asyncio.to_thread(origin.event(f"go:{path}").wait, 10)
        writer.write(body[-1000:])
    elif path.startswith(("/nc/", "/swr/")):
        cc = "no-cache" if path.startswith("/nc/") else "max-age=0, stale-while-revalidate=600"
        if header_value(head, "if-none-match") == ETAG:
            await asyncio.to_thread(origin.event(f"go:{path}").wait, 10)
            writer.write(response(304, b"", {"ETag": ETAG, "Cache-Control": cc}, reason="Not Modified")
                         .replace(b"Content-Length: 0\r\n", b""))
        else:
            body = f"{path} #{n}".encode()
            writer.write(response(200, body, {"ETag": ETAG, "Cache-Control": cc}))
    else:
        writer.write(response(404, b"no such path", reason="Not Found"))
    await writer.drain()


@dataclass
class Proxied:
    origin: Origin
    fm: Ferryman
    admin: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.fm.port}{path}"

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url(path), headers=headers, timeout=15, trust_env=False)

    def misses(self) -> int:
        return int(admin_cache(self.admin)["misses"])

    def settled(self) -> None:
        """Every fill has ended and given back the memory it held for followers."""

        def done() -> bool:
            c = admin_cache(self.admin)
            return c["fills"] == 0 and c["fill_buffer_bytes"] == 0

        wait_for(done, 5, "no fill in flight")


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    with serve(answering(scripted_answer)) as origin:
        port, admin = free_port(), free_port()
        cfg = reverse_cache_config(port, admin, origin.url)
        with run_ferryman(tmp_path, **cfg) as fm:
            wait_port(admin, fm.proc)
            yield Proxied(origin, fm, admin)


# -- issue 9.5: a purge or invalidation during a fill sticks --------------------------------
@pytest.mark.parametrize("how", ["PURGE", "POST", "admin-url", "admin-prefix"])
def test_invalidation_while_a_fill_waits_for_its_head_is_not_lost(proxied: Proxied, how: str) -> None:
    path = f"/gate/{how.lower()}"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(proxied.get, path)
        wait_for(lambda: count(proxied.origin, path) == 1, 5, "the fill at the origin")
        if how.startswith("admin"):
            kind = how.split("-")[1]
            target = proxied.url(path if kind == "url" else "/gate/")
            admin = f"http://127.0.0.1:{proxied.admin}/purge"
            r = httpx.post(admin, json={kind: target}, timeout=5, trust_env=False)
        else:
            r = httpx.request(how, proxied.url(path), timeout=5, trust_env=False)
        assert r.status_code in (200, 404)
        proxied.origin.event(f"go:{path}").set()
        old = first.result(15)
    assert old.content == f"{path} #1".encode() and not is_stored(old)
    again = proxied.get(path)
    assert again.content == f"{path} #2".encode(), "the purged body must not be served"
    assert count(proxied.origin, path) == 2
    proxied.settled()


def test_purge_during_a_background_range_fill_is_not_lost(proxied: Proxied) -> None:
    path = "/gate/range"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(proxied.get, path, Range="bytes=0-3")
        wait_for(lambda: count(proxied.origin, path) == 1, 5, "the fill at the origin")
        r = httpx.request("PURGE", proxied.url(path), timeout=5, trust_env=False)
        assert r.status_code in (200, 404)
        proxied.origin.event(f"go:{path}").set()
        assert first.result(15).status_code in (200, 206)
    again = proxied.get(path)
    assert again.content == f"{path} #2".encode(), "the purged body must not be served"
    assert count(proxied.origin, path) == 2


# -- issue 9.6: revalidations are coalesced and conditional ---------------------------------
def test_concurrent_revalidations_of_one_entry_make_one_conditional_request(proxied: Proxied) -> None:
    path, clients = "/nc/many", 50
    assert is_stored(proxied.get(path))
    misses = proxied.misses()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(proxied.get, path) for _ in range(clients)]
        wait_for(lambda: proxied.misses() >= misses + clients, 10, "every request waiting")
        proxied.origin.event(f"go:{path}").set()
        results = [f.result(15) for f in futures]
    assert all(r.status_code == 200 and r.content == f"{path} #1".encode() for r in results)
    heads = heads_for(proxied.origin, path)
    assert len(heads) == 2, f"{len(heads)} requests reached the origin"
    assert header_value(heads[1], "if-none-match") == ETAG
    proxied.settled()


def test_stale_while_revalidate_refresh_is_conditional(proxied: Proxied) -> None:
    path = "/swr/refresh"
    proxied.origin.event(f"go:{path}").set()
    assert is_stored(proxied.get(path))
    stale = proxied.get(path)
    assert stale.content == f"{path} #1".encode()
    wait_for(lambda: count(proxied.origin, path) == 2, 5, "the background refresh")
    assert header_value(heads_for(proxied.origin, path)[1], "if-none-match") == ETAG


def test_range_on_a_stale_entry_revalidates_with_a_conditional_whole_object_request(proxied: Proxied) -> None:
    path = "/nc/range"
    proxied.origin.event(f"go:{path}").set()
    full = proxied.get(path)
    assert is_stored(full)
    part = proxied.get(path, Range="bytes=0-3")
    assert part.status_code == 206 and part.content == full.content[:4]
    heads = heads_for(proxied.origin, path)
    assert len(heads) == 2
    assert header_value(heads[1], "if-none-match") == ETAG and header_value(heads[1], "range") is None


# -- issue 9.4: another Vary variant arriving during a fill is stored too ---------------------
def test_a_variant_requested_during_anothers_fill_is_stored(proxied: Proxied) -> None:
    path = "/vary-gate/x"
    with raw_client(proxied.fm.port) as leader:
        leader.send(f"GET {path} HTTP/1.1\r\nHost: site.test\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        assert "stored" in (leader.read_head().get("cache-status") or "")
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(proxied.get, path, **{"Accept-Encoding": "identity", "Host": "site.test"})
            wait_for(lambda: count(proxied.origin, path) == 2, 5, "the other variant at the origin")
            proxied.origin.event(f"go:{path}").set()
            r = other.result(15)
        assert r.content.startswith(b"identity #2") and is_stored(r), r.headers
        leader.read_exact(2000 - 1000 + 0)
    again = proxied.get(path, **{"Accept-Encoding": "identity", "Host": "site.test"})
    assert is_hit(again) and again.content == r.content
    gz = proxied.get(path, **{"Accept-Encoding": "gzip", "Host": "site.test"})
    assert is_hit(gz) and gz.content.startswith(b"gzip #1")
    assert count(proxied.origin, path) == 2
    proxied.settled()
