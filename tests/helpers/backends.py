"""Backends for reverse-proxy tests, and a ferryman started as a reverse proxy.

`Backend` is a small HTTP/1.1 server on its own asyncio loop in a thread, so
synchronous tests (httpx, curl) can use it.  It answers every request with its
own name (body and ``X-Backend``), records what it received, and can be
stopped and started again on the same port, told to reset connections after
reading a request, or to hold requests under ``/slow`` until released.
``/health`` answers 200 or 503 after ``healthy`` and is not recorded.

`ws_echo_backend` is a `websockets` echo server; `run_reverse` starts
``ferryman run -c FILE`` with one reverse listener; waits are
`tests.helpers.wait.wait_for`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from tests.helpers.procs import REPO, Ferryman, free_port
from tests.helpers.wait import wait_port

T = TypeVar("T")


@dataclass
class Seen:
    """One request as the backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for n, _ in self.headers if n.lower() == name.lower())


class Backend:
    """A named HTTP/1.1 origin on 127.0.0.1 (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.requests: list[Seen] = []
        self.health_checks = 0
        self.healthy = True
        self.mode = "ok"  # "ok" | "reset": RST after reading a whole request
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"backend-{name}")
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._release = asyncio.Event()

    # -------------------------------------------------------------- control
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> Backend:
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection (as a killed process would)."""
        self._call(self._stop())

    def release(self) -> None:
        """Let held ``/slow`` requests answer (and later ones pass straight through)."""
        self._loop.call_soon_threadsafe(self._release.set)

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r.method == method)

    def last(self) -> Seen:
        with self._lock:
            return self.requests[-1]

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    # -------------------------------------------------------------- loop side
    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._stop()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_request(self, reader: asyncio.StreamReader) -> Seen:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                n, _, v = line.partition(":")
                headers.append((n.strip(), v.strip()))
        seen = Seen(method, target, headers, b"")
        length = seen.header("content-length")
        if length is not None:
            seen.body = await reader.readexactly(int(length))
        elif (seen.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from ferryman
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            seen.body = b"".join(parts)
        return seen

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    seen = await self._read_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
                    return
                if seen.target == "/health":
                    self.health_checks += 1
                    status = "200 OK" if self.healthy else "503 Service Unavailable"
                    head = f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    writer.write(head.encode())
                    await writer.drain()
                    return
                with self._lock:
                    self.requests.append(seen)
                if self.mode == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if seen.target.startswith("/slow"):
                    await self._release.wait()
                body = self.name.encode()
                close = (seen.header("connection") or "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: %s\r\n"
                    b"Content-Length: %d\r\n%s\r\n%s"
                    % (body, len(body), b"Connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@contextmanager
def backends(*names: str) -> Iterator[list[Backend]]:
    """Started backends, closed afterwards."""
    with ExitStack() as stack:
        out = []
        for name in names:
            b = Backend(name)
            stack.callback(b.close)
            out.append(b.start())
        yield out


@dataclass
class WsBackend:
    port: int
    handshakes: list[tuple[str, dict[str, str]]]  # (path, lower-cased headers) per connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def ws_echo_backend() -> Iterator[WsBackend]:
    """A `websockets` server that echoes every message back unchanged."""
    state = WsBackend(0, [])

    def echo(ws: ServerConnection) -> None:
        req = ws.request
        if req is not None:
            state.handshakes.append((req.path, {k.lower(): v for k, v in req.headers.raw_items()}))
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass

    server = serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None)
    state.port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True, name="ws-echo")
    t.start()
    try:
        yield state
    finally:
        server.shutdown()
        t.join(5)


# ------------------------------------------------------------------ ferryman


def child_env() -> dict[str, str]:
    """The environment for ferryman children: this checkout's ``src`` first on the path
    (a relative PYTHONPATH would not survive the children's ``cwd``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def ferryman_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferryman", *args]


def upstream(*urls: str, **extra: Any) -> dict[str, Any]:
    """An upstream block: ``upstream(a.url, b.url, balance="least_conn")``."""
    return {"servers": [{"url": u} for u in urls], **extra}


def reverse_config(port: int, log_path: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "reverse"}],
        "access_log": {"path": str(log_path), "format": "json"},
        "timeouts": {"shutdown_grace": "1s"},
    }
    if "tls" in overrides:
        cfg["listeners"][0]["tls"] = overrides.pop("tls")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@contextmanager
def run_reverse(tmp: Path, **overrides: Any) -> Iterator[Ferryman]:
    """`ferryman run -c FILE` with one reverse listener (``tls=`` sets its TLS block).

    Give ``routes=`` and ``upstreams=``; other keys override the file's top level.
    ``Ferryman.write_config(reverse_config(fm.port, fm.log_path, ...))`` plus
    ``fm.reload()`` changes it later.
    """
    port = free_port()
    log_path = tmp / "access.log"
    cfg_path = tmp / "ferryman.yaml"
    cfg_path.write_text(yaml.safe_dump(reverse_config(port, log_path, **overrides)))
    stderr_path = tmp / "ferryman.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            ferryman_cmd("run", "-c", str(cfg_path)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp,
            env=child_env(),
        )
    fm = Ferryman(proc, port, cfg_path, log_path, stderr_path)
    try:
        try:
            wait_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; stderr:\n{fm.stderr()}") from None
        yield fm
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ferryman_check(tmp: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``ferryman check -c FILE`` on ``cfg``; the completed process (text mode)."""
    path = tmp / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        ferryman_cmd("check", "-c", str(path)),
        capture_output=True, text=True, timeout=30, cwd=tmp, check=False, env=child_env(),
    )
