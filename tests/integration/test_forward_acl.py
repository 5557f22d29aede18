"""Who may use the proxy and where it may go: forward.clients and forward.rules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import Ferryman, Nginx, run_ferryman
from tests.helpers.rawhttp import curl, proxy_request, raw_client


def status_and_body(port: int, url: str, method: str = "GET") -> tuple[int, bytes]:
    with raw_client(port) as c:
        r = c.request(proxy_request(url, method=method, body=b"x" if method == "POST" else b""))
        return r.status, r.body


def test_client_not_in_forward_clients_is_refused(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path, forward={"clients": ["10.0.0.0/8"]}) as fm:
        out = curl("-i", "-x", fm.proxy, f"{nginx.url}/small")
        assert out.stdout.startswith(b"HTTP/1.1 403")
        assert b"forward.clients" in out.stdout and b"hello from nginx" not in out.stdout
        with raw_client(fm.port) as c:  # CONNECT is refused the same way, and the connection closed
            r = c.request(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n")
            assert r.status == 403 and b"forward.clients" in r.body
            assert c.at_eof(5)


@pytest.fixture(scope="module")
def ruled(tmp_path_factory: pytest.TempPathFactory, nginx: Nginx) -> Iterator[Ferryman]:
    rules = [
        {"name": "ads", "deny": {"domains": ["*.ads.test"]}},
        {"name": "tracker", "deny": {"domains": [".tracker.test"]}},
        {"deny": {"domains": ["exact.test"]}},  # unnamed: reported by its position
        {"name": "no-localhost", "deny": {"domains": ["localhost"]}},
        {"name": "no-post", "deny": {"methods": ["POST"], "ports": [nginx.port]}},
    ]
    with run_ferryman(tmp_path_factory.mktemp("acl"), forward={"rules": rules}) as fm:
        yield fm


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("x.ads.test", "ads"),
        ("a.b.ads.test", "ads"),
        ("X.Ads.TEST", "ads"),
        ("tracker.test", "tracker"),
        ("www.tracker.test", "tracker"),
        ("exact.test", "forward.rules[2]"),
    ],
)
def test_deny_rule_decides_before_dns(ruled: Ferryman, host: str, rule: str) -> None:
    # none of these names resolve: a 403 (not a 502) proves the rule ran before DNS
    status, body = status_and_body(ruled.port, f"http://{host}/page")
    assert status == 403
    assert f"denied (rule: {rule})".encode() in body


@pytest.mark.parametrize("host", ["ads.test", "nottracker.test", "sub.exact.test"])
def test_names_outside_the_rules_are_not_denied(ruled: Ferryman, host: str) -> None:
    # '*.x' excludes x itself, '.x' is not a plain suffix, 'x' is that host only:
    # the request goes on to DNS, which fails for these names
    status, body = status_and_body(ruled.port, f"http://{host}/page")
    assert status == 502, body


def test_exact_domain_rule_on_a_resolvable_name(ruled: Ferryman, nginx: Nginx) -> None:
    status, body = status_and_body(ruled.port, f"http://localhost:{nginx.port}/small")
    assert status == 403 and b"(rule: no-localhost)" in body
    assert status_and_body(ruled.port, f"{nginx.url}/small") == (200, b"hello from nginx\n")


def test_connect_to_denied_domain_is_403(ruled: Ferryman) -> None:
    with raw_client(ruled.port) as c:
        r = c.request(b"CONNECT x.ads.test:443 HTTP/1.1\r\nHost: x.ads.test:443\r\n\r\n")
        assert r.status == 403 and b"(rule: ads)" in r.body
        assert c.at_eof(5)


def test_method_and_port_rule(ruled: Ferryman, nginx: Nginx) -> None:
    status, body = status_and_body(ruled.port, f"{nginx.url}/echo", method="POST")
    assert status == 403 and b"(rule: no-post)" in body
    assert status_and_body(ruled.port, f"{nginx.url}/echo") == (200, b"GET /echo\n")


def test_domains_file_with_100k_entries(tmp_path: Path, nginx: Nginx) -> None:
    lines = ["# generated blocklist"] + [f"blocked{i}.example" for i in range(100_000)]
    lines += ["*.wild.example", ".dot.example", ""]
    (tmp_path / "blocklist.txt").write_text("\n".join(lines))
    rules = [{"name": "blocklist", "deny": {"domains_file": "blocklist.txt"}}]
    t0 = time.monotonic()
    with run_ferryman(tmp_path, forward={"rules": rules}) as fm:
        startup = time.monotonic() - t0
        for host in ("blocked0.example", "blocked99999.example", "a.wild.example", "dot.example",
                     "www.dot.example"):
            status, body = status_and_body(fm.port, f"http://{host}/")
            assert status == 403 and b"(rule: blocklist)" in body, host
        t1 = time.monotonic()
        with httpx.Client(proxy=fm.proxy, trust_env=False, timeout=10) as client:
            for _ in range(300):
                r = client.get(f"{nginx.url}/small")
                assert r.status_code == 200 and r.content == b"hello from nginx\n"
        allowed = time.monotonic() - t1
        t2 = time.monotonic()
        for i in range(0, 100_000, 1000):
            assert status_and_body(fm.port, f"http://blocked{i}.example/")[0] == 403
        denied = time.monotonic() - t2
    # generous bounds: a linear scan per request would not even approach these
    assert startup < 10, startup
    assert allowed < 10, f"300 allowed requests took {allowed:.1f}s"
    assert denied < 10, f"100 denied requests took {denied:.1f}s"
