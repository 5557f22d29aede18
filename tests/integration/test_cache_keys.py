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
from tests.helpers.origin import Answer, Origin, answering, count, request_path, response, serve
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


# -- reverse mode: the key is the routed path and the client's Host ------------------------------
def _raw(port: int, target: str, host: str, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, Cache-Status, body) of one raw request: the target goes out exactly as spelt."""
    with raw_client(port, timeout=5) as c:
        r = c.request(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), method)
    return r.status, r.head.get("cache-status") or "", r.body


def _hit(status: str) -> bool:
    return "hit" in [p.strip() for p in status.split(";")]


def test_reverse_cache_keys_on_the_routed_path_not_on_its_spelling(tmp_path: Path) -> None:
    """``//a``, ``/%61``, ``/./a`` are routed and forwarded as ``/a``: one entry, one fetch, and
    PURGE (whatever its spelling) and the admin purge of ``http://site.test/a`` find it."""
    with serve(answering(fresh)) as origin:
        port, admin = free_port(), free_port()
        with run_ferryman(tmp_path, **reverse_cache_config(port, admin, origin.url)) as fm:
            wait_port(admin, fm.proc)
            status, cs, body = _raw(fm.port, "/a", "site.test")
            assert status == 200 and "stored" in cs and body == b"/a #1"
            for spelling in ("//a", "/%61", "/./a", "/x/../a", "///a"):
                status, cs, body = _raw(fm.port, spelling, "site.test")
                assert (status, body) == (200, b"/a #1") and _hit(cs), spelling
            # the query is part of the key, unchanged
            assert _raw(fm.port, "/a?q=1", "site.test")[2] == b"/a?q=1 #1"
            status, cs, body = _raw(fm.port, "//a?q=1", "site.test")
            assert _hit(cs) and body == b"/a?q=1 #1"
            assert [request_path(h) for h in origin.requests] == ["/a", "/a?q=1"]
            # PURGE spelt another way drops the same entry
            assert _raw(fm.port, "/%61", "site.test", "PURGE")[0] == 200
            assert _raw(fm.port, "//a", "site.test")[2] == b"/a #2"
            assert _hit(_raw(fm.port, "/a", "site.test")[1])
            assert admin_purge(admin, url="http://site.test/a") == 1
            assert _raw(fm.port, "/./a", "site.test")[2] == b"/a #3"


def test_reverse_cache_keys_on_the_routed_path_before_a_rewrite(tmp_path: Path) -> None:
    """Two routes that strip their prefixes forward the same path to different upstreams:
    they keep distinct entries, each named by the URL the client asked for."""

    def tagged(tag: str) -> Answer:
        async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
            target = request_path(head)
            writer.write(response(200, f"{tag}{target}".encode(), {"Cache-Control": "max-age=60"}))
            await writer.drain()

        return answer

    with serve(answering(tagged("one:"))) as one, serve(answering(tagged("two:"))) as two:
        port, admin = free_port(), free_port()
        routes = [
            {"name": "one", "match": {"path_prefix": "/one"}, "upstream": "o",
             "rewrite": {"strip_prefix": "/one"}, "cache": {"enabled": True}},
            {"name": "two", "match": {"path_prefix": "/two"}, "upstream": "p",
             "rewrite": {"strip_prefix": "/two"}, "cache": {"enabled": True}},
        ]
        cfg = reverse_cache_config(port, admin, one.url, routes=routes)
        cfg["upstreams"]["p"] = {"servers": [{"url": two.url}]}
        with run_ferryman(tmp_path, **cfg) as fm:
            wait_port(admin, fm.proc)
            assert _raw(fm.port, "/one/x", "site.test")[2] == b"one:/x"
            status, cs, body = _raw(fm.port, "/two/x", "site.test")
            assert body == b"two:/x" and not _hit(cs)
            status, cs, body = _raw(fm.port, "/one//x", "site.test")
            assert body == b"one:/x" and _hit(cs)
            assert _hit(_raw(fm.port, "/two/./x", "site.test")[1])
            assert admin_purge(admin, url="http://site.test/x") == 0
            assert admin_purge(admin, url="http://site.test/one/x") == 1
            assert not _hit(_raw(fm.port, "/one/x", "site.test")[1])
            assert _hit(_raw(fm.port, "/two/x", "site.test")[1])
            assert [request_path(h) for h in one.requests] == ["/x", "/x"]
            assert [request_path(h) for h in two.requests] == ["/x"]


def test_reverse_cache_keys_on_the_clients_host_when_the_route_sets_a_literal_host(
    tmp_path: Path,
) -> None:
    """``host_header: backend.internal`` on a route two vhosts share: each vhost has its own
    entries (the origin sees X-Forwarded-Host, and purges name the public URL)."""
    with serve(answering(fresh)) as origin:
        port, admin = free_port(), free_port()
        routes = [{"name": "all", "upstream": "o", "host_header": "backend.internal",
                   "cache": {"enabled": True}}]
        with run_ferryman(tmp_path, **reverse_cache_config(port, admin, origin.url, routes=routes)) as fm:
            wait_port(admin, fm.proc)
            assert _raw(fm.port, "/doc", "a.test")[2] == b"/doc #1"
            status, cs, body = _raw(fm.port, "/doc", "b.test")
            assert body == b"/doc #2" and not _hit(cs)
            for host, want in (("a.test", b"/doc #1"), ("A.Test:80", b"/doc #1"), ("b.test", b"/doc #2")):
                status, cs, body = _raw(fm.port, "/doc", host)
                assert body == want and _hit(cs), host
            assert all(b"\r\nHost: backend.internal\r\n" in h for h in origin.requests)
            # purges name the client's URL, never the literal sent upstream
            assert admin_purge(admin, url="http://backend.internal/doc") == 0
            assert admin_purge(admin, url="http://a.test/doc") == 1
            assert _raw(fm.port, "/doc", "a.test")[2] == b"/doc #3"
            assert _raw(fm.port, "/doc", "b.test", "PURGE")[0] == 200
            assert _raw(fm.port, "/doc", "b.test")[2] == b"/doc #4"
            assert _hit(_raw(fm.port, "/doc", "a.test")[1])
