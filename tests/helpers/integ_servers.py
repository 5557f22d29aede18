"""Servers for integration tests: a scriptable asyncio origin (plain or TLS) that
cleans up after itself, ready-made handlers, bulk byte sources/sinks on threads,
a trustme CA, and an RSS sampler for a ferryman process.

`origin_server` differs from `origin.raw_origin` in one way that matters under
``filterwarnings = error``: on exit it aborts every connection it still holds
(ferryman keeps pooled upstream connections open) and awaits its handler
tasks, so no transport is left for the garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.helpers.procs import Ferryman

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Origin:
    port: int
    requests: list[bytes] = field(default_factory=list)  # request heads, in arrival order
    bodies: list[bytes] = field(default_factory=list)  # request bodies read by `read_request`
    connections: int = 0
    events: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())


@contextmanager
def origin_server(
    handler: Callable[[Origin, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_ctx: ssl.SSLContext | None = None,
) -> Iterator[Origin]:
    """Run ``handler(origin, reader, writer)`` for each connection on a loop in a thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    origin = Origin(port=0)
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[None]] = set()
    stop: asyncio.Event | None = None
    failure: list[BaseException] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin.connections += 1
        writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(origin, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - surfaced to the test on exit
            failure.append(exc)
        finally:
            writers.discard(writer)
            tasks.discard(task)
            writer.transport.abort()

    async def main() -> None:
        nonlocal stop
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
        origin.port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        ready.set()
        await stop.wait()
        server.close()
        for w in list(writers):
            w.transport.abort()
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def run() -> None:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if not ready.wait(5):
        raise RuntimeError("origin did not start")
    try:
        yield origin
    finally:
        for ev in origin.events.values():
            ev.set()  # release any handler parked on an event
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        t.join(10)
    if failure:
        raise failure[0]


# -- request reading on the origin side ----------------------------------------
def header_value(head: bytes, name: str) -> str | None:
    n = name.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == n:
            return v.strip().decode("latin-1")
    return None


async def read_request(origin: Origin, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request head (recorded) and its body, de-chunked; IncompleteReadError at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    origin.requests.append(head)
    body = b""
    te = header_value(head, "transfer-encoding")
    cl = header_value(head, "content-length")
    if te is not None and "chunked" in te.lower():
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif cl is not None:
        body = await reader.readexactly(int(cl))
    origin.bodies.append(body)
    return head, body


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             reason: str = "OK") -> bytes:
    hdrs = {"Content-Length": str(len(body))}
    hdrs.update(headers or {})
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- ready-made handlers ---------------------------------------------------------
async def echo_handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive origin answering each request with JSON describing what it received."""
    while True:
        head, body = await read_request(origin, reader)
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        info = {
            "line": first,
            "len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "te": header_value(head, "transfer-encoding"),
            "cl": header_value(head, "content-length"),
            "host": header_value(head, "host"),
            "conn": origin.connections,
        }
        writer.write(response(200, json.dumps(info).encode(), {"Content-Type": "application/json"}))
        await writer.drain()


def scripted(answer: Callable[[bytes], bytes | list[bytes]], close: bool = False) -> Callable[
    [Origin, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]:
    """Keep-alive origin answering each request head with ``answer(head)``; a list of
    byte strings is written piece by piece with a drain between them."""

    async def handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(origin, reader)
            out = answer(head)
            for piece in out if isinstance(out, list) else [out]:
                writer.write(piece)
                await writer.drain()
            if close:
                writer.close()
                await writer.wait_closed()
                return

    return handler


def request_path(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode("latin-1")


# -- TLS ---------------------------------------------------------------------------
@dataclass
class Tls:
    ca: trustme.CA
    ca_file: Path
    server_ctx: ssl.SSLContext

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls(tmp: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca, ca_file, ctx)


TLS_BODY = b"hello over tls\n"


async def tls_http_handler(origin: Origin, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    while True:
        head, _ = await read_request(origin, reader)
        path = request_path(head)
        writer.write(response(200, TLS_BODY, {"X-Path": path}))
        await writer.drain()


# -- bulk transfers on plain blocking sockets (no asyncio overhead, GIL released) ----
CHUNK = 1 << 20


@dataclass
class Bulk:
    port: int
    received: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


def _recv_head(conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            raise EOFError("EOF in request head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


@contextmanager
def bulk_origin(mode: str, size: int) -> Iterator[Bulk]:
    """One-connection origin: ``source`` answers with ``size`` bytes (Content-Length);
    ``sink`` reads a request body of Content-Length bytes, discarding it, and answers
    with the count it read."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(30)
    bulk = Bulk(lsock.getsockname()[1])

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
        except OSError as exc:
            bulk.errors.append(exc)
            bulk.done.set()
            return
        with conn:
            conn.settimeout(60)
            try:
                head, rest = _recv_head(conn)
                if mode == "source":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    block = memoryview(bytes(CHUNK))
                    left = size
                    while left:
                        n = min(left, CHUNK)
                        conn.sendall(block[:n])
                        left -= n
                else:
                    cl = header_value(head, "content-length")
                    want = int(cl or 0)
                    got = len(rest)
                    buf = bytearray(CHUNK)
                    while got < want:
                        n = conn.recv_into(buf)
                        if not n:
                            break
                        got += n
                    bulk.received = got
                    body = str(got).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except Exception as exc:  # noqa: BLE001 - reported to the test
                bulk.errors.append(exc)
            finally:
                bulk.done.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield bulk
    finally:
        lsock.close()
        t.join(10)


# -- memory of the ferryman process ---------------------------------------------------
class RssSampler:
    """Samples a ferryman's VmRSS on a thread every ``interval`` seconds; keeps the peak."""

    def __init__(self, fm: Ferryman, interval: float = 0.02) -> None:
        self.fm = fm
        self.interval = interval
        self.baseline = fm.rss_kib()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.fm.rss_kib())
                self.samples += 1

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024
