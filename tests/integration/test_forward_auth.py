"""Proxy authentication with real clients (issue 12 items 1 and 5): curl --proxy-user and
credentials in the proxy URL (httpx) for HTTP and HTTPS through CONNECT, every malformed
Proxy-Authorization, the failure limiter, reloads of the user files while a client is
connected, a parent that needs its own credentials, usage per user in /status, and
``workers: 2``."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from passlib.hash import apr_md5_crypt

from tests.helpers.origin import TLS_BODY, Backend, Origin, Tls, backends
from tests.helpers.procs import ferryman_check, free_port, run_ferryman
from tests.helpers.rawhttp import connect, curl, exchange, raw_client, read_response
from tests.helpers.wait import json_lines as json_log
from tests.helpers.wait import wait_for as poll
from tests.helpers.wait import wait_log as wait_log_entry

PASSWORD = "wonderland"


def bcrypt_line(user: str, password: str) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n"


def write_users(path: Path, users: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(bcrypt_line(u, p) for u, p in users.items()))
    os.replace(tmp, path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def auth_cfg(tmp: Path, **extra: Any) -> dict[str, Any]:
    users = tmp / "users.htpasswd"
    if not users.exists():
        write_users(users, {"alice": PASSWORD, "bob": "builder"})
    return {"htpasswd": str(users), "realm": "office", "reload_check": "0.2s", **extra}


@pytest.fixture
def origin() -> Iterator[Backend]:
    with backends("origin") as (b,):
        yield b


def fwd(tmp: Path, tls_origin: Origin | None = None, **auth: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"auth": auth_cfg(tmp, **auth)}
    if tls_origin is not None:
        out["connect_ports"] = [tls_origin.port]
    return out


# -- real clients -------------------------------------------------------------------------------


def test_curl_proxy_user_http_and_https(
    tmp_path: Path, origin: Backend, tls: Tls, tls_origin: Origin
) -> None:
    with run_ferryman(tmp_path, forward=fwd(tmp_path, tls_origin)) as fm:
        r = curl("-x", fm.proxy, "--proxy-user", f"alice:{PASSWORD}", f"{origin.url}/a")
        assert r.stdout == b"origin"
        r = curl("--cacert", str(tls.ca_file), "-x", fm.proxy, "--proxy-user", f"alice:{PASSWORD}",
                 f"https://localhost:{tls_origin.port}/tls")
        assert r.stdout == TLS_BODY
        wait_log_entry(fm.access_log, lambda e: e["method"] == "CONNECT")  # logged when the tunnel ends
        entries = [e for e in json_log(fm.access_log()) if e["status"] == 200]
        assert {e["method"] for e in entries} == {"GET", "CONNECT"}
        assert all(e["user"] == "alice" for e in entries)
        # the origin never sees the client's credentials
        assert origin.last().header("proxy-authorization") is None


def test_no_credentials_407_challenge_http_and_connect(tmp_path: Path, origin: Backend, tls: Tls,
                                                       tls_origin: Origin) -> None:
    with run_ferryman(tmp_path, forward=fwd(tmp_path, tls_origin)) as fm:
        r = curl("-i", "-x", fm.proxy, f"{origin.url}/a")
        assert r.stdout.startswith(b"HTTP/1.1 407 ")
        assert b'Proxy-Authenticate: Basic realm="office", charset="UTF-8"\r\n' in r.stdout
        r = curl("-v", "--cacert", str(tls.ca_file), "-x", fm.proxy,
                 f"https://localhost:{tls_origin.port}/tls", check=False)
        assert r.returncode != 0 and b"< HTTP/1.1 407 " in r.stderr
        assert b'< Proxy-Authenticate: Basic realm="office"' in r.stderr
        r = curl("-i", "-x", fm.proxy, "--proxy-user", "alice:nope", f"{origin.url}/a")
        assert r.stdout.startswith(b"HTTP/1.1 407 ")
        assert origin.count() == 0
        def three() -> list[dict[str, Any]] | None:
            lines = json_log(fm.access_log())
            return lines if len(lines) == 3 else None

        log = poll(three, what="3 log lines")
        assert [e["status"] for e in log] == [407, 407, 407] and all(e["user"] == "" for e in log)


def test_httpx_credentials_in_proxy_url(
    tmp_path: Path, origin: Backend, tls: Tls, tls_origin: Origin
) -> None:
    with run_ferryman(tmp_path, forward=fwd(tmp_path, tls_origin)) as fm:
        proxy = f"http://alice:{PASSWORD}@127.0.0.1:{fm.port}"
        with httpx.Client(proxy=proxy, verify=tls.client_ctx(), trust_env=False, timeout=10) as c:
            for i in range(3):  # keep-alive: checked once, then from the credential cache
                assert c.get(f"{origin.url}/h{i}").text == "origin"
            r = c.get(f"https://localhost:{tls_origin.port}/tls")
            assert (r.status_code, r.content) == (200, TLS_BODY)
        bad = f"http://alice:wrong@127.0.0.1:{fm.port}"
        with httpx.Client(proxy=bad, trust_env=False, timeout=10) as c:
            assert c.get(f"{origin.url}/x").status_code == 407
        with httpx.Client(proxy=bad, verify=tls.client_ctx(), trust_env=False, timeout=10) as c, \
                pytest.raises(httpx.ProxyError):
            c.get(f"https://localhost:{tls_origin.port}/tls")


MALFORMED = {
    "bad-base64": b"Basic !!!!not-base64!!!",
    "no-colon": b"Basic " + base64.b64encode(b"alicewonderland"),
    "nul": b"Basic " + base64.b64encode(b"alice:wonder\x00land"),
    "10KB": b"Basic " + base64.b64encode(b"alice:" + b"x" * 10_000),
    "scheme": b"Digest username=alice",
    "empty-token": b"Basic ",
    "latin1-junk": b"Basic \xff\xfe",
}


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_malformed_proxy_authorization_is_407(tmp_path: Path, origin: Backend, method: str) -> None:
    cfg = {**fwd(tmp_path, max_failures=1000), "connect_ports": [origin.port]}
    with run_ferryman(tmp_path, forward=cfg) as fm:
        for name, value in MALFORMED.items():
            target = f"127.0.0.1:{origin.port}" if method == "CONNECT" else f"{origin.url}/m"
            req = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
                   "Proxy-Authorization: ").encode() + value + b"\r\n\r\n"
            with raw_client(fm.port) as c:
                r = c.request(req)
                assert r.status == 407, name
                assert r.head.get("proxy-authenticate") == 'Basic realm="office", charset="UTF-8"', name
                if method == "CONNECT":
                    assert c.at_eof(5), name
        # twice, even with good credentials
        good = basic("alice", PASSWORD).encode()
        with raw_client(fm.port) as c:
            r = c.request(b"GET %s/m HTTP/1.1\r\nHost: x\r\nProxy-Authorization: %s\r\n"
                          b"Proxy-Authorization: %s\r\n\r\n" % (origin.url.encode(), good, good))
            assert r.status == 407
        assert origin.count() == 0
        assert "Traceback" not in fm.stderr()


def test_failures_limited_per_client_address(tmp_path: Path, origin: Backend) -> None:
    cfg = fwd(tmp_path, max_failures=3, failure_window="60s", lockout="30s")
    with run_ferryman(tmp_path, forward=cfg) as fm, raw_client(fm.port) as c:
        def get(user: str, pw: str) -> Any:
            return c.request(b"GET %s/f HTTP/1.1\r\nHost: x\r\nProxy-Authorization: %s\r\n\r\n"
                             % (origin.url.encode(), basic(user, pw).encode()))
        assert get("alice", "guess1").status == 407
        assert get("nobody", "guess2").status == 407
        r = get("alice", "guess3")
        assert r.status == 429 and r.head.get("retry-after") == "30"
        assert c.at_eof(5)  # a locked-out client is closed on


def test_lockout_holds_even_for_the_right_password(tmp_path: Path, origin: Backend) -> None:
    cfg = fwd(tmp_path, max_failures=2, lockout="30s")
    with run_ferryman(tmp_path, forward=cfg) as fm:
        for _ in range(2):
            r = curl("-i", "-x", fm.proxy, "--proxy-user", "alice:bad", f"{origin.url}/a")
        assert r.stdout.startswith(b"HTTP/1.1 429 ") and b"Retry-After: 30\r\n" in r.stdout
        r = curl("-i", "-x", fm.proxy, "--proxy-user", f"alice:{PASSWORD}", f"{origin.url}/a")
        assert r.stdout.startswith(b"HTTP/1.1 429 ")
        assert origin.count() == 0


# -- reloads ------------------------------------------------------------------------------------


def test_user_file_change_applies_to_connected_client(tmp_path: Path, origin: Backend) -> None:
    with run_ferryman(tmp_path, forward=fwd(tmp_path, max_failures=10_000)) as fm, \
            httpx.Client(proxy=f"http://alice:{PASSWORD}@127.0.0.1:{fm.port}", trust_env=False,
                         timeout=10) as alice, \
            httpx.Client(proxy=f"http://carol:sesame@127.0.0.1:{fm.port}", trust_env=False,
                         timeout=10) as carol:
        assert alice.get(f"{origin.url}/1").status_code == 200
        assert carol.get(f"{origin.url}/1").status_code == 407
        write_users(tmp_path / "users.htpasswd", {"carol": "sesame"})  # alice removed, carol added
        poll(lambda: carol.get(f"{origin.url}/2").status_code == 200, what="carol admitted")
        r = alice.get(f"{origin.url}/3")  # the same keep-alive connection: cached, but gone now
        assert r.status_code == 407
        assert "proxy users reloaded" in fm.stderr()


def test_bad_user_file_keeps_old_users_and_says_why(tmp_path: Path, origin: Backend) -> None:
    users = tmp_path / "users.htpasswd"
    with run_ferryman(tmp_path, forward=fwd(tmp_path)) as fm, \
            httpx.Client(proxy=f"http://alice:{PASSWORD}@127.0.0.1:{fm.port}", trust_env=False,
                         timeout=10) as alice:
        assert alice.get(f"{origin.url}/1").status_code == 200
        users.write_text(bcrypt_line("alice", PASSWORD) + "mallory:plaintext\n")
        poll(lambda: "proxy users not reloaded" in fm.stderr(), what="mtime reload refused")
        assert f"{users}:2" in fm.stderr()
        fm.reload()  # SIGHUP: the whole reload is refused, naming the file and line
        poll(lambda: "reload refused" in fm.stderr(), what="SIGHUP reload refused")
        assert "forward.auth.htpasswd" in fm.stderr()
        assert alice.get(f"{origin.url}/2").status_code == 200  # the users of before
        bob_url = f"http://bob:builder@127.0.0.1:{fm.port}"
        with httpx.Client(proxy=bob_url, trust_env=False, timeout=10) as bob:
            assert bob.get(f"{origin.url}/3").status_code == 200
        write_users(users, {"bob": "builder"})
        fm.reload()
        poll(lambda: alice.get(f"{origin.url}/4").status_code == 407, what="alice gone after SIGHUP")


# -- rules, groups, parent ----------------------------------------------------------------------


def test_auth_rule_and_groups(tmp_path: Path, origin: Backend) -> None:
    groups = tmp_path / "groups"
    groups.write_text("staff: alice\n")
    cfg = {
        "auth": auth_cfg(tmp_path, group_file=str(groups), groups={"lab": ["bob"]}),
        "rules": [
            {"name": "open", "allow": {"path_prefix": ["/public/"]}},
            {"auth": {}},
            {"name": "staff-only", "allow": {"groups": ["staff"], "path_prefix": ["/staff/"]}},
            {"name": "lab", "allow": {"groups": ["lab"], "path_prefix": ["/lab/"]}},
            {"name": "rest", "deny": {}, "message": "staff and lab only"},
        ],
    }
    with run_ferryman(tmp_path, forward=cfg) as fm:
        def status(path: str, user: str | None = None) -> int:
            args = ["-o", "/dev/null", "-w", "%{http_code}", "-x", fm.proxy]
            if user:
                args += ["--proxy-user", user]
            return int(curl(*args, f"{origin.url}{path}").stdout)

        assert status("/public/x") == 200  # no credentials needed
        assert status("/staff/x") == 407
        assert status("/staff/x", f"alice:{PASSWORD}") == 200
        assert status("/staff/x", "bob:builder") == 403
        assert status("/lab/x", "bob:builder") == 200
        assert status("/lab/x", f"alice:{PASSWORD}") == 403


def test_parent_with_userinfo_gets_its_own_credentials(tmp_path: Path, origin: Backend, tls: Tls,
                                                      tls_origin: Origin) -> None:
    (tmp_path / "parent").mkdir()
    (tmp_path / "child").mkdir()
    parent_fwd = fwd(tmp_path / "parent", tls_origin)
    with run_ferryman(tmp_path / "parent", forward=parent_fwd) as parent:
        url = f"http://alice:{PASSWORD}@127.0.0.1:{parent.port}"
        child_fwd = {"parent": url, "connect_ports": [tls_origin.port]}
        with run_ferryman(tmp_path / "child", forward=child_fwd) as child:
            # the child's client sends its own (other) credentials: they stop at the child
            r = curl("-x", child.proxy, "-H", "Proxy-Authorization: Basic Y2xpZW50OnNlY3JldA==",
                     f"{origin.url}/via-parent")
            assert r.stdout == b"origin"
            assert origin.last().header("proxy-authorization") is None
            r = curl("--cacert", str(tls.ca_file), "-x", child.proxy, f"https://localhost:{tls_origin.port}/t")
            assert r.stdout == TLS_BODY
            wait_log_entry(parent.access_log, lambda e: e["method"] == "CONNECT")
            users = {e["user"] for e in json_log(parent.access_log()) if e["status"] == 200}
            assert users == {"alice"}
        with run_ferryman(tmp_path / "child", forward={"parent": parent.proxy}) as child:
            r = curl("-i", "-x", child.proxy, f"{origin.url}/no-creds")
            assert r.stdout.startswith(b"HTTP/1.1 407 ")  # the parent's challenge comes back


def test_parent_userinfo_reaches_the_parent_only(tmp_path: Path, origin: Backend) -> None:
    """A recording server as the parent: it gets the URL's credentials (percent-decoded),
    never the client's."""
    parent_url = f"http://us%40er:p%3Ass@127.0.0.1:{origin.port}"
    with run_ferryman(tmp_path, forward={"parent": parent_url}) as child:
        r = curl("-x", child.proxy, "--proxy-user", "client:secret", "http://origin.test/p")
        assert r.stdout == b"origin"
    seen = origin.last()
    assert seen.target == "http://origin.test/p"
    assert [v for n, v in seen.headers if n.lower() == "proxy-authorization"] == [basic("us@er", "p:ss")]


