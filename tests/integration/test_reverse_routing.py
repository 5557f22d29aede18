"""Reverse routing end to end: host/path/method/header matching, precedence, rewrite,
redirect, fixed responses, 404, and the `ferryman reverse` one-liner."""

from __future__ import annotations

import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import (
    Ferryman,
    free_port,
    launch,
    run_reverse,
    upstream,
)
from tests.helpers.rawhttp import connect, read_response
from tests.helpers.wait import wait_for


def _respond(name: str, match: dict[str, object], **extra: object) -> dict[str, object]:
    return {"name": name, "match": match, "respond": {"body": name, **extra}}


@pytest.fixture(scope="module")
def api() -> Iterator[Backend]:
    with backends("api") as (b,):
        yield b


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, api: Backend) -> Iterator[Ferryman]:
    routes = [
        {"name": "api-host", "match": {"host": "api.test"}, "upstream": "api"},
        _respond("wild", {"host": "*.test"}),
        _respond("deep-wild", {"host": "*.eu.test"}),
        _respond("v1-status", {"host": "api.test", "path_exact": "/v1/status"}),
        _respond("v1-prefix", {"host": "api.test", "path_prefix": "/v1"}),
        _respond("v1-users", {"host": "api.test", "path_prefix": "/v1/users"}),
        _respond("item", {"host": "api.test", "path_regex": "^/items/[0-9]+$"}),
        _respond("submit-post", {"host": "api.test", "path_prefix": "/submit", "methods": ["POST"]}),
        _respond("canary", {"host": "api.test", "path_prefix": "/app", "headers": {"X-Canary": "1"}}),
        _respond("gone", {"host": "api.test", "path_exact": "/gone"}, status=410),
        {"name": "ping", "match": {"host": "api.test", "path_exact": "/ping"},
         "respond": {"status": 200, "body": "pong", "content_type": "application/x-pong"}},
        {"name": "strip", "match": {"host": "rw.test", "path_prefix": "/api"}, "upstream": "api",
         "rewrite": {"strip_prefix": "/api"}},
        {"name": "replace", "match": {"host": "rw.test", "path_prefix": "/old/"}, "upstream": "api",
         "rewrite": {"replace_prefix": "/new/"}},
        {"name": "strip-replace", "match": {"host": "rw.test", "path_prefix": "/svc"}, "upstream": "api",
         "rewrite": {"strip_prefix": "/svc", "replace_prefix": "/internal"}},
        {"name": "moved", "match": {"host": "old.test"},
         "redirect": {"to": "https://new.test{uri}", "status": 301}},
        {"name": "to-https", "match": {"host": "plain.test"},
         "redirect": {"to": "https://{host}{uri}", "status": 308}},
        {"name": "scheme", "match": {"host": "scheme.test"},
         "redirect": {"to": "{scheme}://www.scheme.test{path}", "status": 301}},
    ]
    with run_reverse(
        tmp_path_factory.mktemp("routing"), routes=routes, upstreams={"api": upstream(api.url)}
    ) as fm:
        yield fm


@pytest.fixture
def client(proxy: Ferryman) -> Iterator[httpx.Client]:
    # One connection per request: keep-alive after a synthetic answer is its own test below.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=proxy.proxy, trust_env=False, timeout=10, limits=limits) as c:
        yield c


def who(resp: httpx.Response) -> str:
    """Which route answered: a backend's X-Backend, or a respond route's body."""
    assert resp.status_code < 500, resp.text
    return resp.headers.get("x-backend") or resp.text


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.test", "/", "api"),  # exact host beats *.test
        ("API.Test.", "/", "api"),  # case-insensitive, trailing dot
        ("www.test", "/", "wild"),
        ("www.test", "/v1/status", "wild"),  # api.test's paths do not leak to other hosts
        ("a.eu.test", "/", "deep-wild"),  # longer wildcard suffix first
        ("a.b.eu.test", "/", "deep-wild"),  # wildcard covers several labels
        ("api.test", "/v1/status", "v1-status"),  # path_exact beats path_prefix
        ("api.test", "/v1/users/7", "v1-users"),  # longest prefix wins
        ("api.test", "/v1/other", "v1-prefix"),
        ("api.test", "/v1", "v1-prefix"),
        ("api.test", "/v1x", "api"),  # prefixes are segment-aware
        ("api.test", "/items/42", "item"),  # regex
        ("api.test", "/items/42/x", "api"),  # regex anchored with $
        ("api.test", "/items/abc", "api"),
    ],
)
def test_host_and_path_precedence(client: httpx.Client, host: str, path: str, expected: str) -> None:
    assert who(client.get(path, headers={"Host": host})) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/v1/./users/%37", "v1-users"), ("/v1/x/../status", "v1-status"), ("/%761/status", "v1-status")],
)
def test_paths_match_in_normal_form(proxy: Ferryman, path: str, expected: str) -> None:
    # curl --path-as-is sends dot-segments and escapes untouched (httpx would clean them up).
    out = subprocess.run(
        ["curl", "-sS", "--path-as-is", "--noproxy", "*", "-H", "Host: api.test",
         f"http://127.0.0.1:{proxy.port}{path}"],
        capture_output=True, text=True, timeout=10, check=True,
    )
    assert out.stdout == expected


