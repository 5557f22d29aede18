"""Load balancing end to end: weighted round robin, least_conn, ip_hash, hash on a header,
backup servers."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream
from tests.helpers.wait import wait_for


@pytest.fixture
def two() -> Iterator[list[Backend]]:
    with backends("a", "b") as bs:
        yield bs


def _client(fm: Ferryman, **kw: object) -> httpx.Client:
    return httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10, **kw)  # type: ignore[arg-type]


def test_round_robin_weights_2_to_1(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": {"servers": [{"url": a.url, "weight": 2}, {"url": b.url, "weight": 1}]}}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm, _client(fm) as c:
        seen = Counter(c.get(f"/{i}").text for i in range(30))
    assert seen == {"a": 20, "b": 10}
    assert (a.count(), b.count()) == (20, 10)


def test_least_conn_avoids_the_busy_server(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url, balance="least_conn")}
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:
        # One request held open by whichever backend gets it ...
        slow: list[httpx.Response] = []
        t = threading.Thread(target=lambda: slow.append(httpx.get(f"{fm.proxy}/slow", trust_env=False,
                                                                     timeout=10)))
        t.start()
        try:
            busy = wait_for(lambda: next((x for x in two if x.count() == 1), None), what="slow request")
            idle = b if busy is a else a
            # ... so every quick request goes to the other one (round robin would alternate).
            with _client(fm) as c:
                got = Counter(c.get(f"/quick/{i}").text for i in range(10))
            assert got == {idle.name: 10}
            assert busy.count() == 1
        finally:
            for x in two:
                x.release()
            t.join(10)
        assert slow and slow[0].status_code == 200


def test_ip_hash_is_sticky_per_client_address(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url, balance="ip_hash")}
    homes: dict[str, set[str]] = defaultdict(set)
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:
        for n in range(2, 18):  # clients on distinct loopback source addresses
            ip = f"127.0.0.{n}"
            transport = httpx.HTTPTransport(local_address=ip)
            with _client(fm, transport=transport) as c:
                for i in range(5):
                    r = c.get(f"/{i}")
                    assert r.status_code == 200
                    homes[ip].add(r.text)
    assert all(len(h) == 1 for h in homes.values()), homes  # each client stays on one backend
    assert set().union(*homes.values()) == {"a", "b"}  # and clients are spread over both
    xff = {s.header("x-forwarded-for") for s in a.requests + b.requests}
    assert xff == {f"127.0.0.{n}" for n in range(2, 18)}


def test_hash_on_header(tmp_path: Path, two: list[Backend]) -> None:
    a, b = two
    ups = {"web": upstream(a.url, b.url, balance="hash", hash_key={"header": "X-User"})}
    homes: dict[str, set[str]] = defaultdict(set)
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm, _client(fm) as c:
        for rnd in range(4):
            for u in range(20):
                user = f"user-{u}"
                r = c.get(f"/r{rnd}", headers={"X-User": user})
                assert r.status_code == 200
                homes[user].add(r.text)
    assert all(len(h) == 1 for h in homes.values()), homes
    assert set().union(*homes.values()) == {"a", "b"}


def test_backup_only_when_primaries_are_down(tmp_path: Path) -> None:
    with backends("p1", "p2", "spare") as (p1, p2, spare):
        ups = {
            "web": {
                "servers": [{"url": p1.url}, {"url": p2.url}, {"url": spare.url, "backup": True}],
                "health": {"path": "/health", "interval": "100ms", "timeout": "1s", "rise": 1, "fall": 1},
                "passive": {"ejection": "200ms"},
            }
        }
        with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm, _client(fm) as c:
            first = Counter(c.get(f"/{i}").text for i in range(20))
            assert first == {"p1": 10, "p2": 10}  # the backup takes nothing while primaries live

            p1.stop()
            assert {c.get(f"/one-down/{i}").text for i in range(10)} == {"p2"}  # still not the backup

            p2.stop()
            got = [c.get(f"/both-down/{i}") for i in range(10)]
            assert [(r.status_code, r.text) for r in got] == [(200, "spare")] * 10

            p1.start()  # same port; traffic goes back once the check sees it up
            wait_for(lambda: c.get("/back").text == "p1", what="traffic back on p1")
            spare_before = spare.count()
            assert {c.get(f"/after/{i}").text for i in range(10)} == {"p1"}
            assert spare.count() == spare_before
