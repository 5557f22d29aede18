"""PROXY protocol on reverse listeners, plain and TLS, with real senders.

* The header is read in cleartext before the TLS handshake, as HAProxy's
  ``send-proxy`` / ``send-proxy-v2`` and AWS NLB send it (issue 10.2): tested with
  a real haproxy in TCP mode and with an exact byte-level client that puts the
  header and the ClientHello in one segment.
* Only ``reverse.trusted_proxies`` may connect; the check is on the TCP peer.
* Malformed headers are closed without an answer and logged with the peer
  address (issue 10.9).
* ``timeouts.tls_handshake`` bounds accept-to-handshake (issue 10.8).

The trusted balancer is 127.0.0.2: clients that must be refused connect from
127.0.0.1, the trusted ones bind 127.0.0.2 as their source.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
import yaml

from ferryman.http1 import proxy_protocol as pp
from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, free_port, run_reverse, stop_process, upstream
from tests.helpers.rawhttp import EOF, RESET, read_to_eof
from tests.helpers.wait import wait_for, wait_port

BALANCER = "127.0.0.2"


@dataclass
class Cert:
    cert: Path
    key: Path
    ca: Path

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    d = tmp_path_factory.mktemp("pp-cert")
    ca = trustme.CA()
    leaf = ca.issue_cert("site.test")
    c = Cert(d / "site.pem", d / "site.key", d / "ca.pem")
    c.cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(c.key))
    ca.cert_pem.write_to_path(str(c.ca))
    return c


@pytest.fixture(scope="module")
def app() -> Iterator[Backend]:
    with backends("app") as (b,):
        yield b


def _config(app: Backend, **extra: object) -> dict[str, object]:
    return {
        "routes": [{"name": "all", "upstream": "app"}],
        "upstreams": {"app": upstream(app.url)},
        "reverse": {"trusted_proxies": [f"{BALANCER}/32"]},
        **extra,
    }


def _tls(cert: Cert) -> dict[str, object]:
    return {"certificates": [{"cert": str(cert.cert), "key": str(cert.key)}]}


@pytest.fixture(scope="module")
def tls_pp(tmp_path_factory: pytest.TempPathFactory, cert: Cert, app: Backend) -> Iterator[Ferryman]:
    with run_reverse(tmp_path_factory.mktemp("tls-pp"), tls=_tls(cert), **_config(app)) as fm:
        _set_proxy_protocol(fm)
        yield fm


@pytest.fixture(scope="module")
def tls_quick(tmp_path_factory: pytest.TempPathFactory, cert: Cert, app: Backend) -> Iterator[Ferryman]:
    """A TLS listener without PROXY protocol and a short tls_handshake."""
    with run_reverse(tmp_path_factory.mktemp("tls-quick"), tls=_tls(cert),
                     timeouts={"tls_handshake": "1s", "shutdown_grace": "1s"}, **_config(app)) as fm:
        yield fm


@pytest.fixture(scope="module")
def plain_pp(tmp_path_factory: pytest.TempPathFactory, app: Backend) -> Iterator[Ferryman]:
    with run_reverse(tmp_path_factory.mktemp("plain-pp"), **_config(app)) as fm:
        _set_proxy_protocol(fm)
        yield fm


def _set_proxy_protocol(fm: Ferryman, tls_handshake: str | None = None) -> None:
    """Turn proxy_protocol on by reload (the listener keeps its socket: this also shows a
    reload reaches it), and wait until it applies."""
    cfg = yaml.safe_load(fm.config_path.read_text())
    cfg["listeners"][0]["proxy_protocol"] = True
    if tls_handshake is not None:
        cfg["timeouts"]["tls_handshake"] = tls_handshake
    fm.write_config(cfg)
    before = fm.stderr().count("configuration reloaded")
    fm.reload()
    wait_for(lambda: fm.stderr().count("configuration reloaded") > before, timeout=30,
             what=lambda: f"reload (ferryman's exit code: {fm.proc.poll()}):\n{fm.stderr()[-2000:]}")


def _from_balancer(port: int) -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((BALANCER, 0))
    s.connect(("127.0.0.1", port))
    return s


def _tls_request_with_header(fm: Ferryman, cert: Cert, header: bytes, path: str = "/") -> bytes:
    """Header and ClientHello in ONE send (as a kernel may coalesce them), then a request over TLS."""
    raw = _from_balancer(fm.port)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = cert.client_ctx().wrap_bio(inc, out, server_hostname="site.test")
    first = True
    deadline = time.monotonic() + 5
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            raw.sendall(header + data if first else data)
            first = False
            got = raw.recv(65536)
            assert got, "closed during the handshake"
            inc.write(got)
        assert time.monotonic() < deadline
    tls.write(f"GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n".encode())
    raw.sendall(out.read())
    resp = b""
    while True:
        try:
            chunk = tls.read(65536)
            if not chunk:
                break
            resp += chunk
        except ssl.SSLWantReadError:
            got = raw.recv(65536)
            if not got:
                break
            inc.write(got)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    raw.close()
    return resp


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tls_listener_reads_the_header_before_the_handshake(
    tls_pp: Ferryman, cert: Cert, app: Backend, version: str
) -> None:
    src, dst = ("203.0.113.9", 40001), ("127.0.0.1", tls_pp.port)
    header = pp.build_v1(src, dst) if version == "v1" else pp.build_v2(src, dst)
    resp = _tls_request_with_header(tls_pp, cert, header, f"/exact-{version}")
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    seen = app.last()
    assert seen.target == f"/exact-{version}"
    assert seen.header("x-forwarded-for") == "203.0.113.9"
    assert seen.header("x-forwarded-proto") == "https"




def test_tls_pp_listener_refuses_tls_without_a_header(
    tls_pp: Ferryman, cert: Cert
) -> None:
    """A trusted peer that skips the header and starts TLS is refused, not half-served."""
    raw = _from_balancer(tls_pp.port)
    with pytest.raises((ssl.SSLError, OSError)):
        tls = cert.client_ctx().wrap_socket(raw, server_hostname="site.test")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        if not tls.recv(100):
            raise ConnectionResetError("closed")
    raw.close()
    wait_for(lambda: "rejected PROXY header from 127.0.0.2:" in tls_pp.stderr(), what="log line")


def test_tls_pp_listener_refuses_an_untrusted_peer_at_accept(tls_pp: Ferryman, app: Backend) -> None:
    before = app.count()
    s = socket.create_connection(("127.0.0.1", tls_pp.port), timeout=5)  # from 127.0.0.1: untrusted
    s.sendall(pp.build_v1(("198.51.100.1", 1), ("127.0.0.1", tls_pp.port)))
    data, ended = read_to_eof(s, 3)
    assert data == b"" and ended in (EOF, RESET)
    s.close()
    assert app.count() == before


def test_tls_handshake_timeout_covers_a_silent_balancer(tmp_path: Path, cert: Cert, app: Backend) -> None:
    """A trusted peer that never completes the PROXY header is closed after tls_handshake."""
    cfg = _config(app, timeouts={"tls_handshake": "1s", "shutdown_grace": "1s"})
    with run_reverse(tmp_path, tls=_tls(cert), **cfg) as fm:
        _set_proxy_protocol(fm)
        s = _from_balancer(fm.port)
        s.sendall(b"PROXY TCP4 ")
        t0 = time.monotonic()
        data, _ = read_to_eof(s, 5)  # 60 s before the fix
        assert data == b"" and time.monotonic() - t0 < 4
        s.close()


def test_tls_handshake_timeout_is_its_own_setting(tls_quick: Ferryman) -> None:
    """Issue 10.8: a client that connects and never says hello is closed after tls_handshake."""
    s = socket.create_connection(("127.0.0.1", tls_quick.port), timeout=5)
    t0 = time.monotonic()
    data, _ = read_to_eof(s, 5)
    assert data == b"" and time.monotonic() - t0 < 4
    s.close()


def test_tls_without_proxy_protocol_still_serves(tls_quick: Ferryman, cert: Cert, app: Backend) -> None:
    with socket.create_connection(("127.0.0.1", tls_quick.port), timeout=5) as raw:
        with cert.client_ctx().wrap_socket(raw, server_hostname="site.test") as tls:
            tls.sendall(b"GET /plain-tls HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            resp = b""
            while chunk := tls.recv(65536):
                resp += chunk
    assert resp.startswith(b"HTTP/1.1 200")
    assert app.last().header("x-forwarded-for") == "127.0.0.1"


# ------------------------------------------------------------------ haproxy


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory, tls_pp: Ferryman) -> Iterator[dict[str, int]]:
    """haproxy in TCP mode in front of the TLS listener: one frontend per PROXY version."""
    d = tmp_path_factory.mktemp("haproxy")
    ports = {"v1": free_port(), "v2": free_port()}
    cfg = d / "haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
        + "".join(
            f"frontend fe_{v}\n  bind 127.0.0.1:{port}\n  default_backend be_{v}\n"
            f"backend be_{v}\n  server fm 127.0.0.1:{tls_pp.port} "
            f"{'send-proxy' if v == 'v1' else 'send-proxy-v2'} source {BALANCER}\n"
            for v, port in ports.items()
        )
    )
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for port in ports.values():
            wait_port(port, proc)
        yield ports
    finally:
        stop_process(proc)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_send_proxy_in_front_of_a_tls_listener(
    haproxy: dict[str, int], tls_pp: Ferryman, cert: Cert, app: Backend, version: str
) -> None:
    raw = socket.socket()
    raw.settimeout(5)
    raw.bind(("127.0.0.3", 0))  # the real client, as haproxy sees it
    raw.connect(("127.0.0.1", haproxy[version]))
    with cert.client_ctx().wrap_socket(raw, server_hostname="site.test") as tls:
        tls.sendall(f"GET /haproxy-{version} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"
                    .encode())
        resp = b""
        while chunk := tls.recv(65536):
            resp += chunk
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    seen = app.last()
    assert seen.target == f"/haproxy-{version}"
    assert seen.header("x-forwarded-for") == "127.0.0.3"  # not the balancer's 127.0.0.2
    wait_for(lambda: f"/haproxy-{version}" in tls_pp.access_log(), what="access log line")
    line = [ln for ln in tls_pp.access_log().splitlines() if f"/haproxy-{version}" in ln][-1]
    assert "127.0.0.3" in line


# ------------------------------------------------------------------ strictness (10.9)

BAD_HEADERS = {
    "v2-command-0xF": pp.V2_SIG + b"\x2f\x11\x00\x0c" + bytes(12),
    "v2-tcp4-block-of-4": pp.V2_SIG + b"\x21\x11\x00\x04" + bytes(4),
    "v2-family-0x99": pp.V2_SIG + b"\x21\x99\x00\x0c" + bytes(12),
    "v1-dst-notanip": b"PROXY TCP4 192.0.2.1 notanip 1000 80\r\n",
    "v1-port-plus": b"PROXY TCP4 192.0.2.1 192.0.2.2 +12 80\r\n",
    "v1-port-underscore": b"PROXY TCP4 192.0.2.1 192.0.2.2 1_0 80\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_malformed_proxy_header_is_closed_and_logged(plain_pp: Ferryman, app: Backend, name: str) -> None:
    before = app.count()
    s = _from_balancer(plain_pp.port)
    s.sendall(BAD_HEADERS[name] + b"GET /after-bad-header HTTP/1.1\r\nHost: x\r\n\r\n")
    data, ended = read_to_eof(s, 5)
    s.close()
    assert data == b"" and ended in (EOF, RESET)
    assert app.count() == before
    wait_for(lambda: "rejected PROXY header from 127.0.0.2:" in plain_pp.stderr(), what="log line")


def test_plain_listener_takes_a_good_header_split_across_sends(plain_pp: Ferryman, app: Backend) -> None:
    s = _from_balancer(plain_pp.port)
    header = pp.build_v1(("192.0.2.44", 5000), ("127.0.0.1", plain_pp.port))
    for part in (header[:7], header[7:20], header[20:] + b"GET /split HTTP/1.1\r\nHost: x\r\n"):
        s.sendall(part)
    s.sendall(b"Connection: close\r\n\r\n")
    data, _ = read_to_eof(s, 5)
    s.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert app.last().header("x-forwarded-for") == "192.0.2.44"


def test_reload_changes_the_tls_handshake_timeout_on_the_same_socket(
    tmp_path: Path, cert: Cert, app: Backend
) -> None:
    with run_reverse(tmp_path, tls=_tls(cert), **_config(app)) as fm:  # default: 10 s
        cfg = yaml.safe_load(fm.config_path.read_text())
        cfg["timeouts"]["tls_handshake"] = "1s"
        fm.write_config(cfg)
        fm.reload()
        wait_for(lambda: "configuration reloaded" in fm.stderr(), timeout=30, what="reload")
        # the new server is built a moment after the reload line: wait for its first connection
        s = wait_for(lambda: _silent_closed_within(fm.port, 4.0), timeout=15, what="1 s handshake timeout")
        assert s
        with socket.create_connection(("127.0.0.1", fm.port), timeout=5) as raw:  # still serving
            with cert.client_ctx().wrap_socket(raw, server_hostname="site.test") as tls:
                tls.sendall(b"GET /after-reload HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200")


def _silent_closed_within(port: int, limit: float) -> bool:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    try:
        data, _ = read_to_eof(s, limit + 1)
    except AssertionError:
        return False
    finally:
        s.close()
    return data == b"" and time.monotonic() - t0 < limit