def test_check_warns_weak_hashes_by_name(tmp_path: Path) -> None:
    users = tmp_path / "users.htpasswd"
    sha = "{SHA}" + base64.b64encode(__import__("hashlib").sha1(b"pw").digest()).decode()
    users.write_text(bcrypt_line("alice", PASSWORD) + f"bob:{apr_md5_crypt.hash('builder')}\ncarol:{sha}\n")
    cfg = {
        "listeners": [{"listen": f"127.0.0.1:{free_port()}"}],
        "forward": {"auth": {"htpasswd": str(users)}},
    }
    r = ferryman_check(tmp_path, cfg)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "'bob' has a weak apr1-MD5 hash" in out and "'carol' has a weak SHA-1 hash" in out
    assert "'alice'" not in out
    users.write_text("alice:$2y$05$short\n")
    r = ferryman_check(tmp_path, cfg)
    assert r.returncode != 0 and f"forward.auth.htpasswd: {users}:1" in r.stdout + r.stderr


# -- usage, workers -----------------------------------------------------------------------------


def admin_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        data = json.loads(r.read())
    assert isinstance(data, dict)
    return data


def test_status_counts_requests_and_bytes_per_user(tmp_path: Path, origin: Backend) -> None:
    admin = free_port()
    with run_ferryman(tmp_path, forward=fwd(tmp_path), admin={"listen": f"127.0.0.1:{admin}"}) as fm:
        with httpx.Client(proxy=f"http://alice:{PASSWORD}@127.0.0.1:{fm.port}", trust_env=False) as c:
            for i in range(5):
                assert c.get(f"{origin.url}/u{i}").status_code == 200
        with httpx.Client(proxy=f"http://bob:builder@127.0.0.1:{fm.port}", trust_env=False) as c:
            assert c.post(f"{origin.url}/up", content=b"x" * 1000).status_code == 200
        wait_log_entry(fm.access_log, lambda e: e["user"] == "bob")
        st = admin_status(admin)
        assert st["users"]["alice"]["requests"] == 5
        assert st["users"]["alice"]["bytes_out"] > 5 * len(b"origin")
        assert st["users"]["bob"]["requests"] == 1 and st["users"]["bob"]["bytes_in"] == 1000
        assert st["auth"]["users"] == 2 and st["auth"]["password_checks"] == 2


