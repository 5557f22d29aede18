"""A reload keeps each staying server's run-time state (upstream/group.py ``adopt``).

* A server ejected by passive health when the reload happens comes back when its
  ejection ends, as it would have without the reload.  It used to keep only the
  verdict (down) and forget the ejection's expiry: with no active check, nothing
  ever brought it back.
* A server's in-flight count carries over: requests started before the reload still
  count toward ``max_conns`` and ``/status``, and release into the new count once.
  The new groups used to start at 0 while those requests released into the old ones,
  so right after a reload ``max_conns`` let a second request through to the origin.
* So does the count of a server dropped by one reload and brought back by the next
  (or whose whole upstream was): it used to start at 0 while the requests from
  before still held the server.
* The upstream's retry budget carries over: a reload during an outage used to hand
  out a fresh burst of retries.
* Round robin goes on where it was: it used to start again at the first server, so
  a reload before each request sent them all there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.origin import backends
from tests.helpers.procs import Ferryman, free_port, reverse_config, run_reverse
from tests.helpers.wait import wait_for

EJECTION = 3.0  # seconds: long enough to outlast the reload, short enough for the test


def _status(admin: int) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=5, trust_env=False).json()
    return doc


def _reload(fm: Ferryman, admin: int, routes: list[dict[str, Any]], ups: dict[str, Any]) -> None:
    """Write a changed config, SIGHUP, and wait until the new one serves."""
    before = fm.stderr().count("configuration reloaded")
    fm.write_config(reverse_config(fm.port, fm.log_path, routes=routes, upstreams=ups,
                                   admin={"listen": f"127.0.0.1:{admin}"}))
    fm.reload()
    wait_for(lambda: fm.stderr().count("configuration reloaded") > before, what="reload done")


def test_a_server_ejected_before_a_reload_comes_back_after_its_ejection(tmp_path: Path) -> None:
    with backends("a", "b") as (a, b):
        admin = free_port()
        passive = {"failures": 2, "window": "10s", "ejection": f"{EJECTION}s"}
        ups = {"web": {"servers": [{"url": a.url}, {"url": b.url}], "passive": passive}}  # no health check
        routes = [{"upstream": "web"}]
        with run_reverse(tmp_path, routes=routes, upstreams=ups,
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm, \
                httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10) as c:
            assert {c.get(f"/warm/{i}").text for i in range(2)} == {"a", "b"}

            def ejected() -> bool:
                assert c.get("/fail").text == "b"  # a resets it, the retry lands on b
                return bool(_status(admin)["upstreams"]["web"][0]["ejected"])

            a.mode = "reset"
            wait_for(ejected, what="a ejected by passive health")
            ejected_at = time.monotonic()

            # Reload with a changed config while the ejection is in force.
            _reload(fm, admin, [{"match": {"path_prefix": "/new/"}, "upstream": "web"}, *routes], ups)
            a_state = _status(admin)["upstreams"]["web"][0]
            assert time.monotonic() - ejected_at < EJECTION, "the reload outlasted the ejection"
            assert (a_state["healthy"], a_state["ejected"]) == (False, True), a_state
            a.mode = "ok"
            before = a.count()
            assert {c.get(f"/during/{i}").text for i in range(4)} == {"b"}
            assert a.count() == before

            wait_for(lambda: c.get("/back").text == "a", timeout=EJECTION + 3, what="a back after ejection")
            assert time.monotonic() - ejected_at >= EJECTION - 1.0  # not much earlier than it would have
            a_state = _status(admin)["upstreams"]["web"][0]
            assert (a_state["healthy"], a_state["ejected"]) == (True, False), a_state
            assert {c.get(f"/after/{i}").text for i in range(4)} == {"a", "b"}


def _get(fm: Ferryman, path: str, out: list[httpx.Response]) -> None:
    out.append(httpx.get(f"{fm.proxy}{path}", trust_env=False, timeout=15))


def test_max_conns_and_the_in_flight_count_hold_across_a_reload(tmp_path: Path) -> None:
    with backends("a") as (a,):
        admin = free_port()
        ups: dict[str, Any] = {"web": {"servers": [{"url": a.url, "max_conns": 1}],
                                       "queue": {"max": 10, "timeout": "10s"}}}
        routes = [{"upstream": "web"}]
        got: list[httpx.Response] = []
        threads: list[threading.Thread] = []
        with run_reverse(tmp_path, routes=routes, upstreams=ups,
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm:
            try:
                def web() -> tuple[list[int], int]:
                    doc = _status(admin)
                    return [s["active"] for s in doc["upstreams"]["web"]], doc["queued"]["web"]

                threads.append(threading.Thread(target=_get, args=(fm, "/slow", got)))
                threads[-1].start()
                wait_for(lambda: a.count() == 1, what="the slow request at the origin")
                assert web() == ([1], 0)
                threads.append(threading.Thread(target=_get, args=(fm, "/queued-before", got)))
                threads[-1].start()
                wait_for(lambda: web()[1] == 1, what="a request queued before the reload")

                _reload(fm, admin, [{"match": {"path_prefix": "/new/"}, "upstream": "web"}, *routes], ups)
                assert web() == ([1], 1)  # the requests from before the reload still count

                threads.append(threading.Thread(target=_get, args=(fm, "/second", got)))
                threads[-1].start()
                wait_for(lambda: web()[1] == 2, what="the second request queued")
                assert a.count() == 1  # it waits; it did not reach the origin alongside the first
                assert web() == ([1], 2)
            finally:
                a.release()
                for t in threads:
                    t.join(15)
            assert [(r.status_code, r.text) for r in got] == [(200, "a")] * 3
            # One at a time, in arrival order: the waiter from before the reload kept its place.
            assert [r.target for r in a.requests] == ["/slow", "/queued-before", "/second"]
            wait_for(lambda: web() == ([0], 0), what="nothing in flight")


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused


def test_a_reload_during_an_outage_does_not_refill_the_retry_budget(tmp_path: Path) -> None:
    with backends("b") as (b,):
        admin = free_port()
        ups = {"web": {"servers": [{"url": _dead_url()}, {"url": b.url}],
                       "retries": {"count": 1, "budget": 0.0},  # the first burst only, no refill
                       "passive": {"failures": 1000}}}  # the dead server stays in the rotation
        routes = [{"upstream": "web"}]
        with run_reverse(tmp_path, routes=routes, upstreams=ups,
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm, \
                httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10) as c:
            codes = []
            while 502 not in codes:  # the dead server's turns are retried on b, until the budget is out
                assert len(codes) < 40, codes
                codes.append(c.get(f"/before/{len(codes)}").status_code)
            assert codes.count(200) >= 10, codes

            _reload(fm, admin, [{"match": {"path_prefix": "/new/"}, "upstream": "web"}, *routes], ups)
            after = [c.get(f"/after/{i}").status_code for i in range(4)]
            assert sorted(after) == [200, 200, 502, 502], after  # no fresh retries: the dead one's turns fail


def test_round_robin_goes_on_across_reloads(tmp_path: Path) -> None:
    with backends("a", "b") as (a, b):
        admin = free_port()
        ups = {"web": {"servers": [{"url": a.url}, {"url": b.url}]}}
        routes = [{"upstream": "web"}]
        variants = [routes, [{"match": {"path_prefix": "/new/"}, "upstream": "web"}, *routes]]
        with run_reverse(tmp_path, routes=routes, upstreams=ups,
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm, \
                httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10) as c:
            seen = []
            for i in range(4):  # a reload before each request
                _reload(fm, admin, variants[(i + 1) % 2], ups)
                seen.append(c.get(f"/{i}").text)
            assert seen == ["a", "b", "a", "b"]  # was "a" every time


@pytest.mark.parametrize("drop", ["server", "upstream"])
def test_a_server_dropped_and_brought_back_by_reloads_keeps_max_conns(tmp_path: Path, drop: str) -> None:
    with backends("a", "b") as (a, b):
        admin = free_port()
        web: dict[str, Any] = {"servers": [{"url": a.url, "max_conns": 1}],
                               "queue": {"max": 10, "timeout": "10s"}}
        routes = [{"upstream": "web"}]
        got: list[httpx.Response] = []
        threads: list[threading.Thread] = []
        with run_reverse(tmp_path, routes=routes, upstreams={"web": web},
                         admin={"listen": f"127.0.0.1:{admin}"}) as fm:
            try:
                def state(name: str) -> tuple[list[int], int]:
                    doc = _status(admin)
                    return [s["active"] for s in doc["upstreams"][name]], doc["queued"][name]

                threads.append(threading.Thread(target=_get, args=(fm, "/slow", got)))
                threads[-1].start()
                wait_for(lambda: a.count() == 1, what="the slow request at the origin")

                if drop == "server":  # a leaves the upstream, then comes back
                    _reload(fm, admin, routes, {"web": {"servers": [{"url": b.url}]}})
                    assert state("web") == ([0], 0)
                else:  # the whole upstream leaves, then comes back
                    _reload(fm, admin, [{"upstream": "other"}], {"other": {"servers": [{"url": b.url}]}})
                    assert "web" not in _status(admin)["upstreams"]
                _reload(fm, admin, routes, {"web": web})
                assert state("web") == ([1], 0)  # the slow request still holds a

                threads.append(threading.Thread(target=_get, args=(fm, "/second", got)))
                threads[-1].start()
                wait_for(lambda: state("web")[1] == 1 or a.count() > 1, what="the second request")
                assert a.count() == 1  # it waits: max_conns holds
            finally:
                a.release()
                for t in threads:
                    t.join(15)
            assert [(r.status_code, r.text) for r in got] == [(200, "a")] * 2
            assert [r.target for r in a.requests] == ["/slow", "/second"]
            wait_for(lambda: state("web") == ([0], 0), what="nothing in flight")
