"""Requests that would loop back into ferryman: 508 at once, never a hang or a recursion."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.rawhttp import assert_error_and_closed, connect, exchange, get, read_response
from tests.helpers.wait import json_lines, wait_log

pytestmark = pytest.mark.timeout(30)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FAST = 2.0  # a loop must be refused well inside this


@contextmanager
def few_fds(limit: int) -> Iterator[None]:
    """Children started inside get a small RLIMIT_NOFILE, so a runaway loop runs out fast."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    """A forward proxy whose own port is an allowed CONNECT port."""
    tmp: Path = tmp_path_factory.mktemp("loop")
    port = free_port()
    with run_ferryman(tmp, port, forward={"connect_ports": [443, port]}) as fm:
        yield fm


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK, close=False)) as o:
        yield o


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "[::1]", "0.0.0.0"])
def test_absolute_url_to_own_port_gets_508(proxy: Ferryman, host: str) -> None:
    url = f"http://{host}:{proxy.port}/loop"
    t0 = time.monotonic()
    resp = exchange(proxy.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url.encode(), timeout=FAST + 1)
    assert time.monotonic() - t0 < FAST
    assert_error_and_closed(resp, 508)
    wait_log(proxy.access_log, lambda x: x["target"] == url)
    statuses = [x["status"] for x in json_lines(proxy.access_log()) if x["target"] == url]
    assert statuses == [508], "the request recursed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_connect_to_own_port_gets_508(proxy: Ferryman, host: str) -> None:
    authority = f"{host}:{proxy.port}"
    t0 = time.monotonic()
    resp = exchange(
        proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority.encode(), authority.encode()),
        timeout=FAST + 1,
    )
    assert time.monotonic() - t0 < FAST
    assert_error_and_closed(resp, 508)
    wait_log(proxy.access_log, lambda x: x["target"] == authority)
    assert [x["status"] for x in json_lines(proxy.access_log()) if x["target"] == authority] == [508]


def test_request_carrying_our_own_via_gets_508(proxy: Ferryman, origin: Origin) -> None:
    """Another proxy sent our request back to us (A -> B -> A): our own Via gives it away."""
    via = get(proxy.port, f"{origin.url}/via").header("via")
    assert via and "ferryman" in via
    before = len(origin.requests)
    req = b"GET %s/looped HTTP/1.1\r\nHost: x\r\nVia: 1.1 other-proxy, %s\r\n\r\n" % (
        origin.url.encode(), via.encode(),
    )
    resp = exchange(proxy.port, req, timeout=FAST + 1)
    assert_error_and_closed(resp, 508)
    assert origin.requests[before:] == []


# -- a parent proxy that is ferryman itself -------------------------------------------
@pytest.fixture(scope="module")
def self_parent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    tmp: Path = tmp_path_factory.mktemp("self-parent")
    port = free_port()
    with few_fds(256), run_ferryman(
        tmp, port,
        forward={"parent": f"http://127.0.0.1:{port}"},
        timeouts={"shutdown_grace": "1s", "upstream_header": "3s"},
    ) as fm:
        yield fm


def test_self_as_parent_request_stops_at_second_hop(self_parent: Ferryman, origin: Origin) -> None:
    """Chained to itself, the request comes back once, is recognised by its Via and refused."""
    url = f"{origin.url}/via-parent"
    t0 = time.monotonic()
    with connect(self_parent.port, FAST + 1) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % url.encode())
        resp = read_response(sock, FAST + 1)
    assert time.monotonic() - t0 < FAST
    assert resp.status == 508 and resp.body.startswith(b"ferryman: 508"), resp.raw
    wait_log(self_parent.access_log, lambda x: x["target"] == url and x["status"] == 508)
    lines = [x for x in json_lines(self_parent.access_log()) if x["target"] == url]
    assert len(lines) <= 2, "the request recursed"
    assert not any(b"/via-parent" in r for r in origin.requests)


def test_self_as_parent_connect_gets_508(self_parent: Ferryman) -> None:
    t0 = time.monotonic()
    req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    resp = exchange(self_parent.port, req, timeout=FAST + 1)
    assert time.monotonic() - t0 < FAST
    assert resp.status == 508, resp.raw[:300]
    assert len([x for x in json_lines(self_parent.access_log()) if x["target"] == "example.com:443"]) <= 2
