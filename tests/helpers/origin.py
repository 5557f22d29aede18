"""The test origin: one recording HTTP/1 server, scripted by a handler.

`serve(handler)` runs an asyncio server on 127.0.0.x (plain, or TLS with ``ssl=``)
on its own loop in a thread, so synchronous tests (raw sockets, httpx, curl) can
use it, and yields its `Origin`.  ``handler(origin, reader, writer)`` serves each
connection.  Whatever the handler, the origin records every request head it reads
(``requests``, with the connection each came on in ``request_conns``), counts
connections (``connections``, ``closed``), and keeps the bodies `read_request`
read (``bodies``).  Named `threading.Event`s (``origin.event(name)``) let a
handler and a test wait for each other; all are set when the origin stops.

On leaving, every connection still open is aborted (ferryman keeps pooled upstream
connections open), every handler is finished and the loop's executor shut down
before the loop closes, so no transport is left for the garbage collector to warn
about under ``filterwarnings = error``.  A handler that fails other than by an I/O
error fails the test on leaving.

Ready-made behaviours: `canned` (fixed bytes), `scripted` (an answer per request
head), `answering` (an async answer per request), `echo_handler` (JSON describing
the request), `tls_http_handler`, `ScriptedOrigin` (behaviour chosen by the path,
see its table) and `Backend` (a named, stoppable origin for the reverse proxy).
`bulk_origin` is the one exception: a blocking one-connection source or sink for
bulk transfers, where an event loop would be the bottleneck.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

Handler = Callable[["Origin", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# A handler ending with one of these is a peer that went away, not a broken test.
_IO_ERRORS = (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, asyncio.CancelledError)


@dataclass
class Origin:
    port: int = 0
    host: str = "127.0.0.1"
    tls: bool = False
    requests: list[bytes] = field(default_factory=list)  # every request head, in arrival order
    request_conns: list[int] = field(default_factory=list)  # the connection (1, 2, ...) of each
    bodies: list[bytes] = field(default_factory=list)  # request bodies read by `read_request`
    connections: int = 0  # connections accepted
    closed: set[int] = field(default_factory=set)  # connections that have ended
    events: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def heads_on(self, conn: int) -> list[bytes]:
        """The request heads that came on connection ``conn``."""
        return [h for h, c in zip(list(self.requests), list(self.request_conns), strict=False) if c == conn]


class OriginServer:
    """The server behind `serve` and `Backend`: a loop in a thread; start, stop, start again
    on the same port, close."""

    def __init__(self, handler: Handler, origin: Origin, ssl_ctx: ssl.SSLContext | None = None,
                 backlog: int = 100) -> None:
        self.handler = handler
        self.origin = origin
        self.ssl_ctx = ssl_ctx
        self.backlog = backlog
        self.failures: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="origin")
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)  # type: ignore[arg-type]

    def start(self) -> None:
        self.call(self._start())

    def stop(self, graceful: bool = True) -> None:
        """Close the listening socket and every connection (flushing what was written, as a
        killed process's kernel would, unless ``graceful`` is False)."""
        self.call(self._stop(graceful))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        for ev in self.origin.events.values():
            ev.set()  # release any handler parked on an event
        try:
            self.call(self._shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    # -------------------------------------------------------------- loop side
    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._on_conn, self.origin.host, self.origin.port, ssl=self.ssl_ctx, reuse_address=True,
                backlog=self.backlog,
            )
            self.origin.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self, graceful: bool) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Stop accepting first, and let the connections already accepted get their
            # transports (one loop turn: their tasks were queued before ours), then close.
            # Closed in the same turn as an accept, asyncio fails to make the accepted socket's
            # transport and leaves the socket for the garbage collector (a ResourceWarning,
            # which fails whatever test is running then): a health check arriving as a
            # backend stops did that.
            for sock in server.sockets:
                self.loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            server.close()
        for w in list(self._writers):
            if graceful:
                w.close()
            else:
                w.transport.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # the transports' connection_lost callbacks run here

    async def _shutdown(self) -> None:
        await self._stop(graceful=False)
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.sleep(0)
        with suppress(TimeoutError):
            await asyncio.wait_for(self.loop.shutdown_default_executor(), 10)

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before `stop`: a stopped server never answers it
            writer.transport.abort()
            return
        origin = self.origin
        origin.connections += 1
        conn = origin.connections
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        readuntil = reader.readuntil

        async def recording_readuntil(separator: bytes = b"\n") -> bytes:
            data = await readuntil(separator)
            if separator == b"\r\n\r\n":
                origin.requests.append(data)
                origin.request_conns.append(conn)
            return data

        reader.readuntil = recording_readuntil  # type: ignore[method-assign]
        try:
            await self.handler(origin, reader, writer)
        except _IO_ERRORS:
            pass
        except Exception as exc:  # noqa: BLE001 - surfaced to the test on leaving
            self.failures.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()
            origin.closed.add(conn)


