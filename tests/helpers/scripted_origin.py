"""A recording origin whose behaviour is chosen by the request path's last segment.

For tests that drive every end of an exchange through the reverse proxy with
real sockets.  Each request is recorded in ``seen`` (head and the raw body bytes
as they arrived on the wire); ``heads`` has each head as soon as it arrived;
``open``/``peak`` count requests being served at once.

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

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.helpers.origin import RawOrigin
from tests.helpers.rawhttp import tidy_origin


@dataclass
class Seen:
    head: bytes
    body: bytes  # the body bytes exactly as received (chunk framing included)

    @property
    def target(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")


class ScriptedOrigin:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
        drop_next = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                with self._lock:
                    self.heads.append(head)
                if drop_next:
                    return
                body = await self._read_body(reader, head)
                seen = Seen(head, body)
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
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool | str:
        """Serve one request; False when the connection is finished, "drop-next" to close it
        after reading the next request."""
        last = seen.target.split("?", 1)[0].rsplit("/", 1)[-1]
        if last == "5xx":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom")
        elif last == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
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
    with tidy_origin(state.handle) as raw:
        assert isinstance(raw, RawOrigin)
        state.port = raw.port
        yield state
