"""The admin API is not reachable through the proxy, nor drivable from a browser page.

- a request through the forward proxy to the admin listener is a loop (508) under every
  spelling of its address, for GET and CONNECT;
- the admin API answers only loopback Host names (DNS rebinding) unless configured;
- reload and purge need a JSON body or a custom header, and no CORS grant is ever sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.rawhttp import Response, assert_error_and_closed, exchange
from tests.helpers.wait import wait_for, wait_port

pytestmark = pytest.mark.timeout(60)

SPELLINGS_OF_LOOPBACK = [
    "127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1.",
    "0.0.0.0", "0", "[::1]", "[::ffff:127.0.0.1]", "127.0.0.2",
]


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, admin_port: int) -> Iterator[Ferryman]:
    with run_ferryman(
        tmp_path_factory.mktemp("admin-exposure"),
        admin={"listen": f"127.0.0.1:{admin_port}"},
        forward={"connect_ports": [443, admin_port]},
    ) as fm:
        wait_port(admin_port, fm.proc)
        yield fm


def reloads(fm: Ferryman) -> int:
    return fm.stderr().count("configuration reloaded")


def admin_call(port: int, method: str, path: str, host: str = "127.0.0.1", extra: bytes = b"",
               body: bytes = b"") -> Response:
    length = b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b""
    req = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s" % (
        method.encode(), path.encode(), host.encode(), length, extra, body
    )
    return exchange(port, req)


@pytest.mark.parametrize("host", SPELLINGS_OF_LOOPBACK)
def test_admin_api_through_the_proxy_is_a_loop(proxy: Ferryman, admin_port: int, host: str) -> None:
    before = reloads(proxy)
    for method, path in (("GET", "/status"), ("POST", "/reload"), ("POST", "/purge?prefix=http://a/")):
        url = f"http://{host}:{admin_port}{path}"
        req = (
            b"%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            % (method.encode(), url.encode(), host.encode(), admin_port)
        )
        resp = exchange(proxy.port, req)
        assert_error_and_closed(resp, 508)
    assert reloads(proxy) == before


@pytest.mark.parametrize("host", SPELLINGS_OF_LOOPBACK)
def test_connect_to_the_admin_api_is_a_loop(proxy: Ferryman, admin_port: int, host: str) -> None:
    authority = f"{host}:{admin_port}".encode()
    resp = exchange(proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
    assert_error_and_closed(resp, 508)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.", "x.localhost", "[::1]:{port}",
             "127.9.9.9"]
)
def test_loopback_and_configured_host_names_are_answered(proxy: Ferryman, admin_port: int, host: str) -> None:
    resp = admin_call(admin_port, "GET", "/status", host.format(port=admin_port))
    assert resp.status == 200, resp.raw[:300]
    assert "connections" in json.loads(resp.body)


def test_allowed_hosts_adds_names(tmp_path: Path) -> None:
    admin = free_port()
    cfg = {"listen": f"127.0.0.1:{admin}", "allowed_hosts": ["admin.example"]}
    with run_ferryman(tmp_path, admin=cfg) as fm:
        wait_port(admin, fm.proc)
        for host in ("admin.example", f"Admin.Example:{admin}", "localhost"):
            assert admin_call(admin, "GET", "/status", host).status == 200, host
        assert admin_call(admin, "GET", "/status", "other.example").status == 403


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "localhost.evil.example", "10.0.0.1", "[2001:db8::1]",
             "127.0.0.1.evil.example"]
)
def test_other_host_names_are_refused(proxy: Ferryman, admin_port: int, host: str) -> None:
    before = reloads(proxy)
    for method, path in (("GET", "/status"), ("GET", "/healthz"), ("POST", "/reload")):
        resp = admin_call(admin_port, method, path, host.format(port=admin_port),
                          b"Content-Type: application/json\r\n", b"{}")
        assert resp.status == 403, resp.raw[:300]
        assert b"is not a name of this admin API" in resp.body
    assert reloads(proxy) == before


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        pytest.param(b"", b"", id="bare-post"),
        pytest.param(b"Content-Type: text/plain\r\n", b"{}", id="text-plain"),
        pytest.param(b"Content-Type: application/x-www-form-urlencoded\r\n", b"a=1", id="form"),
        pytest.param(b"Content-Type: multipart/form-data; boundary=x\r\n", b"--x--\r\n", id="multipart"),
        pytest.param(b"Content-Type: application/jsonp\r\n", b"{}", id="not-json"),
        pytest.param(b"Origin: http://evil.example\r\n", b"", id="cross-origin"),
    ],
)
def test_state_changes_refuse_what_a_browser_form_can_send(
    proxy: Ferryman, admin_port: int, extra: bytes, body: bytes
) -> None:
    before = reloads(proxy)
    for path in ("/reload", "/purge?prefix=http://a/"):
        resp = admin_call(admin_port, "POST", path, extra=extra, body=body)
        assert resp.status == 403, resp.raw[:300]
        assert b"application/json" in resp.body and b"X-Ferryman-Admin" in resp.body
    assert reloads(proxy) == before


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        pytest.param(b"Content-Type: application/json\r\n", b"{}", id="json"),
        pytest.param(b"Content-Type: Application/JSON; charset=utf-8\r\n", b"", id="json-empty"),
        pytest.param(b"X-Ferryman-Admin: 1\r\n", b"", id="custom-header"),
    ],
)
def test_state_changes_with_json_or_the_custom_header(
    proxy: Ferryman, admin_port: int, extra: bytes, body: bytes
) -> None:
    before = reloads(proxy)
    resp = admin_call(admin_port, "POST", "/reload", extra=extra, body=body)
    assert (resp.status, json.loads(resp.body)) == (200, {"reloaded": True})
    wait_for(lambda: reloads(proxy) == before + 1, 5)
    resp = admin_call(admin_port, "POST", "/purge", extra=extra, body=body)
    assert resp.status == 404  # no cache configured: the call itself was accepted


def test_a_json_body_must_be_an_object(proxy: Ferryman, admin_port: int) -> None:
    for body in (b"[1]", b"nope", b"\"s\""):
        resp = admin_call(admin_port, "POST", "/reload", extra=b"Content-Type: application/json\r\n",
                          body=body)
        assert resp.status == 400, body


def test_no_cors_grant_is_ever_sent(proxy: Ferryman, admin_port: int) -> None:
    preflight = admin_call(
        admin_port, "OPTIONS", "/reload",
        extra=b"Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n"
              b"Access-Control-Request-Headers: content-type, x-ferryman-admin\r\n",
    )
    assert preflight.status >= 400
    responses = [preflight]
    responses.append(admin_call(admin_port, "GET", "/status", extra=b"Origin: http://evil.example\r\n"))
    responses.append(admin_call(admin_port, "POST", "/reload", extra=b"Origin: http://evil.example\r\n"
                                b"X-Ferryman-Admin: 1\r\n"))
    for r in responses:
        assert not [n for n, _ in r.headers if n.lower().startswith("access-control-")], r.raw[:300]


def test_builtin_default_proxy_refuses_its_own_admin_api(tmp_path: Path) -> None:
    # the shape of `make run`: forward listener and admin API side by side
    admin = free_port()
    with run_ferryman(tmp_path, admin={"listen": f"127.0.0.1:{admin}"}) as fm:
        wait_port(admin, fm.proc)
        resp = exchange(fm.port, b"GET http://127.0.0.1:%d/status HTTP/1.1\r\nHost: x\r\n\r\n" % admin)
        assert_error_and_closed(resp, 508)
