"""The PAC file (issue 12 item 6): served by the forward listener at /proxy.pac and
/wpad.dat without credentials, generated from the config; and a real browser (headless
Chromium) set up by it alone loads a page through the proxy."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers.origin import canned, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.rawhttp import connect, exchange, read_response
from tests.helpers.wait import wait_log, wait_port

pytestmark = pytest.mark.timeout(90)

PAGE = b"<html><head><title>through ferryman</title></head><body><p id=m>pac-ok-4711</p></body></html>"
HTML = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(PAGE), PAGE,
)


def test_pac_and_wpad_are_served_from_the_config(tmp_path: Path) -> None:
    fwd = {"direct": [".corp.example", "intranet.example"], "direct_networks": ["10.0.0.0/8", "fd00::/8"]}
    with run_ferryman(tmp_path, forward=fwd) as fm:
        with connect(fm.port) as s:  # keep-alive: both files, then HEAD, on one connection
            for path in (b"/proxy.pac", b"/wpad.dat?x=1"):
                s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, fm.port))
                resp = read_response(s)
                assert resp.status == 200
                assert resp.header("content-type") == "application/x-ns-proxy-autoconfig"
                js = resp.body.decode()
                assert "function FindProxyForURL(url, host)" in js
                assert f'"PROXY 127.0.0.1:{fm.port}"' in js
                assert ".corp.example" in js and "intranet.example" in js
                assert '["10.0.0.0", "255.0.0.0"]' in js and "fd00::/8" in js
            s.sendall(b"HEAD /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = read_response(s, method="HEAD")
            assert head.status == 200 and head.body == b""
        wait_log(fm.access_log, lambda x: x["target"] == "/proxy.pac" and x["status"] == 200)
        # any other origin-form request is still not a proxy request
        resp = exchange(fm.port, b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert resp.status == 400


def _pac_proxy(port: int, request: bytes) -> str:
    resp = exchange(port, request)
    assert resp.status == 200, resp
    js = resp.body.decode()
    return js.split("var proxy = ", 1)[1].split(";", 1)[0].strip('"')


def test_pac_names_the_proxy_the_browser_reached(tmp_path: Path) -> None:
    """Every listener, and one on every address, names an address its clients reach: the
    one the PAC file was fetched from (not the first listener, not this machine's name)."""
    first, second = free_port(), free_port()
    listeners = [{"listen": f"127.0.0.1:{p}", "mode": "forward"} for p in (first, second)]
    with run_ferryman(tmp_path, listeners=listeners):
        wait_port(second)
        get = b"GET /proxy.pac HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
        assert _pac_proxy(second, get % b"127.0.0.1:%d" % second) == f"PROXY 127.0.0.1:{second}"
        assert _pac_proxy(first, get % b"127.0.0.1:%d" % first) == f"PROXY 127.0.0.1:{first}"
        assert _pac_proxy(first, get % b"proxy.corp.example:3128") == "PROXY proxy.corp.example:3128"
        assert _pac_proxy(first, get % b"[::1]:3128") == "PROXY [::1]:3128"
        assert _pac_proxy(first, get % b"wpad.corp.example") == "PROXY wpad.corp.example:80"
        # HTTP/1.0 without Host: the listener the config names first
        assert _pac_proxy(second, b"GET /wpad.dat HTTP/1.0\r\n\r\n") == f"PROXY 127.0.0.1:{first}"


def _loopback_name() -> tuple[str, str]:
    """A name this machine resolves to a loopback address without DNS, that the PAC file
    does not send DIRECT (so not localhost): the host name (Debian maps it in /etc/hosts)."""
    name = socket.gethostname()
    addr = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    assert ipaddress.ip_address(addr).is_loopback, f"{name} resolves to {addr}, not to loopback"
    return name, addr


def test_headless_chromium_loads_a_page_through_the_pac_file(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is in scripts/system-packages.txt"
    name, addr = _loopback_name()
    with serve(canned(HTML), host=addr) as origin, run_ferryman(tmp_path) as fm:
        url = f"http://{name}:{origin.port}/page"
        profile = tmp_path / "profile"
        profile.mkdir()
        out = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--proxy-pac-url=http://127.0.0.1:{fm.port}/proxy.pac",
                "--virtual-time-budget=5000", "--dump-dom", url,
            ],
            capture_output=True, timeout=75, env={**os.environ, "HOME": str(tmp_path)},
        )
        assert b"pac-ok-4711" in out.stdout, (out.stdout[-500:], out.stderr[-2000:])
        # the browser asked for the PAC file, then sent the page request through the proxy
        wait_log(fm.access_log, lambda x: x["target"] == "/proxy.pac" and x["status"] == 200)
        line = wait_log(fm.access_log, lambda x: x["target"] == url)
        assert line["status"] == 200 and line["upstream"] == f"{name}:{origin.port}"
        assert any(r.startswith(b"GET /page HTTP/1.1\r\n") for r in origin.requests)