def test_burst_with_new_credentials_costs_one_check(tmp_path: Path, origin: Backend) -> None:
    """20 connections opening at once with the same new credentials share one bcrypt check
    (a slow hash, cost 12: without the sharing each would start its own)."""
    users = tmp_path / "users.htpasswd"
    users.write_text(f"carol:{bcrypt.hashpw(b'sesame', bcrypt.gensalt(12)).decode()}\n")
    admin = free_port()
    with run_ferryman(tmp_path, forward=fwd(tmp_path), admin={"listen": f"127.0.0.1:{admin}"}) as fm:
        req = (f"GET {origin.url}/b HTTP/1.1\r\nHost: x\r\n"
               f"Proxy-Authorization: {basic('carol', 'sesame')}\r\n\r\n").encode()
        clients = [raw_client(fm.port) for _ in range(20)]
        conns = [c.__enter__() for c in clients]
        try:
            for c in conns:
                c.send(req)
            assert [c.read_response().status for c in conns] == [200] * 20
        finally:
            for c in clients:
                c.__exit__(None, None, None)
        assert admin_status(admin)["auth"]["password_checks"] == 1


def test_two_workers(tmp_path: Path, origin: Backend) -> None:
    with run_ferryman(tmp_path, forward=fwd(tmp_path), workers=2) as fm:
        good = f"http://alice:{PASSWORD}@127.0.0.1:{fm.port}"
        for _ in range(10):  # new connections: spread over both workers
            with httpx.Client(proxy=good, trust_env=False, timeout=10) as c:
                assert c.get(f"{origin.url}/w").status_code == 200
            r = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", fm.proxy, f"{origin.url}/w")
            assert r.stdout == b"407"
        write_users(tmp_path / "users.htpasswd", {"bob": "builder"})
        os.kill(fm.proc.pid, signal.SIGHUP)  # the supervisor relays it to both workers

        def alice_refused_everywhere() -> bool:
            for _ in range(6):
                with httpx.Client(proxy=good, trust_env=False, timeout=10) as c:
                    if c.get(f"{origin.url}/w").status_code != 407:
                        return False
            return True

        poll(alice_refused_everywhere, what="every worker dropped alice")


