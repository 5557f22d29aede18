"""Issue 10.6: the real client behind trusted proxies, for ip_hash, ACLs, X-Real-IP and the log.

ferryman trusts 127.0.0.1 (the balancer, here the test itself) and walks
X-Forwarded-For from the right past trusted addresses, as nginx's
``real_ip_recursive`` does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream
from tests.helpers.wait import wait_for

TRUSTED = ["127.0.0.1/32", "10.0.0.0/8"]


@pytest.fixture(scope="module")
def two() -> Iterator[list[Backend]]:
    with backends("a", "b") as bs:
        yield bs


def _run(tmp: pytest.TempPathFactory, two: list[Backend], **reverse: object) -> Iterator[Ferryman]:
    a, b = two
    with run_reverse(
        tmp.mktemp("real-client"),
        routes=[{"upstream": "web", "cache": {"enabled": True}}],
        upstreams={"web": upstream(a.url, b.url, balance="ip_hash")},
        reverse={"trusted_proxies": TRUSTED, **reverse},
        cache={"store": "memory"},
    ) as fm:
        yield fm


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, two: list[Backend]) -> Iterator[Ferryman]:
    yield from _run(tmp_path_factory, two)


@pytest.fixture(scope="module")
def setting_xri(tmp_path_factory: pytest.TempPathFactory, two: list[Backend]) -> Iterator[Ferryman]:
    yield from _run(tmp_path_factory, two, x_real_ip=True)


def _get(fm: Ferryman, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    fields = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.request(method, f"{fm.proxy}{path}", headers=fields, trust_env=False, timeout=10)


def test_ip_hash_uses_the_client_behind_the_balancer(proxy: Ferryman, two: list[Backend]) -> None:
    homes: dict[str, set[str]] = defaultdict(set)
    for n in range(30):
        client = f"203.0.113.{n + 1}"
        for i in range(3):
            r = _get(proxy, f"/hash/{n}/{i}", X_Forwarded_For=f"{client}, 10.0.0.7", Cache_Control="no-store")
            assert r.status_code == 200
            homes[client].add(r.text)
    assert all(len(h) == 1 for h in homes.values()), homes  # each client stays on one backend
    assert set().union(*homes.values()) == {"a", "b"}  # 30 clients are not all pinned to one


def test_x_real_ip_is_the_real_client(setting_xri: Ferryman, two: list[Backend]) -> None:
    r = _get(setting_xri, "/xri", X_Forwarded_For="198.51.100.9, 10.1.1.1", X_Real_IP="6.6.6.6")
    seen = next(b for b in two if b.name == r.text).last()
    assert seen.header("x-real-ip") == "198.51.100.9"
    assert seen.header_count("x-real-ip") == 1
    assert seen.header("x-forwarded-for") == "198.51.100.9, 10.1.1.1, 127.0.0.1"


def test_access_log_shows_the_real_client(proxy: Ferryman) -> None:
    assert _get(proxy, "/logged-client", X_Forwarded_For="192.0.2.77").status_code == 200

    def line() -> dict[str, object] | None:
        recs = [json.loads(ln) for ln in proxy.access_log().splitlines()]
        return next((r for r in recs if r["target"] == "/logged-client"), None)

    assert wait_for(line, what="access log line")["client"] == "192.0.2.77"


def test_acl_sees_the_real_client(proxy: Ferryman) -> None:
    """cache.purge_clients is loopback: a purge relayed by the (loopback) balancer for an
    outside client is refused; one for a loopback client is not."""
    outside = _get(proxy, "/purge-me", method="PURGE", X_Forwarded_For="203.0.113.50")
    assert outside.status_code == 403
    inside = _get(proxy, "/purge-me", method="PURGE", X_Forwarded_For="127.0.0.1")
    assert inside.status_code in (200, 404)


def test_forged_chain_left_of_an_untrusted_hop_is_ignored(setting_xri: Ferryman, two: list[Backend]) -> None:
    # 203.0.113.9 is the first untrusted address from the right: what it claims is ignored.
    r = _get(setting_xri, "/forged", X_Forwarded_For="1.2.3.4, 203.0.113.9, 10.0.0.3")
    seen = next(b for b in two if b.name == r.text).last()
    assert seen.header("x-real-ip") == "203.0.113.9"
