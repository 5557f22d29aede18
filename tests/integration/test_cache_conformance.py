"""RFC 9111 rules a user sees through a real ferryman (reverse listener, recording origin):
Set-Cookie never replayed on heuristic freshness (and the same rule under ``ignore_origin``),
exactly one Age on a hit (the first of several stored values counts), an Expires that is not
exactly an HTTP-date is already expired, and nothing is written that can never be served.

The origin counts what it is asked per path and puts the count in bodies and cookies
(``session=<n>``), so a replayed response shows which fetch it came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import admin_cache, is_hit, is_stored, members, reverse_cache_config
from tests.helpers.origin import Origin, answering, count, path_of, serve
from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.rawhttp import Response, raw_client
from tests.helpers.wait import wait_for, wait_port

OLD = "Mon, 01 Jan 2024 00:00:00 GMT"  # a Last-Modified long past: heuristic freshness of a day
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"
BIG = 100 * 1024


def _http_date(t: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


def _lines(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in fields)


def answer_for(path: str, n: int) -> tuple[list[tuple[str, str]], bytes]:
    """The fields and body the origin sends for ``path`` on its ``n``-th request for it."""
    body = f"{path} #{n}".encode()
    fields: list[tuple[str, str]] = [("Date", _http_date(time.time()))]
    leaf = path.rsplit("/", 1)[-1]
    cookie = ("Set-Cookie", f"session={n}; Path=/")
    if leaf == "cookie-heuristic":
        fields += [("Last-Modified", OLD), cookie]
    elif leaf == "cookie-maxage":
        fields += [("Cache-Control", "max-age=60"), cookie]
    elif leaf == "cookie-expires":
        fields += [("Expires", FUTURE), cookie]
    elif leaf == "cookie-bare":
        fields += [cookie]
    elif leaf == "plain-heuristic":
        fields += [("Last-Modified", OLD)]
    elif path == "/age/one":
        fields += [("Cache-Control", "max-age=600"), ("Age", "30")]
    elif path == "/age/list":
        fields += [("Cache-Control", "max-age=600"), ("Age", "30, 500")]
    elif path == "/age/lines":
        fields += [("Cache-Control", "max-age=600"), ("Age", "30"), ("Age", "500")]
    elif path == "/expires/spaces":
        fields += [("Expires", FUTURE.replace(", ", ",  "))]
    elif path == "/expires/lower":
        fields += [("Expires", FUTURE.replace("GMT", "gmt"))]
    elif path == "/expires/good":
        fields += [("Expires", FUTURE)]
    elif path.startswith("/bare"):
        body = bytes([0x61 + n % 26]) * BIG  # no freshness, no validator
    else:
        fields += [("Cache-Control", "max-age=60")]
    return fields, body


async def origin_answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    path = path_of(head)
    fields, body = answer_for(path, count(origin, path))
    head = b"HTTP/1.1 200 OK\r\n" + _lines([*fields, ("Content-Length", str(len(body)))]) + b"\r\n"
    writer.write(head + body)
    await writer.drain()


@dataclass
class Site:
    origin: Origin
    fm: Ferryman
    admin_port: int
    client: httpx.Client

    def get(self, path: str) -> httpx.Response:
        return self.client.get(f"http://127.0.0.1:{self.fm.port}{path}")

    def raw_get(self, path: str) -> Response:
        with raw_client(self.fm.port, timeout=5) as c:
            return c.request(f"GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n".encode())

    def count(self, path: str) -> int:
        return count(self.origin, path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve(answering(origin_answer)) as origin:
        port, admin = free_port(), free_port()
        routes = [
            {
                "name": "ign", "match": {"path_prefix": "/ign/"}, "upstream": "o",
                "cache": {"enabled": True, "ignore_origin": True, "default_ttls": {200: "60s"}},
            },
            {
                "name": "ttl", "match": {"path_prefix": "/ttl/"}, "upstream": "o",
                "cache": {"enabled": True, "default_ttls": {200: "60s"}},
            },
            {"name": "all", "match": {"path_prefix": "/"}, "upstream": "o", "cache": {"enabled": True}},
        ]
        cfg = reverse_cache_config(port, admin, origin.url, routes=routes)
        with run_ferryman(tmp_path_factory.mktemp("cache-conformance"), **cfg) as fm:
            wait_port(admin, fm.proc)
            with httpx.Client(timeout=10, trust_env=False) as client:
                yield Site(origin, fm, admin, client)


# -- Set-Cookie (issue 8 item 1) -----------------------------------------------------------
def test_set_cookie_on_heuristic_freshness_is_never_replayed_to_the_next_client(site: Site) -> None:
    path = "/c/cookie-heuristic"
    alice = site.get(path)
    assert alice.headers["set-cookie"].startswith("session=1;")
    assert not is_stored(alice) and 'detail="set-cookie"' in members(alice)
    bob = site.get(path)
    assert not is_hit(bob) and bob.headers["set-cookie"].startswith("session=2;")
    assert site.count(path) == 2
    # the same response without a cookie is stored on that heuristic freshness
    assert is_stored(site.get("/c/plain-heuristic")) and is_hit(site.get("/c/plain-heuristic"))


def test_set_cookie_on_a_route_default_ttl_is_not_stored_either(site: Site) -> None:
    path = "/ttl/cookie-bare"
    assert not is_stored(site.get(path))
    assert site.get(path).headers["set-cookie"].startswith("session=2;")


@pytest.mark.parametrize("leaf", ["cookie-maxage", "cookie-expires"])
def test_set_cookie_stored_only_on_explicit_freshness(site: Site, leaf: str) -> None:
    path = f"/c/{leaf}"
    assert is_stored(site.get(path))
    assert is_hit(site.get(path)) and site.count(path) == 1


@pytest.mark.parametrize(
    ("leaf", "stored"),
    [("cookie-heuristic", False), ("cookie-bare", False), ("cookie-maxage", True), ("cookie-expires", True)],
)
def test_ignore_origin_and_the_normal_path_agree_on_set_cookie(site: Site, leaf: str, stored: bool) -> None:
    normal, ign = site.get(f"/ttl/agree/{leaf}"), site.get(f"/ign/agree/{leaf}")
    assert is_stored(normal) is stored and is_stored(ign) is stored
    again = site.get(f"/ign/agree/{leaf}")
    assert is_hit(again) is stored
    assert again.headers["set-cookie"] == ("session=1; Path=/" if stored else "session=2; Path=/")


# -- Age (item 2) ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/age/one", "/age/list", "/age/lines"])
def test_a_hit_carries_one_age_the_current_age_from_the_first_stored_value(site: Site, path: str) -> None:
    first = site.raw_get(path)
    assert first.status == 200 and "stored" in (first.head.get("cache-status") or "")
    hit = site.raw_get(path)
    assert "hit" in (hit.head.get("cache-status") or "").split("; ")
    ages = hit.head.all("age")
    assert len(ages) == 1 and ages[0].isdigit(), ages  # one line, one value (RFC 9111 5.1)
    assert 30 <= int(ages[0]) <= 35  # the first stored value plus the resident time
    assert site.count(path) == 1


# -- Expires (item 3) ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/expires/spaces", "/expires/lower"])
def test_an_expires_that_is_not_exactly_an_http_date_is_already_expired(site: Site, path: str) -> None:
    site.get(path)
    second = site.get(path)
    assert not is_hit(second) and second.content == f"{path} #2".encode()
    assert site.count(path) == 2
    good = "/expires/good"  # the same date written right: fresh until 2100
    site.get(good)
    assert is_hit(site.get(good)) and site.count(good) == 1


# -- nothing stored that can never be served (item 9) -----------------------------------------
def test_a_response_without_freshness_or_validator_is_never_stored(site: Site) -> None:
    keys = admin_cache(site.admin_port)["keys"]
    for n in range(1, 6):
        r = site.get("/bare/mem")
        assert r.status_code == 200 and len(r.content) == BIG
        assert not is_stored(r) and 'detail="no-freshness"' in members(r), members(r)
        assert site.count("/bare/mem") == n
    assert admin_cache(site.admin_port)["keys"] == keys


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def test_the_disk_store_writes_nothing_for_responses_it_could_never_serve(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with serve(answering(origin_answer)) as origin:
        port, admin = free_port(), free_port()
        cfg = reverse_cache_config(port, admin, origin.url, cache={"store": "disk", "path": str(cache_dir)})
        with run_ferryman(tmp_path, **cfg) as fm, httpx.Client(timeout=10, trust_env=False) as client:
            base = f"http://127.0.0.1:{fm.port}"
            for _ in range(20):
                r = client.get(f"{base}/bare/disk")
                assert r.status_code == 200 and len(r.content) == BIG and not is_stored(r)
            # a cacheable response afterwards: once its entry is on disk, the bare ones
            # would have been too, had they been written
            assert is_stored(client.get(f"{base}/control"))
            wait_for(lambda: is_hit(client.get(f"{base}/control")), 10, "the control entry")
            written = sum(p.stat().st_size for p in _files(cache_dir))
            assert written < BIG, [(p.name, p.stat().st_size) for p in _files(cache_dir)]
            assert count(origin, "/bare/disk") == 20