# -- refusals: the log says why; a spray of wrong passwords is bounded --------------------------


def test_every_auth_refusal_says_why_in_the_access_log(tmp_path: Path, origin: Backend) -> None:
    """407 (missing, malformed, unknown user, wrong password, and the rules' own 407) and the
    limiter's 429 fill the log's error field, as refusals from the error table do."""
    cfg = {**fwd(tmp_path, max_failures=4, lockout="30s"),
           "rules": [{"name": "open", "allow": {"path_prefix": ["/public/"]}}, {"auth": {}}]}
    with run_ferryman(tmp_path, forward=cfg) as fm:
        def status(path: str, *args: str) -> int:
            out = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", fm.proxy, *args, f"{origin.url}{path}")
            return int(out.stdout)

        assert status("/missing") == 407
        assert status("/malformed", "--proxy-header", "Proxy-Authorization: Basic !!!") == 407
        assert status("/unknown", "--proxy-user", "mallory:x") == 407
        assert status("/wrong", "--proxy-user", "alice:nope") == 407
        assert status("/locked", "--proxy-user", "alice:nope2") == 429
        expected = {
            "/missing": "proxy authentication required",
            "/malformed": "malformed Proxy-Authorization",
            "/unknown": "unknown proxy user",
            "/wrong": "wrong proxy password",
            "/locked": "too many failed proxy logins from this address; retry in 30s",
        }

        def all_logged() -> dict[str, dict[str, Any]] | None:
            got = {e["target"].removeprefix(origin.url): e for e in json_log(fm.access_log())}
            return got if len(got) == len(expected) else None

        logged = poll(all_logged, what="5 log lines")
        assert {p: e["error"] for p, e in logged.items()} == expected
        assert [logged[p]["status"] for p in expected] == [407, 407, 407, 407, 429]


