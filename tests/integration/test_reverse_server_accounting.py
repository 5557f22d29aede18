"""Server in-flight accounting end to end: every way an exchange can end gives its server
slot back exactly once (issue 10, item 1).

A *witness* request is held open on the server (its body trickles, so no timeout fires)
while each other kind of exchange runs to its end on the same server; the admin
``/status`` must then show exactly one request in flight (a double release shows 0, a
leak 2), and zero once the witness is let go.  A timeout used to release its server
twice: ``max_conns`` then admitted one request too many, and passive ejection fired after
half the configured failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.helpers.origin import ScriptedOrigin, scripted_origin
from tests.helpers.procs import Ferryman, free_port, run_reverse
from tests.helpers.rawhttp import connect, read_head, read_response, read_to_eof, reset_close
from tests.helpers.wait import wait_for, wait_log, wait_port

TIMEOUTS = {"upstream_header": "700ms", "upstream_idle": "700ms", "upstream_connect": "2s",
            "shutdown_grace": "1s"}


@dataclass
class Proxy:
    fm: Ferryman
    admin: int
    origin: ScriptedOrigin
    origin2: ScriptedOrigin
    dead: str

    def servers(self, group: str) -> list[dict[str, Any]]:
        doc = httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=5, trust_env=False).json()
        return list(doc["upstreams"][group])

    def active(self, group: str) -> list[int]:
        return [s["active"] for s in self.servers(group)]


def _dead_url() -> str:
    port = free_port()  # nothing listens there: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("accounting")
    admin = free_port()
    dead = _dead_url()
    with scripted_origin() as o1, scripted_origin() as o2:
        ups = {
            "web": {"servers": [{"url": o1.url}]},
            "retry": {"servers": [{"url": dead}, {"url": o1.url}], "retries": {"count": 2, "budget": 1.0}},
            "pair": {"servers": [{"url": o1.url}, {"url": o2.url}], "balance": "hash",
                     "hash_key": {"header": "x-k"},
                     "passive": {"failures": 4, "window": "60s", "ejection": "60s"}},
            "cap": {"servers": [{"url": o1.url, "max_conns": 2}], "queue": {"max": 0}},
        }
        routes = [
            {"match": {"path_prefix": "/r/"}, "upstream": "retry"},
            {"match": {"path_prefix": "/p/"}, "upstream": "pair"},
            {"match": {"path_prefix": "/c/"}, "upstream": "cap"},
            {"upstream": "web"},
        ]
        with run_reverse(tmp, routes=routes, upstreams=ups, timeouts=TIMEOUTS,
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm:
            wait_port(admin)
            yield Proxy(fm, admin, o1, o2, dead)



def _request(path: str, method: str = "GET", body: bytes = b"", extra: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: app.test\r\n{length}{extra}\r\n".encode() + body


class Witness:
    """A request held in flight on the origin: its response head has arrived, its body trickles."""

    def __init__(self, px: Proxy, prefix: str, key: str) -> None:
        self.px, self.key = px, key
        self.sock = connect(px.fm.port)
        try:
            self.sock.sendall(_request(f"{prefix}held-{key}", extra="Connection: close\r\n"))
            head, _ = read_head(self.sock)
            assert head.startswith(b"HTTP/1.1 200"), head
        except BaseException:
            self.sock.close()
            raise

    def finish(self) -> None:
        self.px.origin.release(self.key)
        with self.sock:
            raw, _ = read_to_eof(self.sock)
        assert raw.endswith(b"0\r\n\r\n"), raw[-50:]


def _exchange(px: Proxy, path: str, method: str = "GET", body: bytes = b"") -> tuple[int, bool]:
    """(status, body complete) of one request on a fresh connection."""
    with connect(px.fm.port, timeout=10) as s:
        s.sendall(_request(path, method, body))
        resp = read_response(s, timeout=10, method=method)
    return resp.status, resp.complete


def _success(px: Proxy) -> None:
    assert _exchange(px, "/w/ok")[0] == 200


def _server_error(px: Proxy) -> None:
    assert _exchange(px, "/w/5xx")[0] == 500


def _reset(px: Proxy) -> None:
    assert _exchange(px, "/w/reset", "POST", b"x")[0] == 502


def _header_timeout(px: Proxy) -> None:
    assert _exchange(px, "/w/hang")[0] == 504


def _idle_timeout(px: Proxy) -> None:
    status, complete = _exchange(px, "/w/stall")
    assert status == 200 and not complete  # cut short, never passed off as complete


def _client_abort(px: Proxy) -> None:
    before = px.origin.count("/w/gone/hang")
    s = connect(px.fm.port)
    s.sendall(_request("/w/gone/hang"))
    wait_for(lambda: px.origin.count("/w/gone/hang") > before, what="request reached the origin")
    reset_close(s)  # a FIN alone would be a half-close, which still gets its response
    wait_log(px.fm.access_log, lambda e: e["target"] == "/w/gone/hang" and e["status"] == 499)


def _connect_failure_then_retry(px: Proxy) -> None:
    for _ in range(3):  # round robin: at least one goes to the dead server first
        assert _exchange(px, "/r/ok")[0] == 200


SCENARIOS: dict[str, tuple[str, Callable[[Proxy], None]]] = {
    "success": ("web", _success),
    "5xx": ("web", _server_error),
    "reset": ("web", _reset),
    "upstream_header timeout": ("web", _header_timeout),
    "upstream_idle timeout": ("web", _idle_timeout),
    "client abort": ("web", _client_abort),
    "connect failure and retry": ("retry", _connect_failure_then_retry),
}
_PREFIX = {"web": "/w/", "retry": "/r/"}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_end_of_an_exchange_releases_its_server_once(proxy: Proxy, name: str) -> None:
    group, scenario = SCENARIOS[name]
    held = 1  # the witness, on the origin: index 0 in web, 1 in retry (after the dead server)
    idx = 0 if group == "web" else 1
    witness = Witness(proxy, _PREFIX[group], f"{group}-{name}".replace(" ", "-"))
    try:
        assert proxy.active(group)[idx] == held
        scenario(proxy)
        counts = proxy.active(group)
        assert counts[idx] == held, f"{name}: {counts} in flight, the witness alone should be"
        assert sum(counts) == held, counts
    finally:
        witness.finish()
    wait_for(lambda: proxy.active(group) == [0] * len(proxy.active(group)), what=f"{group} back to zero")


def test_max_conns_still_holds_after_a_504(proxy: Proxy) -> None:
    a = Witness(proxy, "/c/", "cap-a")
    try:
        assert _exchange(proxy, "/c/hang")[0] == 504
        assert proxy.active("cap") == [1]
        b = Witness(proxy, "/c/", "cap-b")
        try:
            assert proxy.active("cap") == [2]
            before = proxy.origin.count("/c/ok")
            status, _ = _exchange(proxy, "/c/ok")
            assert status == 503  # the server is full (no queue here): a third request is not let through
            assert proxy.origin.count("/c/ok") == before
        finally:
            b.finish()
    finally:
        a.finish()
    wait_for(lambda: proxy.active("cap") == [0], what="cap back to zero")


def test_two_timeouts_do_not_eject_a_server_set_to_four_failures(proxy: Proxy) -> None:
    def hang(k: str) -> int:
        with connect(proxy.fm.port, timeout=10) as s:
            s.sendall(_request("/p/hang", extra=f"x-k: {k}\r\n"))
            return read_response(s, timeout=10).status

    t0 = time.monotonic()
    assert [hang("same"), hang("same")] == [504, 504]
    assert time.monotonic() - t0 < 8
    servers = proxy.servers("pair")
    assert [s["ejected"] for s in servers] == [False, False], servers
    assert all(s["healthy"] for s in servers), servers
    assert [s["active"] for s in servers] == [0, 0]


def test_requests_in_flight_across_a_reload_are_counted_once(proxy: Proxy) -> None:
    """The reload's new group takes over the server's count: witnesses started before it
    still count (and still hold ``max_conns``), and each one's end takes one off."""
    a = Witness(proxy, "/c/", "reload-a")
    try:
        w1, w2 = Witness(proxy, "/w/", "reload-w1"), Witness(proxy, "/w/", "reload-w2")
        try:
            assert (proxy.active("web"), proxy.active("cap")) == ([2], [1])
            before = proxy.fm.stderr().count("configuration reloaded")
            proxy.fm.reload()  # the same file: every group is built again
            wait_for(lambda: proxy.fm.stderr().count("configuration reloaded") > before, what="reload")
            assert (proxy.active("web"), proxy.active("cap")) == ([2], [1])
            _success(proxy)
            _server_error(proxy)
            assert proxy.active("web") == [2]
            b = Witness(proxy, "/c/", "reload-b")  # the second of cap's two slots
            try:
                assert proxy.active("cap") == [2]
                before_ok = proxy.origin.count("/c/ok")
                assert _exchange(proxy, "/c/ok")[0] == 503  # full (no queue): max_conns held
                assert proxy.origin.count("/c/ok") == before_ok
            finally:
                b.finish()
            w1.finish()
            wait_for(lambda: proxy.active("web") == [1], what="one witness off")
            assert proxy.active("web") == [1]  # exactly one: a double release would show 0
        finally:
            if w1.sock.fileno() != -1:  # not finished above
                w1.finish()
            w2.finish()
        wait_for(lambda: proxy.active("web") == [0], what="web back to zero")
    finally:
        a.finish()
    wait_for(lambda: proxy.active("cap") == [0], what="cap back to zero")
