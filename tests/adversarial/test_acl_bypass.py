"""Destination rules cannot be bypassed by spelling the host differently.

`networks` rules are decided on the address: every numeric IPv4 spelling is the same
address, and a name is checked on the address it resolves to (the one dialled).
Trailing dots: one names the same host, more are a 400. Each test checks what reached
a recording origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, run_ferryman, run_reverse, upstream
from tests.helpers.rawhttp import assert_error_and_closed, connect, exchange, read_head, read_response

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# 127.0.0.2, as a browser, curl or getaddrinfo would all read it
SPELLINGS_OF_127_0_0_2 = [
    "127.0.0.2", "2130706434", "0x7f000002", "0X7F000002", "127.2", "127.0.2", "0177.0.0.2",
    "0x7f.0.0.2", "0177.0.0.02", "127.0.0.2.", "[::ffff:127.0.0.2]", "[::ffff:7f00:2]",
]


@pytest.fixture(scope="module")
def denied() -> Iterator[Origin]:
    with serve(canned(OK), host="127.0.0.2") as o:
        yield o


@pytest.fixture(scope="module")
def allowed() -> Iterator[Origin]:
    with serve(canned(OK), host="127.0.0.3") as o:
        yield o


@pytest.fixture(scope="module")
def local() -> Iterator[Origin]:
    with serve(canned(OK)) as o:  # 127.0.0.1, which `localhost` resolves to
        yield o


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, denied: Origin, allowed: Origin, local: Origin
) -> Iterator[Ferryman]:
    rules = [
        {"name": "no-lo2", "deny": {"networks": ["127.0.0.2/32"]}},
        {"name": "no-blocked", "deny": {"domains": ["blocked.test"]}},
        {"name": "no-lo1", "deny": {"networks": ["127.0.0.1/32"], "ports": [local.port]}},
    ]
    ports = [443, denied.port, allowed.port, local.port]
    with run_ferryman(
        tmp_path_factory.mktemp("acl-bypass"), forward={"rules": rules, "connect_ports": ports}
    ) as fm:
        yield fm


def _get(fm: Ferryman, host: str, port: int) -> bytes:
    url = f"http://{host}:{port}/x"
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (url.encode(), host.encode(), port)


def _connect(host: str, port: int) -> bytes:
    return b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port, host.encode(), port)


def _request(method: str, fm: Ferryman, host: str, port: int) -> bytes:
    return _get(fm, host, port) if method == "GET" else _connect(host, port)


def _refused(fm: Ferryman, req: bytes, status: int, origin: Origin) -> bytes:
    """The error body; the proxy closed the connection and the origin saw none."""
    before = origin.connections
    resp = exchange(fm.port, req)
    assert_error_and_closed(resp, status)
    assert origin.connections == before, "the request reached the origin"
    return resp.body


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
@pytest.mark.parametrize("host", SPELLINGS_OF_127_0_0_2)
def test_every_spelling_of_a_denied_address_is_denied(
    proxy: Ferryman, denied: Origin, host: str, method: str
) -> None:
    body = _refused(proxy, _request(method, proxy, host, denied.port), 403, denied)
    assert b"(rule: no-lo2)" in body


def test_numeric_spellings_of_an_allowed_address_reach_it_canonically(
    proxy: Ferryman, allowed: Origin
) -> None:
    for host in ("2130706435", "0x7f000003", "127.3", "0177.0.0.3"):
        with connect(proxy.port) as s:
            s.sendall(_get(proxy, host, allowed.port))
            resp = read_response(s)
        assert (resp.status, resp.body) == (200, b"ok"), host
        # the next hop sees the one canonical spelling
        assert b"\r\nHost: 127.0.0.3:%d\r\n" % allowed.port in allowed.requests[-1], allowed.requests[-1]


def test_connect_by_a_numeric_spelling_of_an_allowed_address(proxy: Ferryman, allowed: Origin) -> None:
    with connect(proxy.port) as s:
        s.sendall(_connect("0x7f000003", allowed.port))
        head, rest = read_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert rest == b""
        s.sendall(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = read_response(s)
        assert (resp.status, resp.body) == (200, b"ok")


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_a_name_resolving_into_a_denied_network_is_denied(
    proxy: Ferryman, local: Origin, method: str
) -> None:
    # `localhost` is 127.0.0.1 here: the rule sees the address DNS gave, the one dialled
    body = _refused(proxy, _request(method, proxy, "localhost", local.port), 403, local)
    assert b"access to localhost denied (rule: no-lo1)" in body


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
@pytest.mark.parametrize("host", ["blocked.test..", "blocked.test...", "BLOCKED.test..", "localhost.."])
def test_more_than_one_trailing_dot_is_a_400(
    proxy: Ferryman, local: Origin, host: str, method: str
) -> None:
    _refused(proxy, _request(method, proxy, host, local.port), 400, local)


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_one_trailing_dot_is_the_same_name(proxy: Ferryman, method: str) -> None:
    req = _get(proxy, "Blocked.Test.", 80) if method == "GET" else _connect("blocked.test.", 443)
    resp = exchange(proxy.port, req)
    assert_error_and_closed(resp, 403)
    assert b"(rule: no-blocked)" in resp.body


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.0.0.1", "0x1g.1", "name.123"])
def test_a_number_that_is_no_address_is_a_400(proxy: Ferryman, host: str) -> None:
    assert_error_and_closed(exchange(proxy.port, _get(proxy, host, 80)), 400)
    assert_error_and_closed(exchange(proxy.port, _connect(host, 443)), 400)


def test_host_header_with_trailing_dots_cannot_dodge_a_host_route(tmp_path: Path, local: Origin) -> None:
    routes = [
        {"name": "admin", "match": {"host": "admin.test"}, "respond": {"status": 403, "body": "no"}},
        {"name": "rest", "match": {}, "upstream": "o"},
    ]
    with run_reverse(tmp_path, routes=routes, upstreams={"o": upstream(local.url)}) as fm:
        before = len(local.requests)
        for host in (b"admin.test", b"admin.test.", b"ADMIN.test.:80"):
            resp = exchange(fm.port, b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
            assert (resp.status, resp.body) == (403, b"no"), host
        for host in (b"admin.test..", b"admin.test...:80"):
            resp = exchange(fm.port, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
            assert_error_and_closed(resp, 400)
        assert len(local.requests) == before, local.requests[before:]


def test_a_pooled_connection_is_checked_for_the_request_that_reuses_it(tmp_path: Path) -> None:
    rules = [{"name": "no-post-lo", "deny": {"networks": ["127.0.0.1/32"], "methods": ["POST"]}}]
    with (
        serve(canned(OK, close=False)) as origin,
        run_ferryman(tmp_path, forward={"rules": rules}) as fm,
    ):
        url = b"http://localhost:%d/x" % origin.port
        with connect(fm.port) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % url)
            assert read_response(s).status == 200  # the upstream connection is pooled now
        resp = exchange(fm.port, b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx" % url)
        assert_error_and_closed(resp, 403)
        assert b"(rule: no-post-lo)" in resp.body
        assert [r.split(b" ", 1)[0] for r in origin.requests] == [b"GET"]
