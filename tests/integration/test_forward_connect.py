"""CONNECT tunnels: TLS through the proxy with httpx and curl, port policy, half-close,
idle timeout, and the tunnel's access-log line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.helpers.origin import TLS_BODY, Origin, Tls, serve
from tests.helpers.procs import run_ferryman
from tests.helpers.rawhttp import curl, raw_client
from tests.helpers.wait import wait_log


def connect_request(port: int, host: str = "127.0.0.1") -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


async def answer_after_eof(origin: Origin, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Reads until the client half-closes, then answers with the byte count and closes."""
    data = await reader.read()
    writer.write(b"got %d bytes" % len(data))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def echo_until_eof(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    origin.event("eof").set()


def test_httpx_https_through_tunnel(tmp_path: Path, tls: Tls, tls_origin: Origin) -> None:
    before = tls_origin.connections
    with run_ferryman(tmp_path, forward={"connect_ports": [tls_origin.port]}) as fm, \
            httpx.Client(proxy=fm.proxy, verify=tls.client_ctx(), trust_env=False, timeout=10) as client:
        r1 = client.get(f"https://localhost:{tls_origin.port}/first")
        r2 = client.get(f"https://localhost:{tls_origin.port}/second")
    assert (r1.status_code, r1.content, r1.headers["x-path"]) == (200, TLS_BODY, "/first")
    assert (r2.status_code, r2.content, r2.headers["x-path"]) == (200, TLS_BODY, "/second")
    assert tls_origin.connections - before == 1  # one tunnel carried both requests


def test_curl_https_through_tunnel(tmp_path: Path, tls: Tls, tls_origin: Origin) -> None:
    with run_ferryman(tmp_path, forward={"connect_ports": [tls_origin.port]}) as fm:
        by_name = curl("--cacert", str(tls.ca_file), "-x", fm.proxy,
                       f"https://localhost:{tls_origin.port}/by-name")
        by_ip = curl("-v", "--cacert", str(tls.ca_file), "-x", fm.proxy,
                     f"https://127.0.0.1:{tls_origin.port}/by-ip")
    assert by_name.stdout == TLS_BODY
    assert by_ip.stdout == TLS_BODY
    assert b"200 Connection established" in by_ip.stderr


def test_connect_to_port_not_in_connect_ports_is_403(tmp_path: Path, tls_origin: Origin) -> None:
    with run_ferryman(tmp_path) as fm, raw_client(fm.port) as c:  # default connect_ports: [443]
        r = c.request(connect_request(tls_origin.port))
        assert r.status == 403
        assert b"forward.connect_ports" in r.body
        assert c.at_eof(5)


def test_tunnel_half_close_still_delivers_answer(tmp_path: Path) -> None:
    payload = b"x" * 100_000
    with serve(answer_after_eof) as o, \
            run_ferryman(tmp_path, forward={"connect_ports": [o.port]}) as fm, \
            raw_client(fm.port) as c:
        c.send(connect_request(o.port))
        assert c.read_head().status == 200
        c.send(payload)
        c.shutdown_write()
        assert c.read_to_eof() == b"got 100000 bytes"


def test_tunnel_half_close_sent_with_the_connect_request(tmp_path: Path) -> None:
    """A client may write its bytes and FIN right behind CONNECT, before the 200 arrives."""
    with serve(answer_after_eof) as o, \
            run_ferryman(tmp_path, forward={"connect_ports": [o.port]}) as fm, \
            raw_client(fm.port, timeout=5) as c:
        c.send(connect_request(o.port) + b"early bytes")
        c.shutdown_write()
        head = c.read_head()
        assert head.status == 200
        assert c.read_to_eof() == b"got 11 bytes"


def test_idle_tunnel_closed_by_tunnel_idle_timeout(tmp_path: Path) -> None:
    with serve(echo_until_eof) as o, \
            run_ferryman(tmp_path, forward={"connect_ports": [o.port]},
                         timeouts={"tunnel_idle": "1s"}) as fm, \
            raw_client(fm.port) as c:
        c.send(connect_request(o.port))
        assert c.read_head().status == 200
        # traffic keeps it open past the idle timeout ...
        for i in range(5):
            if i:
                assert not c.at_eof(0.35), "tunnel closed although traffic kept it busy"
            c.send(b"ping%d" % i)
            assert c.read_exact(5) == b"ping%d" % i
        last_activity = time.monotonic()
        # ... and silence closes both legs within a few seconds
        assert c.at_eof(6), "idle tunnel was not closed"
        assert 0.7 < time.monotonic() - last_activity < 6
        assert o.event("eof").wait(5), "the upstream leg was not closed"


def test_tunnel_logged_with_byte_counts_after_close(tmp_path: Path, tls: Tls, tls_origin: Origin) -> None:
    with run_ferryman(tmp_path, forward={"connect_ports": [tls_origin.port]}) as fm:
        with httpx.Client(proxy=fm.proxy, verify=tls.client_ctx(), trust_env=False, timeout=10) as client:
            assert client.get(f"https://localhost:{tls_origin.port}/logged").content == TLS_BODY
        entry = wait_log(fm.access_log, lambda e: e["method"] == "CONNECT")
    assert entry["status"] == 200
    assert entry["target"] == f"localhost:{tls_origin.port}"
    # TLS handshake + request one way, handshake + response the other
    assert entry["bytes_in"] > 300 and entry["bytes_out"] > 300
    assert entry["upstream"].endswith(f":{tls_origin.port}")