@contextmanager
def serve(
    handler: Handler, *, host: str = "127.0.0.1", ssl_ctx: ssl.SSLContext | None = None, backlog: int = 100
) -> Iterator[Origin]:
    """A started origin serving ``handler``; stopped, tidily, on leaving.  (``host="0.0.0.0"``
    answers on every 127.x.y.z address.)"""
    server = OriginServer(handler, Origin(host=host, tls=ssl_ctx is not None), ssl_ctx, backlog)
    try:
        server.start()
        yield server.origin
    finally:
        server.close()
    if server.failures:
        raise server.failures[0]


# -- reading and writing on the origin side --------------------------------------
async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def header_value(head: bytes, name: str) -> str | None:
    n = name.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == n:
            return v.strip().decode("latin-1")
    return None


def request_path(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode("latin-1")


def path_of(head: bytes) -> str:
    """The request target without its query."""
    return request_path(head).split("?", 1)[0]


def method_of(head: bytes) -> str:
    return head.split(b" ", 1)[0].decode("latin-1")


def count(origin: Origin, path: str, method: str | None = "GET") -> int:
    """How many requests for ``path`` (exact, query ignored) the origin has received."""
    return sum(
        1 for h in list(origin.requests) if path_of(h) == path and (method is None or method_of(h) == method)
    )


def heads_for(origin: Origin, path: str) -> list[bytes]:
    return [h for h in list(origin.requests) if path_of(h) == path]


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body after ``head``, de-chunked (trailers read and dropped)."""
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
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if cl is not None:
        return await reader.readexactly(int(cl))
    return b""


async def read_request(origin: Origin, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request head and its body, de-chunked (kept in ``origin.bodies``);
    IncompleteReadError at EOF."""
    head = await read_head(reader)
    body = await read_body(reader, head)
    origin.bodies.append(body)
    return head, body


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             reason: str = "OK") -> bytes:
    hdrs = {"Content-Length": str(len(body))}
    hdrs.update(headers or {})
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- ready-made handlers ---------------------------------------------------------
def canned(answer: bytes, close: bool = True) -> Handler:
    """Answer every request head with ``answer`` (bytes as given); close after the first
    unless ``close`` is False."""

    async def handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()
            if close:
                return

    return handler


def scripted(answer: Callable[[bytes], bytes | list[bytes]], close: bool = False) -> Handler:
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
                return

    return handler


Answer = Callable[[Origin, bytes, asyncio.StreamWriter], Awaitable[None]]


def answering(answer: Answer) -> Handler:
    """Keep-alive origin: ``await answer(origin, head, writer)`` writes each whole response."""

    async def handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(origin, reader)
            await answer(origin, head, writer)

    return handler


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
        writer.write(response(200, TLS_BODY, {"X-Path": request_path(head)}))
        await writer.drain()


