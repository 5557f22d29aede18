"""Health and failover end to end: retries hide a dead backend from GETs, 503 with
Retry-After when nothing is left, active checks take a server out and bring it back,
and a POST the backend already received is never sent again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream
from tests.helpers.wait import wait_for

CHECK = {"path": "/health", "interval": "200ms", "timeout": "1s", "rise": 2, "fall": 2}


@pytest.fixture
def two() -> Iterator[list[Backend]]:
    with backends("a", "b") as bs:
        yield bs


def _client(fm: Ferryman) -> httpx.Client:
    return httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10)


def test_killing_one_backend_mid_run_gives_no_client_errors(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    per_thread, threads = 150, 3
    done = 0
    lock = threading.Lock()
    results: list[tuple[int, str, bool]] = []  # (status, backend, sent after the kill)
    errors: list[BaseException] = []
    killed = threading.Event()

    def client_loop(fm: Ferryman, tag: int) -> None:
        nonlocal done
        try:
            with _client(fm) as c:
                for i in range(per_thread):
                    after = killed.is_set()
                    r = c.get(f"/t{tag}/{i}")
                    with lock:
                        results.append((r.status_code, r.text, after))
                        done += 1
        except BaseException as exc:  # noqa: B036 - reported by the main thread
            errors.append(exc)

    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams={"web": upstream(a.url, b.url)}) as fm:
        workers = [threading.Thread(target=client_loop, args=(fm, n)) for n in range(threads)]
        for w in workers:
            w.start()
        wait_for(lambda: done >= 100 or errors, what="100 requests before the kill")
        a.stop()
        killed.set()
        for w in workers:
            w.join(30)
    assert not errors, errors
    assert len(results) == per_thread * threads
    assert [r for r in results if r[0] != 200] == []
    assert any(name == "a" for _, name, _ in results)  # a served before it died
    assert {name for _, name, after in results if after} == {"b"}


def _down_logged(fm: Ferryman, *bs: Backend) -> bool:
    log = fm.stderr()
    return all(f"server 127.0.0.1:{b.port} is down" in log for b in bs)


def test_all_backends_down_503_quickly_with_retry_after(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url, health=CHECK)}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:
        with _client(fm) as c:
            assert c.get("/").status_code == 200
        a.stop()
        b.stop()
        # No traffic meanwhile: only the active checks can find them down.
        wait_for(lambda: _down_logged(fm, a, b), timeout=5, what="both servers marked down")
        for i in range(10):
            t0 = time.monotonic()
            r = httpx.get(f"{fm.proxy}/{i}", trust_env=False, timeout=10)
            elapsed = time.monotonic() - t0
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) > 0
            assert "no healthy server" in r.text
            assert elapsed < 0.5, elapsed  # no connect attempt, no timeout waited out


def test_all_backends_refusing_without_health_checks_fails_fast(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    a.stop()
    b.stop()
    ups = {"web": upstream(a.url, b.url)}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:
        for i in range(20):
            t0 = time.monotonic()
            r = httpx.get(f"{fm.proxy}/{i}", trust_env=False, timeout=10)
            assert time.monotonic() - t0 < 1.0
            assert r.status_code in (502, 503)
            assert r.headers["connection"] == "close"


def test_all_backends_refusing_gives_one_consistent_502(tmp_path: Path, two: list[Backend]) -> None:
    # Without active checks nothing marks every server down (passive ejection keeps at
    # least one in the pool), so each request really tries and fails: always 502, never
    # a mix of 502 and 503.  With active checks the answer is 503 (test above).
    a, b = two
    a.stop()
    b.stop()
    ups = {"web": upstream(a.url, b.url)}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:
        got = [httpx.get(f"{fm.proxy}/{i}", trust_env=False, timeout=10) for i in range(20)]
    assert [r.status_code for r in got] == [502] * 20
    assert all("connect" in r.text for r in got)


def test_active_health_check_takes_a_server_out_and_back(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url, health=CHECK)}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm, _client(fm) as c:
        assert {c.get(f"/{i}").text for i in range(4)} == {"a", "b"}
        wait_for(lambda: a.health_checks >= 2 and b.health_checks >= 2, what="probes arrive")

        a.healthy = False  # /health says 503; normal requests would still succeed
        wait_for(lambda: all(c.get("/probe").text == "b" for _ in range(2)), timeout=5, what="a taken out")
        wait_for(lambda: f"{a.url.removeprefix('http://')} is down" in fm.stderr(), 5, "log line")
        before = a.count()
        assert [c.get(f"/down/{i}").text for i in range(20)] == ["b"] * 20
        assert a.count() == before

        a.healthy = True
        wait_for(lambda: c.get("/probe").text == "a", timeout=5, what="a back in rotation")
        got = [c.get(f"/up/{i}").text for i in range(10)]
        assert got.count("a") == 5 and got.count("b") == 5


def test_post_is_not_resent_after_the_backend_received_it(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url)}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm, _client(fm) as c:
        # Warm the pool: one kept-alive upstream connection to each; round robin is at a again.
        assert [c.get("/warm1").text, c.get("/warm2").text] == ["a", "b"]
        a.mode = "reset"  # read the whole request, then RST
        r = c.post("/order", content=b"one order, please")
        assert r.status_code == 502
        assert a.count("POST") == 1 and a.last().body == b"one order, please"
        assert b.count("POST") == 0

        # The same failure on a GET is retried on the other server.
        statuses = [c.get(f"/get/{i}") for i in range(2)]
        assert [(x.status_code, x.text) for x in statuses] == [(200, "b"), (200, "b")]
        assert a.count("GET") >= 2  # the warm-up GET, plus the one that was reset and retried
