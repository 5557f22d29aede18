"""Requests over ``max_conns`` wait in the upstream's queue (HAProxy ``timeout queue``,
``maxqueue``) instead of an immediate, misleading ``503 no healthy server`` (issue 10,
item 7): served in arrival order as slots free, and answered 503 "full" with Retry-After
only when the queue timeout passes or the queue is full.  A slow backend, max_conns: 1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers.origin import ScriptedOrigin, scripted_origin
from tests.helpers.procs import Ferryman, free_port, run_reverse
from tests.helpers.rawhttp import Response, connect, read_response, reset_close
from tests.helpers.wait import wait_for, wait_port


@dataclass
class Setup:
    fm: Ferryman
    admin: int
    origin: ScriptedOrigin

    def queued(self, group: str) -> int:
        doc = httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5, trust_env=False).json()
        return int(doc["queued"][group])

    def active(self, group: str) -> int:
        doc = httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5, trust_env=False).json()
        return int(doc["upstreams"][group][0]["active"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("queue")
    admin = free_port()
    with scripted_origin() as origin:
        one = [{"url": origin.url, "max_conns": 1}]
        ups = {
            "q": {"servers": one, "queue": {"max": 3, "timeout": "5s"}},
            "t": {"servers": one, "queue": {"timeout": "500ms"}},
            "off": {"servers": one, "queue": {"max": 0}},
        }
        routes = [{"match": {"path_prefix": f"/{g}/"}, "upstream": g} for g in ups]
        with run_reverse(tmp, routes=routes, upstreams=ups, admin={"listen": f"127.0.0.1:{admin}"},
                         timeouts={"upstream_header": "10s", "shutdown_grace": "1s"}) as fm:
            wait_port(admin)
            yield Setup(fm, admin, origin)



def _send(s: Setup, path: str) -> socket.socket:
    sock = connect(s.fm.port, timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".encode())
    return sock


def _answer(sock: socket.socket) -> Response:
    with sock:
        return read_response(sock, timeout=10)


def _occupy(s: Setup, group: str, key: str) -> socket.socket:
    """A slow request holding the group's only slot."""
    sock = _send(s, f"/{group}/hold-{key}")
    wait_for(lambda: s.origin.count(f"/{group}/hold-{key}") == 1, what="slow request at the origin")
    return sock


def test_over_max_conns_a_request_waits_for_the_slot(setup: Setup) -> None:
    slow = _occupy(setup, "q", "a")
    waiting = _send(setup, "/q/after/ok")
    wait_for(lambda: setup.queued("q") == 1, what="second request queued")
    assert setup.origin.count("/q/after/ok") == 0  # not let through while the slot is taken
    setup.origin.release("a")
    assert _answer(slow).status == 200
    resp = _answer(waiting)
    assert resp.status == 200 and resp.body == b"ok"  # served, not 503 no healthy server
    assert setup.queued("q") == 0
    wait_for(lambda: setup.active("q") == 0, what="slot given back")


def test_waiters_are_served_in_arrival_order(setup: Setup) -> None:
    slow = _occupy(setup, "q", "b")
    socks = []
    for i in range(3):
        socks.append(_send(setup, f"/q/order-{i}/ok"))
        wait_for(lambda n=i + 1: setup.queued("q") == n, what=f"{i + 1} queued")  # type: ignore[misc]
    start = len(setup.origin.heads)
    setup.origin.release("b")
    assert _answer(slow).status == 200
    assert [_answer(x).status for x in socks] == [200, 200, 200]
    order = [h.split(b" ", 2)[1] for h in setup.origin.heads[start:]]
    assert order == [b"/q/order-0/ok", b"/q/order-1/ok", b"/q/order-2/ok"]


def test_a_waiter_meeting_a_dead_pooled_connection_keeps_its_turn(setup: Setup) -> None:
    # The slot's connection is parked in the pool, but the origin drops it on the next
    # request: the first waiter's re-send must keep the slot, not go to the back of the queue.
    slow = _send(setup, "/q/hold1-g")
    wait_for(lambda: setup.origin.count("/q/hold1-g") == 1, what="slow request at the origin")
    socks = []
    for i in range(3):
        socks.append(_send(setup, f"/q/stale-{i}/ok"))
        wait_for(lambda n=i + 1: setup.queued("q") == n, what=f"{i + 1} queued")  # type: ignore[misc]
    start = len(setup.origin.seen)
    setup.origin.release("g")
    assert _answer(slow).status == 200
    assert [_answer(x).status for x in socks] == [200, 200, 200]
    served = setup.origin.targets()[start:]
    assert served == ["/q/stale-0/ok", "/q/stale-1/ok", "/q/stale-2/ok"]
    assert sum(1 for h in setup.origin.heads if b" /q/stale-0/ok " in h) == 2  # dropped, re-sent


def test_queue_timeout_answers_503_full_with_retry_after(setup: Setup) -> None:
    slow = _occupy(setup, "t", "c")
    try:
        t0 = time.monotonic()
        resp = _answer(_send(setup, "/t/late/ok"))
        waited = time.monotonic() - t0
    finally:
        setup.origin.release("c")
        assert _answer(slow).status == 200
    assert resp.status == 503
    assert 0.4 <= waited < 3.0, waited  # it waited for the queue timeout, not an instant refusal
    assert b"full" in resp.body and b"max_conns" in resp.body and b"no healthy" not in resp.body, resp.body
    assert resp.header("retry-after") is not None
    assert setup.origin.count("/t/late/ok") == 0


def test_full_queue_answers_503_at_once(setup: Setup) -> None:
    slow = _occupy(setup, "q", "d")
    socks = [_send(setup, f"/q/fill-{i}/ok") for i in range(3)]
    try:
        wait_for(lambda: setup.queued("q") == 3, what="queue full (max 3)")
        t0 = time.monotonic()
        resp = _answer(_send(setup, "/q/one-too-many/ok"))
        assert resp.status == 503 and time.monotonic() - t0 < 2.0
        assert b"queue is full" in resp.body and resp.header("retry-after") is not None, resp.body
    finally:
        setup.origin.release("d")
    assert _answer(slow).status == 200
    assert [_answer(x).status for x in socks] == [200, 200, 200]


def test_queue_off_answers_503_full_at_once(setup: Setup) -> None:
    slow = _occupy(setup, "off", "e")
    try:
        resp = _answer(_send(setup, "/off/x/ok"))
    finally:
        setup.origin.release("e")
    assert _answer(slow).status == 200
    assert resp.status == 503 and b"full, not unhealthy" in resp.body, resp.body


def test_a_client_leaving_the_queue_frees_its_place(setup: Setup) -> None:
    slow = _occupy(setup, "q", "f")
    gone = _send(setup, "/q/gone/ok")
    wait_for(lambda: setup.queued("q") == 1, what="queued")
    reset_close(gone)
    wait_for(lambda: setup.queued("q") == 0, what="left the queue")
    setup.origin.release("f")
    assert _answer(slow).status == 200
    wait_for(lambda: setup.active("q") == 0, what="slot given back")
    assert setup.origin.count("/q/gone/ok") == 0
