"""A scriptable raw-TCP origin for edge cases nginx will not produce.

Runs its own asyncio loop in a thread so that synchronous tests (curl, httpx)
can use it.  ``handler(reader, writer)`` gets each connection; ``requests``
records every request head received (bytes), ``connections`` counts accepts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawOrigin:
    port: int
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def canned(response: bytes, close: bool = True) -> Handler:
    """Answer every request on the connection with ``response`` (bytes as given)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_head(reader)
                writer.write(response)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


@contextmanager
def raw_origin(handler: Handler, host: str = "127.0.0.1") -> Iterator[RawOrigin]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}
    origin = RawOrigin(port=0, host=host)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin.connections += 1

        class Recording(asyncio.StreamReader):
            pass

        orig_readuntil = reader.readuntil

        async def readuntil(sep: bytes = b"\n") -> bytes:
            data = await orig_readuntil(sep)
            if sep == b"\r\n\r\n":
                origin.requests.append(data)
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign]
        try:
            await handler(reader, writer)
        except Exception:  # noqa: BLE001 - a test origin must never kill its loop
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(on_conn, host, 0)
        origin.port = server.sockets[0].getsockname()[1]
        state["server"] = server
        stop = asyncio.Event()
        state["stop"] = stop
        ready.set()
        await stop.wait()
        server.close()

    def run() -> None:
        loop.run_until_complete(main())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    try:
        yield origin
    finally:
        stop = state.get("stop")
        if isinstance(stop, asyncio.Event):
            loop.call_soon_threadsafe(stop.set)
        t.join(5)