# -- ScriptedOrigin: behaviour by the path's last segment ------------------------------
@dataclass
class Exchange:
    head: bytes
    body: bytes  # the body bytes exactly as received (chunk framing included)

    @property
    def target(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")


class ScriptedOrigin:
    """A recording origin whose behaviour is chosen by the request path's last segment.

    For tests that drive every end of an exchange through the reverse proxy. Each request
    is recorded in ``seen`` (head and the raw body bytes as they arrived on the wire);
    ``heads`` has each head as soon as it arrived; ``open``/``peak`` count requests being
    served at once.

    =============  ===================================================================
    segment        behaviour
    =============  ===================================================================
    ``ok``         200, body ``ok``
    ``5xx``        500, body ``boom``
    ``reset``      RST after reading the whole request
    ``hang``       never answers; waits for the proxy to close the connection
    ``stall``      a head announcing 10 bytes, 3 of them, then silence (until closed)
    ``held-K``     a chunked 200 whose body trickles a chunk every 100 ms until
                   ``release("K")``, then ends (keeps ``upstream_idle`` from firing)
    ``hold-K``     answers 200 once ``release("K")`` was called
    ``hold1-K``    as ``hold-K``, then reads the next request on that connection and closes
                   it unanswered (a pooled connection the origin dropped)
    ``upgrade``    101 Switching Protocols, then echoes every byte back
    other          200, body ``ok``
    =============  ===================================================================
    """

    def __init__(self) -> None:
        self.seen: list[Exchange] = []
        self.heads: list[bytes] = []  # every request head, as soon as it arrived (before its body)
        self.open = 0
        self.peak = 0
        self.port = 0
        self._lock = threading.Lock()
        self._released: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gates: dict[str, asyncio.Event] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self) -> list[str]:
        with self._lock:
            return [s.target for s in self.seen]

    def count(self, suffix: str) -> int:
        return sum(1 for t in self.targets() if t.endswith(suffix))

    def release(self, key: str) -> None:
        with self._lock:
            self._released.add(key)
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._gate(key).set)

    # -------------------------------------------------------------- loop side
    def _gate(self, key: str) -> asyncio.Event:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = asyncio.Event()
            with self._lock:
                if key in self._released:
                    gate.set()
        return gate

    async def _read_body(self, reader: asyncio.StreamReader, head: bytes) -> bytes:
        lower = head.lower()
        if b"\r\ncontent-length:" in lower:
            n = int(lower.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
            return await reader.readexactly(n)
        if b"\r\ntransfer-encoding: chunked" in lower:
            raw = b""
            while True:
                line = await reader.readuntil(b"\r\n")
                raw += line
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    raw += await reader.readuntil(b"\r\n")
                    return raw
                raw += await reader.readexactly(size + 2)
        return b""

    async def _until_closed(self, reader: asyncio.StreamReader, gate: asyncio.Event | None = None) -> bool:
        """Wait until the peer closes (False) or ``gate`` opens (True)."""
        eof = asyncio.ensure_future(reader.read())
        waits: set[asyncio.Future[object]] = {eof}
        if gate is not None:
            waits.add(asyncio.ensure_future(gate.wait()))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            # Let the cancelled read finish unwinding: the reader refuses a second reader.
            await asyncio.gather(*waits, return_exceptions=True)
        return eof not in done

    async def handle(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
        drop_next = False
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            with self._lock:
                self.heads.append(head)
            if drop_next:
                return
            body = await self._read_body(reader, head)
            seen = Exchange(head, body)
            with self._lock:
                self.seen.append(seen)
                self.open += 1
                self.peak = max(self.peak, self.open)
            try:
                keep = await self._answer(seen, reader, writer)
                if not keep:
                    return
                drop_next = keep == "drop-next"
            finally:
                with self._lock:
                    self.open -= 1

    async def _answer(
        self, seen: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool | str:
        """Serve one request; False when the connection is finished, "drop-next" to close it
        after reading the next request."""
        last = seen.target.split("?", 1)[0].rsplit("/", 1)[-1]
        if last == "5xx":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom")
        elif last == "reset":
            reset(writer)
            return False
        elif last == "hang":
            await self._until_closed(reader)
            return False
        elif last == "stall":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await self._until_closed(reader)
            return False
        elif last.startswith("held-"):
            gate = self._gate(last[5:])
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not gate.is_set():
                writer.write(b"1\r\n.\r\n")
                await writer.drain()
                try:
                    await asyncio.wait_for(gate.wait(), 0.1)
                except TimeoutError:
                    pass
            writer.write(b"0\r\n\r\n")
        elif last.startswith(("hold-", "hold1-")):
            if not await self._until_closed(reader, self._gate(last.split("-", 1)[1])):
                return False
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if last.startswith("hold1-"):
                await writer.drain()
                return "drop-next"
        elif last == "upgrade":
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return False
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True


@contextmanager
def scripted_origin() -> Iterator[ScriptedOrigin]:
    """A started `ScriptedOrigin`; every connection is closed at the end."""
    state = ScriptedOrigin()
    with serve(state.handle) as origin:
        state.port = origin.port
        yield state


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- Backend: a named origin for the reverse proxy ---------------------------------------
@dataclass
class Seen:
    """One request as a `Backend` received it."""

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
    """A named origin: answers every request with its own name (body and ``X-Backend``),
    records what it received (``requests``), and can be stopped and started again on the
    same port, told to reset connections after reading a request (``mode = "reset"``), or
    to hold requests under ``/slow`` until released.  ``/health`` answers 200 or 503 after
    ``healthy`` and is not recorded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Seen] = []
        self.health_checks = 0
        self.healthy = True
        self.mode = "ok"  # "ok" | "reset": RST after reading a whole request
        self._lock = threading.Lock()
        self._server = OriginServer(self._serve, Origin())
        self._release = asyncio.Event()

    @property
    def port(self) -> int:
        return self._server.origin.port

    @property
    def url(self) -> str:
        return self._server.origin.url

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> Backend:
        self._server.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection (as a killed process would)."""
        self._server.stop()

    def release(self) -> None:
        """Let held ``/slow`` requests answer (and later ones pass straight through)."""
        self._server.loop.call_soon_threadsafe(self._release.set)

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
        self._server.close()

    async def _read(self, reader: asyncio.StreamReader) -> Seen:
        head = await read_head(reader)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                n, _, v = line.partition(":")
                headers.append((n.strip(), v.strip()))
        return Seen(method, target, headers, await read_body(reader, head))

    async def _serve(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                seen = await self._read(reader)
            except ValueError:
                return
            if not self._server.running:  # stopped while the request arrived: never answered
                return
            if seen.target == "/health":
                self.health_checks += 1
                status = "200 OK" if self.healthy else "503 Service Unavailable"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                return
            with self._lock:
                self.requests.append(seen)
            if self.mode == "reset":
                reset(writer)
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

    server = ws_serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None)
    state.port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True, name="ws-echo")
    t.start()
    try:
        yield state
    finally:
        server.shutdown()
        t.join(5)


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

    def run() -> None:
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
                    want = int(header_value(head, "content-length") or 0)
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

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield bulk
    finally:
        lsock.close()
        t.join(10)
