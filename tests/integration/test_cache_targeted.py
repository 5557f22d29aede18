"""RFC 9213 targeted cache control through a real ferryman and a recording origin: in reverse
mode ``Ferryman-Cache-Control`` then ``CDN-Cache-Control`` replace Cache-Control and Expires;
ferryman's own field never reaches clients, CDN-Cache-Control does unless configured; a
forward proxy honours them only when configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import is_hit, is_stored, members, reverse_cache_config
from tests.helpers.origin import Origin, answering, count, path_of, response, serve
from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.wait import wait_port

FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"
FIELDS: dict[str, dict[str, str]] = {
    # RFC 9213 3.1: fresh for the CDN, stored by nobody else
    "cdn-only": {"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600"},
    "cdn-no-store": {"Cache-Control": "max-age=600", "CDN-Cache-Control": "no-store"},
    "cdn-private": {"Cache-Control": "public, max-age=600", "CDN-Cache-Control": "private"},
    "cdn-invalid": {"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600,"},  # parse error
    "cdn-expires": {"Expires": FUTURE, "CDN-Cache-Control": "must-revalidate"},  # Expires ignored
    "own-wins": {
        "Cache-Control": "max-age=600", "CDN-Cache-Control": "max-age=600",
        "Ferryman-Cache-Control": "private",
    },
    "own-fresh": {"Cache-Control": "no-store", "Ferryman-Cache-Control": "max-age=600"},
    "edge": {
        "Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600", "X-Edge-Control": "max-age=600",
        "Ferryman-Cache-Control": "max-age=600",
    },
}


async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    path = path_of(head)
    fields = FIELDS[path.rsplit("/", 1)[-1]]
    writer.write(response(200, f"{path} #{count(origin, path)}".encode(), fields))
    await writer.drain()


@dataclass
class Site:
    origin: Origin
    fm: Ferryman
    client: httpx.Client

    def get(self, path: str) -> httpx.Response:
        return self.client.get(f"http://127.0.0.1:{self.fm.port}{path}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve(answering(answer)) as origin:
        port, admin = free_port(), free_port()
        cfg = reverse_cache_config(port, admin, origin.url)
        with run_ferryman(tmp_path_factory.mktemp("targeted"), **cfg) as fm:
            wait_port(admin, fm.proc)
            with httpx.Client(timeout=10, trust_env=False) as client:
                yield Site(origin, fm, client)


def test_cdn_cache_control_replaces_cache_control_in_reverse_mode(site: Site) -> None:
    first = site.get("/r/cdn-only")
    assert is_stored(first), members(first)
    second = site.get("/r/cdn-only")
    assert is_hit(second) and second.content == b"/r/cdn-only #1"
    # passed on downstream (RFC 9213 3: the next CDN may use it), with the origin's Cache-Control
    for r in (first, second):
        assert r.headers["cdn-cache-control"] == "max-age=600" and r.headers["cache-control"] == "no-store"
    assert count(site.origin, "/r/cdn-only") == 1


@pytest.mark.parametrize(
    ("leaf", "reason"),
    [("cdn-no-store", "no-store"), ("cdn-private", "private"), ("cdn-invalid", "no-store"),
     ("cdn-expires", "no-freshness"), ("own-wins", "private")],
)  # fmt: skip
def test_targeted_directives_and_precedence(site: Site, leaf: str, reason: str) -> None:
    path = f"/r/{leaf}"
    first = site.get(path)
    assert not is_stored(first) and f'detail="{reason}"' in members(first), members(first)
    second = site.get(path)
    assert not is_hit(second) and second.content == f"{path} #2".encode()


def test_own_targeted_field_is_honoured_first_and_never_passed_on(site: Site) -> None:
    first = site.get("/r/own-fresh")
    second = site.get("/r/own-fresh")
    assert is_stored(first) and is_hit(second) and second.content == b"/r/own-fresh #1"
    for r in (first, second):
        assert "ferryman-cache-control" not in r.headers
        assert r.headers["cache-control"] == "no-store"
    denied = site.get("/r/own-wins")
    assert "ferryman-cache-control" not in denied.headers
    assert denied.headers["cdn-cache-control"] == "max-age=600"


def test_a_forward_proxy_honours_targeted_fields_only_when_configured(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve(answering(answer)) as origin:
        with run_ferryman(tmp_path / "a", cache={"store": "memory"}) as plain, httpx.Client(
            proxy=plain.proxy, trust_env=False, timeout=10
        ) as client:
            rs = [client.get(f"{origin.url}/f/edge") for _ in range(2)]
            assert not any(is_stored(r) or is_hit(r) for r in rs)
            # not on its target list: passed through untouched (RFC 9213 2.2)
            assert rs[1].headers["ferryman-cache-control"] == "max-age=600"
            assert rs[1].headers["cdn-cache-control"] == "max-age=600"
        cache = {
            "store": "memory",
            "targeted": {"forward": True, "own_field": "X-Edge-Control", "pass_cdn_cache_control": False},
        }
        with run_ferryman(tmp_path / "b", cache=cache) as fm, httpx.Client(
            proxy=fm.proxy, trust_env=False, timeout=10
        ) as client:
            first, second = (client.get(f"{origin.url}/g/edge") for _ in range(2))
            assert is_stored(first) and is_hit(second) and second.content == b"/g/edge #1"
            for r in (first, second):
                assert "x-edge-control" not in r.headers and "cdn-cache-control" not in r.headers
                assert r.headers["ferryman-cache-control"] == "max-age=600"  # not ours any more
        assert count(origin, "/f/edge") == 2 and count(origin, "/g/edge") == 1
