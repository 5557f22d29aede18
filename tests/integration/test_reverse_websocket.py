"""WebSocket through the reverse proxy: echo with the `websockets` client and server,
an open socket surviving a SIGHUP reload, and the tunnel idle timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers.origin import WsBackend, ws_echo_backend
from tests.helpers.procs import reverse_config, run_reverse, upstream
from tests.helpers.wait import wait_for


@pytest.fixture
def ws_backend() -> Iterator[WsBackend]:
    with ws_echo_backend() as b:
        yield b


def _routes() -> list[dict[str, object]]:
    return [{"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}]


def _connect(port: int, path: str = "/ws/chat", host: str | None = None) -> ClientConnection:
    headers = {"Host": host} if host else None
    return connect(f"ws://127.0.0.1:{port}{path}", proxy=None, compression=None, ping_interval=None,
                   open_timeout=5, close_timeout=2, additional_headers=headers)


def test_websocket_echo(tmp_path: Path, ws_backend: WsBackend) -> None:
    with run_reverse(tmp_path, routes=_routes(), upstreams={"ws": upstream(ws_backend.url)}) as fm:
        with _connect(fm.port) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
            ws.send(b"\x00\x01binary\xff")
            assert ws.recv(timeout=5) == b"\x00\x01binary\xff"
            big = bytes(range(256)) * 1024  # 256 KiB: several reads each way
            ws.send(big)
            assert ws.recv(timeout=5) == big
            for i in range(50):
                ws.send(f"m{i}")
            assert [ws.recv(timeout=5) for _ in range(50)] == [f"m{i}" for i in range(50)]
        path, headers = ws_backend.handshakes[-1]
        assert path == "/ws/chat"
        assert headers["upgrade"].lower() == "websocket"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["host"] == f"127.0.0.1:{fm.port}"


def test_open_websocket_survives_reload(tmp_path: Path, ws_backend: WsBackend) -> None:
    ups = {"ws": upstream(ws_backend.url)}
    with run_reverse(tmp_path, routes=_routes(), upstreams=ups) as fm, _connect(fm.port) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"

        new_route = {"name": "new", "match": {"path_exact": "/new"}, "respond": {"body": "new"}}
        new_routes = [*_routes(), new_route]
        fm.write_config(reverse_config(fm.port, fm.log_path, routes=new_routes, upstreams=ups))
        fm.reload()
        wait_for(lambda: httpx.get(f"{fm.proxy}/new", trust_env=False, timeout=5).text == "new",
             what="reloaded config serving /new")

        ws.send("after")
        assert ws.recv(timeout=5) == "after"
        with _connect(fm.port) as ws2:  # and new sockets still work on the new config
            ws2.send("fresh")
            assert ws2.recv(timeout=5) == "fresh"
        ws.send("still")
        assert ws.recv(timeout=5) == "still"


def test_tunnel_idle_timeout_closes_an_idle_websocket(tmp_path: Path, ws_backend: WsBackend) -> None:
    with run_reverse(tmp_path, routes=_routes(), upstreams={"ws": upstream(ws_backend.url)},
                     timeouts={"tunnel_idle": "500ms", "shutdown_grace": "1s"}) as fm:
        with _connect(fm.port) as ws:
            # Traffic keeps it open past the idle time (the sleeps pace messages, they sync nothing).
            t0 = time.monotonic()
            while True:
                ws.send("tick")
                assert ws.recv(timeout=5) == "tick"
                idle_from = time.monotonic()  # the last byte through the tunnel
                if idle_from - t0 > 1.0:
                    break
                time.sleep(0.15)
            # Then silence: ferryman closes the tunnel after about tunnel_idle.
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            waited = time.monotonic() - idle_from
            assert 0.4 <= waited < 2.5, waited

        def tunnels() -> list[dict[str, Any]]:
            return [e for e in map(json.loads, fm.access_log().splitlines()) if e["status"] == 101]

        entries = wait_for(tunnels, what="tunnel logged when it closed")
        assert entries[0]["target"] == "/ws/chat" and entries[0]["bytes_in"] > 0
