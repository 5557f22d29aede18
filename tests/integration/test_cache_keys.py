"""Which stored response a request or a purge is about, through a real ferryman: the admin
purge by URL finds what the PURGE method finds when a parent proxy is configured, a purge
prefix is normalised like the cache keys, and a request target with a fragment is refused
(it must never reach the origin, nor proxy_request a key of its own).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.helpers.cache_integ import is_hit, is_stored, reverse_cache_config
from tests.helpers.origin import Origin, answering, count, request_path, response, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.rawhttp import proxy_request, raw_client
from tests.helpers.wait import wait_port


async def fresh(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    """``<target> #n``, fresh for a minute (a parent proxy sees absolute-form targets)."""
    target = request_path(head)
    n = sum(1 for h in list(origin.requests) if request_path(h) == target)
    writer.write(response(200, f"{target} #{n}".encode(), {"Cache-Control": "max-age=60"}))
    await writer.drain()


def admin_purge(admin: int, **params: str) -> int:
    r = httpx.post(f"http://127.0.0.1:{admin}/purge", json=params, timeout=5, trust_env=False)
    assert r.status_code == 200, r.text
    purged = r.json()["purged"]
    assert isinstance(purged, int)
    return purged


# -- admin purge = PURGE method, with a parent (issue 8 item 5) ---------------------------------
def test_admin_purge_by_url_finds_the_entry_when_a_parent_is_configured(tmp_path: Path) -> None:
    with serve(answering(fresh)) as parent:  # the parent proxy: answers absolute-form requests
        admin = free_port()
        cfg = {
            "forward": {"parent": parent.url},
            "cache": {"store": "memory"},
            "admin": {"listen": f"127.0.0.1:{admin}"},
        }
        with run_ferryman(tmp_path, **cfg) as fm:
            wait_port(admin, fm.proc)
            url = "http://127.0.0.1:9/doc"  # dialled by the parent only (it never is here)

            def fetch() -> httpx.Response:
                with raw_client(fm.port, timeout=5) as c:
                    r = c.request(proxy_request(url))
                return httpx.Response(r.status, headers=r.head.headers, content=r.body)

            first = fetch()
            assert first.status_code == 200 and is_stored(first)
            assert is_hit(fetch())
            assert admin_purge(admin, url=url) == 1
            after = fetch()
            assert not is_hit(after) and after.content == f"{url} #2".encode()
            # the PURGE method, sent through the proxy, drops the same entry
            with raw_client(fm.port, timeout=5) as c:
                assert c.request(proxy_request(url, method="PURGE")).status == 200
            assert not is_hit(fetch())
            assert sum(1 for h in list(parent.requests) if request_path(h) == url) == 3
            # the purge URL is normalised like the key: host case, default port
            assert is_hit(fetch())
            assert admin_purge(admin, url="HTTP://127.0.0.1:9/doc") == 1


# -- a purge prefix is normalised (item 10) -------------------------------------------------------
def test_admin_prefix_purge_is_normalised_like_the_cache_keys(tmp_path: Path) -> None:
    with serve(answering(fresh)) as origin:
        port, admin = free_port(), free_port()
        with run_ferryman(tmp_path, **reverse_cache_config(port, admin, origin.url)) as fm:
            wait_port(admin, fm.proc)
            base = f"http://127.0.0.1:{fm.port}"
            with httpx.Client(timeout=10, trust_env=False, headers={"Host": "site.test"}) as client:

                def fill(*paths: str) -> None:
                    for p in paths:
                        client.get(base + p)
                        assert is_hit(client.get(base + p)), p

                fill("/pfx/a", "/pfx/b", "/other")
                assert admin_purge(admin, prefix="http://SITE.Test/pfx/") == 2
                assert not is_hit(client.get(base + "/pfx/a")) and is_hit(client.get(base + "/other"))
                fill("/pfx/a", "/pfx/b")
                assert admin_purge(admin, prefix="HTTP://site.test:80/pfx/") == 2
                fill("/pfx/%7Ea")  # stored under /pfx/~a (unreserved %XX decoded in keys)
                assert admin_purge(admin, prefix="http://site.test/pfx/%7e") == 1
                assert admin_purge(admin, prefix="http://site.test/nothing/") == 0
            assert count(origin, "/other") == 1


# -- a fragment in the request target (item 8) ----------------------------------------------------
def test_a_fragment_in_the_target_is_refused_in_reverse_mode(tmp_path: Path) -> None:
    with serve(answering(fresh)) as origin:
        port, admin = free_port(), free_port()
        with run_ferryman(tmp_path, **reverse_cache_config(port, admin, origin.url)) as fm:
            for target in ("/frag#sec1", "/frag?a=1#x", "http://site.test/frag#sec1"):
                with raw_client(fm.port, timeout=5) as c:
                    r = c.request(f"GET {target} HTTP/1.1\r\nHost: site.test\r\n\r\n".encode())
                    assert r.status == 400, target
                    assert c.at_eof()
            with raw_client(fm.port, timeout=5) as c:
                ok = c.request(b"GET /frag HTTP/1.1\r\nHost: site.test\r\n\r\n")
            assert ok.status == 200 and ok.body == b"/frag #1"
            assert [request_path(h) for h in origin.requests] == ["/frag"]


def test_a_fragment_in_the_target_is_refused_in_forward_mode(tmp_path: Path) -> None:
    with serve(answering(fresh)) as origin, run_ferryman(tmp_path, cache={"store": "memory"}) as fm:
        for target in (f"{origin.url}/frag#sec1", f"{origin.url}/#"):
            with raw_client(fm.port, timeout=5) as c:
                r = c.request(proxy_request(target))
                assert r.status == 400, target
                assert c.at_eof()
        with raw_client(fm.port, timeout=5) as c:
            assert c.request(proxy_request(f"{origin.url}/frag")).status == 200
        assert [request_path(h) for h in origin.requests] == ["/frag"]
        assert count(origin, "/frag") == 1