def test_method_condition_falls_through_to_the_next_route(client: httpx.Client, api: Backend) -> None:
    assert who(client.post("/submit", headers={"Host": "api.test"}, content=b"x")) == "submit-post"
    r = client.get("/submit", headers={"Host": "api.test"})
    assert who(r) == "api"
    assert api.last().method == "GET" and api.last().target == "/submit"


def test_header_condition(client: httpx.Client) -> None:
    assert who(client.get("/app/x", headers={"Host": "api.test", "X-Canary": "1"})) == "canary"
    assert who(client.get("/app/x", headers={"Host": "api.test", "X-Canary": "0"})) == "api"
    assert who(client.get("/app/x", headers={"Host": "api.test"})) == "api"


@pytest.mark.parametrize(
    ("path", "backend_target"),
    [
        ("/api/users?id=3", "/users?id=3"),  # strip_prefix keeps the query verbatim
        ("/api", "/"),
        ("/old/a/b", "/new/a/b"),  # replace_prefix swaps the matched prefix
        ("/svc/v2/x?y=1", "/internal/v2/x?y=1"),  # strip + replace
    ],
)
def test_path_rewrite(client: httpx.Client, api: Backend, path: str, backend_target: str) -> None:
    r = client.get(path, headers={"Host": "rw.test"})
    assert r.status_code == 200 and r.text == "api"
    assert api.last().target == backend_target


def test_untouched_path_reaches_backend_verbatim(client: httpx.Client, api: Backend) -> None:
    r = client.get("/some/path?q=a%20b", headers={"Host": "api.test"})
    assert r.status_code == 200
    assert api.last().target == "/some/path?q=a%20b"
    assert api.last().header("host") == "api.test"


def test_redirect_301_with_uri(client: httpx.Client) -> None:
    r = client.get("/a/b?x=1", headers={"Host": "old.test"})
    assert r.status_code == 301
    assert r.headers["location"] == "https://new.test/a/b?x=1"
    assert "x-backend" not in r.headers


def test_redirect_308_keeps_host_without_port(client: httpx.Client, proxy: Ferryman) -> None:
    r = client.post("/p/q?z=9", headers={"Host": f"plain.test:{proxy.port}"}, content=b"body")
    assert r.status_code == 308
    assert r.headers["location"] == "https://plain.test/p/q?z=9"


def test_redirect_scheme_and_path_placeholders(client: httpx.Client) -> None:
    r = client.get("/x/y?drop=me", headers={"Host": "scheme.test"})
    assert r.status_code == 301
    assert r.headers["location"] == "http://www.scheme.test/x/y"


def test_fixed_respond(client: httpx.Client, api: Backend) -> None:
    before = api.count()
    r = client.get("/ping", headers={"Host": "api.test"})
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "pong", "application/x-pong")
    r = client.get("/gone", headers={"Host": "api.test"})
    assert (r.status_code, r.text) == (410, "gone")
    assert api.count() == before  # answered by ferryman itself


def _exchange(sock: socket.socket, host: str, path: str) -> tuple[int, bytes]:
    """One GET on an open socket; the status and the body (Content-Length framed)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    resp = read_response(sock)
    assert resp.framing == "length" and resp.complete and not resp.ended, resp.raw[:300]
    return resp.status, resp.body


def test_keep_alive_survives_synthetic_answers(proxy: Ferryman) -> None:
    # A raw socket: httpx would quietly reconnect and hide a closed connection.
    with connect(proxy.port) as s:
        for _ in range(3):  # respond, redirect, then a proxied request, all on one connection
            assert _exchange(s, "api.test", "/ping") == (200, b"pong")
            assert _exchange(s, "old.test", "/x")[0] == 301
            assert _exchange(s, "api.test", "/x") == (200, b"api")
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize("host", ["nothing.example", "test", "eu.test.example"])
def test_404_when_nothing_matches(client: httpx.Client, api: Backend, host: str) -> None:
    before = api.count()
    r = client.get("/", headers={"Host": host})
    assert r.status_code == 404
    assert api.count() == before


def test_reverse_one_liner_spreads_over_two_backends(tmp_path: Path) -> None:
    with backends("one", "two") as (b1, b2):
        port = free_port()
        with launch(tmp_path, "reverse", "--listen", f"127.0.0.1:{port}", "--to", b1.url, "--to", b2.url,
                    "--access-log", "off", port=port):
            seen: Counter[str] = Counter()
            with httpx.Client(trust_env=False, timeout=10) as c:
                for i in range(20):
                    r = c.get(f"http://127.0.0.1:{port}/req/{i}")
                    assert r.status_code == 200
                    seen[r.text] += 1
            assert seen == {"one": 10, "two": 10}
            wait_for(lambda: b1.count() == 10 and b2.count() == 10)
