"""The shared HTTP cache (RFC 9111) behind a reverse listener, end to end on loopback:
hit/miss and what may be stored, per-route opt-in and default TTLs, revalidation with
304, Vary, stale-if-error, request coalescing, Range and client conditionals from the
cache, and invalidation (unsafe methods, PURGE, the admin purge API).

One origin and one ferryman serve the module; each test uses its own paths.  The origin
puts its request count in bodies (``/path #n``), so a body shows which fetch it came from.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import admin_cache, is_hit, is_stored, members, reverse_cache_config, ttl_of
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
from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.rawhttp import curl, parse_head, raw_client
from tests.helpers.wait import wait_for, wait_log, wait_port

LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
RANGE_BODY = b"".join(b"%02d" % i for i in range(50))  # 100 bytes: "000102...49"
PART1 = b"A" * 4000
PART2 = b"B" * 6000
CLIENTS = 50
GATED_A = b"a" * 1000
GATED_B = b"b" * 1000


@dataclass
class Script:
    """What the module's origin answers, per path; records the statuses it sent."""

    sent: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
        path, method = path_of(head), method_of(head)
        if path == "/slow":
            await self.slow(origin, writer)
            return
        if path.startswith("/gated/"):
            await self.gated(origin, path, writer)
            return
        if path == "/gated-vary":
            await asyncio.to_thread(origin.event(f"go:{path}").wait, 10)
        status, out = self.answer(origin, head, path, method)
        self.sent.append((path, status))
        writer.write(out)
        await writer.drain()

    def answer(self, origin: Origin, head: bytes, path: str, method: str) -> tuple[int, bytes]:
        n = count(origin, path, method)
        body = f"{path} #{n}".encode()
        if method != "GET":
            return 200, response(200, b"posted")
        etags = {"/reval/maxage": '"r1"', "/reval/nocache": '"r2"', "/reval/pipe": '"r3"', "/cond": '"c1"'}
        etag = etags.get(path)
        if etag is not None and header_value(head, "if-none-match") == etag:
            cc = "max-age=60" if path == "/reval/maxage" else "no-cache"
            return 304, _not_modified(etag, cc)
        headers: dict[str, str] = {}
        if path in ("/ttl/bare", "/bare"):
            pass  # no freshness information at all
        elif path == "/no-store":
            headers["Cache-Control"] = "no-store, max-age=60"
        elif path == "/private":
            headers["Cache-Control"] = "private, max-age=60"
        elif path == "/auth-public":
            headers["Cache-Control"] = "public, max-age=60"
        elif path == "/reval/maxage":
            headers.update({"Cache-Control": "max-age=1", "ETag": '"r1"'})
        elif path in ("/reval/nocache", "/reval/pipe"):
            headers.update({"Cache-Control": "no-cache", "ETag": etags[path]})
        elif path in ("/vary", "/gated-vary"):
            ae = header_value(head, "accept-encoding") or "-"
            body = f"variant {ae} #{n}".encode()
            headers.update({"Cache-Control": "max-age=60", "Vary": "Accept-Encoding"})
        elif path in ("/range", "/ifrange", "/rangefill"):
            headers.update({"Cache-Control": "max-age=60", "ETag": '"g1"', "Last-Modified": LAST_MODIFIED})
            if header_value(head, "range") == "bytes=0-9":
                headers["Content-Range"] = "bytes 0-9/100"
                return 206, response(206, RANGE_BODY[:10], headers, reason="Partial Content")
            body = RANGE_BODY
        elif path == "/sie503" and n > 1:
            return 503, response(503, b"origin failing", reason="Service Unavailable")
        elif path == "/sie503":
            headers["Cache-Control"] = "max-age=1, stale-if-error=60"
        elif path == "/cond":
            headers.update({"Cache-Control": "max-age=60", "ETag": '"c1"', "Last-Modified": LAST_MODIFIED})
        else:
            headers["Cache-Control"] = "max-age=60"
        return 200, response(200, body, headers)

    async def slow(self, origin: Origin, writer: asyncio.StreamWriter) -> None:
        """A slow origin: ~300 ms to the head, then the body in two parts; the second part
        only once every client has its first part (bounded), flagging ``part2-sent``."""
        await asyncio.sleep(0.3)
        writer.write(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n"
            % (len(PART1) + len(PART2)) + PART1
        )
        await writer.drain()
        await asyncio.to_thread(origin.event("part1-seen-by-all").wait, 10)
        origin.event("part2-sent").set()
        writer.write(PART2)
        await writer.drain()

    async def gated(self, origin: Origin, path: str, writer: asyncio.StreamWriter) -> None:
        """Head and GATED_A at once, GATED_B only once the test sets ``go:<path>`` (bounded)."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n"
            % (len(GATED_A) + len(GATED_B)) + GATED_A
        )
        await writer.drain()
        await asyncio.to_thread(origin.event(f"go:{path}").wait, 10)
        writer.write(GATED_B)
        await writer.drain()


def _not_modified(etag: str, cache_control: str) -> bytes:
    return (
        f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nCache-Control: {cache_control}\r\n\r\n"
    ).encode()


@dataclass
class Site:
    origin: Origin
    script: Script
    fm: Ferryman
    admin_port: int
    client: httpx.Client

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.fm.port}{path}"

    def get(self, path: str, **headers: str) -> httpx.Response:
        return self.client.get(self.url(path), headers=headers)

    def count(self, path: str, method: str | None = "GET") -> int:
        return count(self.origin, path, method)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    script = Script()
    with serve(answering(script)) as origin:
        port, admin = free_port(), free_port()
        routes = [
            {"name": "off", "match": {"path_prefix": "/off/"}, "upstream": "o"},
            {
                "name": "ttl", "match": {"path_prefix": "/ttl/"}, "upstream": "o",
                "cache": {"enabled": True, "default_ttls": {200: "60s"}},
            },
            {"name": "all", "match": {"path_prefix": "/"}, "upstream": "o", "cache": {"enabled": True}},
        ]
        cfg = reverse_cache_config(port, admin, origin.url, routes=routes)
        with run_ferryman(tmp_path_factory.mktemp("cache-reverse"), **cfg) as fm:
            wait_port(admin, fm.proc)
            with httpx.Client(timeout=10, trust_env=False) as client:
                yield Site(origin, script, fm, admin, client)


# -- hit / miss, and what may be stored ----------------------------------------------------
def test_second_get_is_a_hit_with_age_and_origin_asked_once(site: Site) -> None:
    first = site.get("/hit/a")
    assert first.status_code == 200 and first.content == b"/hit/a #1"
    assert members(first)[0] == "ferryman" and "fwd=uri-miss" in members(first)
    assert is_stored(first) and ttl_of(first) == 60
    second = site.get("/hit/a")
    assert second.status_code == 200 and second.content == b"/hit/a #1"
    assert is_hit(second) and not is_stored(second)
    assert 0 <= int(second.headers["age"]) <= 2
    assert 58 <= (ttl_of(second) or 0) <= 60
    assert site.count("/hit/a") == 1
    assert admin_cache(site.admin_port)["hits"] >= 1


def test_a_route_without_cache_never_caches(site: Site) -> None:
    bodies = [site.get("/off/a") for _ in range(3)]
    assert [r.content for r in bodies] == [b"/off/a #1", b"/off/a #2", b"/off/a #3"]
    assert all("cache-status" not in r.headers and "age" not in r.headers for r in bodies)
    assert site.count("/off/a") == 3


def test_default_ttl_applies_when_origin_gives_no_freshness(site: Site) -> None:
    first = site.get("/ttl/bare")
    assert is_stored(first) and ttl_of(first) == 60
    second = site.get("/ttl/bare")
    assert is_hit(second) and second.content == b"/ttl/bare #1"
    assert site.count("/ttl/bare") == 1
    # The same response on a route without default_ttls has no freshness: asked again.
    site.get("/bare")
    again = site.get("/bare")
    assert not is_hit(again) and again.content == b"/bare #2"
    assert site.count("/bare") == 2


@pytest.mark.parametrize("directive", ["no-store", "private"])
def test_no_store_and_private_responses_are_not_stored(site: Site, directive: str) -> None:
    path = f"/{directive}"
    first = site.get(path)
    assert first.status_code == 200 and not is_stored(first)
    assert f'detail="{directive}"' in members(first)
    second = site.get(path)
    assert not is_hit(second) and second.content == f"{path} #2".encode()
    assert site.count(path) == 2


def test_authorization_request_not_stored_unless_public(site: Site) -> None:
    auth = {"Authorization": "Bearer secret"}
    first = site.get("/auth", **auth)
    assert not is_stored(first) and 'detail="authorization"' in members(first)
    second = site.get("/auth", **auth)
    assert not is_hit(second) and second.content == b"/auth #2"
    assert site.count("/auth") == 2

    pub = site.get("/auth-public", **auth)
    assert is_stored(pub)
    again = site.get("/auth-public", **auth)
    assert is_hit(again) and again.content == b"/auth-public #1"
    assert site.count("/auth-public") == 1


# -- revalidation --------------------------------------------------------------------------
def test_expired_entry_is_revalidated_with_if_none_match_and_304(site: Site) -> None:
    path = "/reval/maxage"
    first = site.get(path)
    assert is_stored(first) and ttl_of(first) == 1 and first.content == b"/reval/maxage #1"

    def revalidated() -> httpx.Response | None:
        r = site.get(path)
        assert r.status_code == 200 and r.content == first.content  # hits, then the validated one
        return r if site.count(path) == 2 else None

    r = wait_for(revalidated, timeout=5, what="the entry to go stale and be revalidated")
    conditional = heads_for(site.origin, path)[1]
    assert header_value(conditional, "if-none-match") == '"r1"'
    assert site.script.sent.count((path, 304)) == 1
    assert not is_hit(r) and "fwd=stale" in members(r)
    assert r.headers["cache-control"] == "max-age=60"  # the 304's fields freshened the entry
    after = site.get(path)
    assert is_hit(after) and after.content == first.content and (ttl_of(after) or 0) >= 58
    assert site.count(path) == 2


def test_no_cache_response_is_validated_on_every_use(site: Site) -> None:
    path = "/reval/nocache"
    first = site.get(path)
    assert is_stored(first)
    for n in (2, 3):
        r = site.get(path)
        assert r.status_code == 200 and r.content == b"/reval/nocache #1"
        assert not is_hit(r)
        assert site.count(path) == n
        assert header_value(heads_for(site.origin, path)[-1], "if-none-match") == '"r2"'
    assert site.script.sent.count((path, 304)) == 2


def test_a_request_pipelined_behind_a_revalidated_one_is_answered(site: Site) -> None:
    path = "/reval/pipe"
    assert is_stored(site.get(path))

    def request(target: str) -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{site.fm.port}\r\n\r\n".encode()

    with raw_client(site.fm.port, timeout=2) as c:
        c.send(request(path) + request("/hit/pipelined"))
        first = c.read_response()
        assert first.status == 200 and first.body == b"/reval/pipe #1"
        assert header_value(heads_for(site.origin, path)[-1], "if-none-match") == '"r3"'
        try:
            second = c.read_response()
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"no answer to the pipelined request: {exc!r}")
        assert second.status == 200 and second.body == b"/hit/pipelined #1"


# -- Vary ----------------------------------------------------------------------------------
def test_vary_accept_encoding_stores_two_variants(site: Site) -> None:
    gz = site.get("/vary", **{"Accept-Encoding": "gzip"})
    ident = site.get("/vary", **{"Accept-Encoding": "identity"})
    assert is_stored(gz) and is_stored(ident)
    assert "fwd=vary-miss" in members(ident)
    assert gz.content == b"variant gzip #1" and ident.content == b"variant identity #2"
    for _ in range(2):
        r1 = site.get("/vary", **{"Accept-Encoding": "identity"})
        r2 = site.get("/vary", **{"Accept-Encoding": "gzip"})
        assert is_hit(r1) and r1.content == b"variant identity #2"
        assert is_hit(r2) and r2.content == b"variant gzip #1"
    assert site.count("/vary") == 2


# -- stale-if-error ------------------------------------------------------------------------
def test_stale_if_error_serves_the_stale_body_when_the_origin_is_down(tmp_path: Path) -> None:
    async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
        path = path_of(head)
        cc = "max-age=1, stale-if-error=60" if path == "/sie" else "max-age=1"
        writer.write(response(200, f"{path} body".encode(), {"Cache-Control": cc}))
        await writer.drain()

    with ExitStack() as origin_alive:
        origin = origin_alive.enter_context(serve(answering(answer)))
        port, admin = free_port(), free_port()
        with run_ferryman(tmp_path, **reverse_cache_config(port, admin, origin.url)) as fm:
            base = f"http://127.0.0.1:{fm.port}"
            with httpx.Client(timeout=10, trust_env=False) as client:
                assert is_stored(client.get(f"{base}/plain"))
                assert is_stored(client.get(f"{base}/sie"))
                origin_alive.close()  # the origin is gone: connections refused from now on

                def stale() -> httpx.Response | None:
                    r = client.get(f"{base}/sie")
                    assert r.status_code == 200 and r.content == b"/sie body"
                    ttl = ttl_of(r)
                    return r if ttl is not None and ttl < 0 else None

                r = wait_for(stale, timeout=5, what="the stale-if-error entry to be served stale")
                assert is_hit(r) and int(r.headers["age"]) >= 1
                # Without stale-if-error the stale entry is not served when the origin fails.
                assert client.get(f"{base}/plain").status_code == 502


def test_stale_if_error_also_covers_an_origin_5xx_answer(site: Site) -> None:
    path = "/sie503"
    assert is_stored(site.get(path))

    def asked_again() -> httpx.Response | None:
        r = site.get(path)
        return r if site.count(path) == 2 else None

    r = wait_for(asked_again, timeout=5, what="the entry to go stale and the origin to be asked")
    assert site.script.sent[-1] == (path, 503)
    assert r.status_code == 200 and r.content == b"/sie503 #1"


# -- coalescing ----------------------------------------------------------------------------
async def test_concurrent_misses_make_one_fetch_and_followers_stream_as_it_arrives(site: Site) -> None:
    url = site.url("/slow")
    part2_sent = site.origin.event("part2-sent")
    all_seen = site.origin.event("part1-seen-by-all")
    first_part_before_second: list[bool] = []

    async def fetch() -> tuple[int, str, bytes]:
        async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
            async with client.stream("GET", url) as r:
                buf = b""
                async for chunk in r.aiter_raw():
                    before = len(buf) < len(PART1)
                    buf += chunk
                    if before and len(buf) >= len(PART1):
                        first_part_before_second.append(not part2_sent.is_set())
                        if len(first_part_before_second) == CLIENTS:
                            all_seen.set()
                return r.status_code, r.headers.get("cache-status", ""), buf

    results = await asyncio.wait_for(asyncio.gather(*(fetch() for _ in range(CLIENTS))), 20)
    assert site.count("/slow") == 1
    assert all(status == 200 and body == PART1 + PART2 for status, _, body in results)
    statuses = [cs for _, cs, _ in results]
    assert sum("stored" in cs for cs in statuses) == 1
    assert sum('detail="collapsed"' in cs for cs in statuses) == CLIENTS - 1
    # Every client, leader and followers alike, had the first part before the origin sent
    # the second: followers are fed from the fill as it arrives, not after it completes.
    assert len(first_part_before_second) == CLIENTS and all(first_part_before_second)


def test_coalescing_respects_vary(site: Site) -> None:
    path = "/gated-vary"
    misses = admin_cache(site.admin_port)["misses"]

    def get(ae: str) -> httpx.Response:
        return httpx.get(site.url(path), headers={"Accept-Encoding": ae}, timeout=15, trust_env=False)

    with ThreadPoolExecutor(2) as pool:
        gz = pool.submit(get, "gzip")
        wait_for(lambda: site.count(path) == 1, 5, "the first request at the origin")
        ident = pool.submit(get, "identity")
        wait_for(lambda: admin_cache(site.admin_port)["misses"] >= misses + 2, 5, "the second miss")
        site.origin.event(f"go:{path}").set()
        r_gz, r_ident = gz.result(15), ident.result(15)
    assert r_gz.status_code == 200 and r_gz.content.startswith(b"variant gzip #")
    assert r_ident.status_code == 200 and r_ident.content.startswith(b"variant identity #")


def test_followers_get_the_whole_body_when_the_leader_resets(site: Site) -> None:
    path = "/gated/leader"
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{site.fm.port}\r\n\r\n".encode()
    misses = admin_cache(site.admin_port)["misses"]
    with raw_client(site.fm.port) as leader, raw_client(site.fm.port) as follower:
        leader.send(request)
        assert "stored" in (leader.read_head().get("cache-status") or "")
        assert leader.read_exact(len(GATED_A)) == GATED_A
        follower.send(request)
        wait_for(lambda: admin_cache(site.admin_port)["misses"] >= misses + 2, 5, "the follower's miss")
        leader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leader.close()  # RST
        wait_log(
            site.fm.access_log,
            lambda e: e.get("target") == path and "client closed" in str(e.get("error") or ""),
        )
        site.origin.event(f"go:{path}").set()
        try:
            resp = follower.read_response()
        except (EOFError, ConnectionResetError) as exc:
            pytest.fail(f"the follower was cut off: {exc}")
    assert 'detail="collapsed"' in (resp.head.get("cache-status") or "")
    assert resp.status == 200 and resp.body == GATED_A + GATED_B
    assert site.count(path) == 1


# -- Range ---------------------------------------------------------------------------------
def test_range_requests_are_answered_from_the_cached_object(site: Site) -> None:
    full = site.get("/range")
    assert is_stored(full) and full.content == RANGE_BODY
    out = curl("-i", "-r", "0-9", site.url("/range"))
    raw_head, _, body = out.stdout.partition(b"\r\n\r\n")
    head = parse_head(raw_head)
    assert head.status == 206 and head.get("content-range") == "bytes 0-9/100"
    assert body == RANGE_BODY[:10] and "hit" in (head.get("cache-status") or "")
    suffix = site.get("/range", Range="bytes=-5")
    assert suffix.status_code == 206 and suffix.headers["content-range"] == "bytes 95-99/100"
    assert suffix.content == RANGE_BODY[-5:]
    open_ended = site.get("/range", Range="bytes=90-")
    assert open_ended.status_code == 206 and open_ended.content == RANGE_BODY[90:]
    bad = site.get("/range", Range="bytes=100-")
    assert bad.status_code == 416 and bad.headers["content-range"] == "bytes */100"
    if_range = site.get("/range", Range="bytes=0-9", **{"If-Range": '"g1"'})
    assert if_range.status_code == 206 and if_range.content == RANGE_BODY[:10]
    # Range is for GET only (RFC 9110 14.2): a HEAD hit with one is a plain HEAD answer.
    head_hit = httpx.head(site.url("/range"), headers={"Range": "bytes=0-9"}, trust_env=False, timeout=10)
    assert head_hit.status_code == 200 and head_hit.headers["content-length"] == "100"
    assert "content-range" not in head_hit.headers and is_hit(head_hit)
    assert site.count("/range") == 1


def test_range_miss_is_answered_from_the_whole_object_fill(site: Site) -> None:
    # The Range miss starts one whole-object fill and, its bytes being the first to arrive,
    # is answered from it (issue 9.2): one origin request, not a Range plus a whole fetch.
    keys = admin_cache(site.admin_port)["keys"]
    first = site.get("/rangefill", Range="bytes=0-9")
    assert first.status_code == 206 and first.content == RANGE_BODY[:10]
    assert first.headers["content-range"] == "bytes 0-9/100"
    wait_for(lambda: admin_cache(site.admin_port)["keys"] >= keys + 1, 5, "the background fill")
    heads = heads_for(site.origin, "/rangefill")
    assert [header_value(h, "range") for h in heads] == [None]  # the whole object, once
    later = site.get("/rangefill", Range="bytes=10-19")
    assert later.status_code == 206 and later.content == RANGE_BODY[10:20] and is_hit(later)
    assert later.headers["content-range"] == "bytes 10-19/100"
    assert site.count("/rangefill") == 1


def test_range_with_a_non_matching_if_range_gets_the_whole_body(site: Site) -> None:
    assert is_stored(site.get("/ifrange"))
    for validator in ('"other"', 'W/"g1"', "Sun, 31 Dec 2023 00:00:00 GMT"):
        r = site.get("/ifrange", Range="bytes=0-9", **{"If-Range": validator})
        assert r.status_code == 200 and r.content == RANGE_BODY, validator
    assert site.count("/ifrange") == 1


# -- client conditionals -------------------------------------------------------------------
def test_client_conditionals_are_answered_from_the_cache(site: Site) -> None:
    assert is_stored(site.get("/cond"))
    inm = site.get("/cond", **{"If-None-Match": '"c1"'})
    assert inm.status_code == 304 and inm.content == b"" and inm.headers["etag"] == '"c1"'
    assert is_hit(inm)
    weak = site.get("/cond", **{"If-None-Match": 'W/"other", W/"c1"'})
    assert weak.status_code == 304
    other = site.get("/cond", **{"If-None-Match": '"nope"'})
    assert other.status_code == 200 and other.content == b"/cond #1" and is_hit(other)
    ims = site.get("/cond", **{"If-Modified-Since": LAST_MODIFIED})
    assert ims.status_code == 304 and ims.content == b""
    older = site.get("/cond", **{"If-Modified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"})
    assert older.status_code == 200 and older.content == b"/cond #1"
    assert site.count("/cond") == 1


# -- invalidation --------------------------------------------------------------------------
def test_post_to_the_same_url_invalidates_the_stored_get(site: Site) -> None:
    assert is_stored(site.get("/inval"))
    assert is_hit(site.get("/inval"))
    posted = site.client.post(site.url("/inval"), content=b"x=1")
    assert posted.status_code == 200 and posted.content == b"posted"
    assert site.count("/inval", "POST") == 1
    after = site.get("/inval")
    assert not is_hit(after) and is_stored(after) and after.content == b"/inval #2"
    assert site.count("/inval") == 2


def test_purge_method_from_loopback_drops_the_entry(site: Site) -> None:
    path = "/purge/m"
    assert is_stored(site.get(path))
    assert is_hit(site.get(path))
    purged = site.client.request("PURGE", site.url(path))
    assert purged.status_code == 200
    assert site.count(path, None) == 1  # PURGE is the cache's, never forwarded
    after = site.get(path)
    assert not is_hit(after) and after.content == b"/purge/m #2"
    assert site.client.request("PURGE", site.url("/purge/never-stored")).status_code == 404


def test_admin_purge_by_url_and_by_prefix(site: Site) -> None:
    paths = ["/adm/one", "/adm/two", "/adm/dir/x", "/adm/dir/y"]
    for p in paths:
        assert is_stored(site.get(p))
        assert is_hit(site.get(p))
    admin = f"http://127.0.0.1:{site.admin_port}/purge"
    by_url = httpx.post(admin, json={"url": site.url("/adm/one")}, timeout=5, trust_env=False)
    assert by_url.status_code == 200 and by_url.json() == {"purged": 1}
    assert not is_hit(site.get("/adm/one")) and site.count("/adm/one") == 2
    assert is_hit(site.get("/adm/two"))

    by_prefix = httpx.post(admin, params={"prefix": site.url("/adm/dir/")}, headers={"X-Ferryman-Admin": "1"},
                           timeout=5, trust_env=False)
    assert by_prefix.status_code == 200 and by_prefix.json() == {"purged": 2}
    for p in ("/adm/dir/x", "/adm/dir/y"):
        r = site.get(p)
        assert not is_hit(r) and r.content == f"{p} #2".encode()
    assert is_hit(site.get("/adm/two")) and site.count("/adm/two") == 1