def test_spray_of_wrong_passwords_does_not_queue_checks_in_front_of_users(
    tmp_path: Path, origin: Backend
) -> None:
    """300 connections at once with distinct wrong passwords for a user whose bcrypt check
    takes ~50 ms: without a bound they queue ~8 s of checks (2 threads) in front of everyone.
    With the default bound (8 checks per thread of the pool) the ones over it get 503 with
    Retry-After at once, unchecked, and a user with the right (new) credentials gets
    through within a bound."""
    users = tmp_path / "users.htpasswd"
    users.write_text(f"alice:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}\n")
    admin = free_port()
    cfg = fwd(tmp_path, max_failures=100_000)  # the per-address limiter is not what is tested
    n = 300

    def req(password: str, close: str = "") -> bytes:
        return (f"GET {origin.url}/s HTTP/1.1\r\nHost: x\r\n{close}"
                f"Proxy-Authorization: {basic('alice', password)}\r\n\r\n").encode()

    with run_ferryman(tmp_path, forward=cfg, admin={"listen": f"127.0.0.1:{admin}"}) as fm:
        socks = []
        try:
            for i in range(n):
                s = connect(fm.port)
                socks.append(s)
                s.sendall(req(f"guess{i}"))
            t0 = time.monotonic()
            last = read_response(socks[-1], timeout=2.0)  # over the bound: answered unchecked
            assert last.status == 503 and last.header("retry-after") is not None
            assert time.monotonic() - t0 < 1.0

            def user_through() -> bool:
                r = exchange(fm.port, req(PASSWORD, "Connection: close\r\n"), timeout=10.0)
                assert r.status in (200, 503), r.status
                return r.status == 200

            poll(user_through, timeout=4.0, interval=0.05, what="the right password through")
            statuses = [read_response(s, timeout=10.0).status for s in socks[:-1]] + [503]
        finally:
            for s in socks:
                s.close()
        assert set(statuses) <= {407, 503}
        assert statuses.count(503) >= n - 100
        st = admin_status(admin)["auth"]
        assert st["password_checks_refused"] >= statuses.count(503)
        assert st["password_checks"] <= n - statuses.count(503) + 50  # the user's tries included
        wait_log_entry(fm.access_log, lambda e: e["status"] == 503)
        busy = [e for e in json_log(fm.access_log()) if e["status"] == 503]
        assert busy and all("password checks pending" in e["error"] for e in busy)
