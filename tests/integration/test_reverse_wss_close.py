"""wss through a TLS listener: an end on either side reaches the other at once (issue 10,
item 3).  TLS cannot half-close, so a backend's FIN used to be swallowed and the client
waited for ``tunnel_idle``; the client's end likewise left the backend's socket open."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers.origin import Origin, serve
from tests.helpers.procs import Ferryman, run_reverse
from tests.helpers.wait import wait_for, wait_log

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class WsOrigin:
    """A minimal WebSocket origin: handshake, then per path ``/bye`` sends one text frame and
    closes its TCP connection (no close frame); ``/linger`` echoes and keeps its socket open
    after the client's end, recording that it saw EOF and when the proxy closed it."""

    raw: Origin | None = None
    saw_eof: threading.Event = field(default_factory=threading.Event)
    closed_by_proxy: threading.Event = field(default_factory=threading.Event)

    async def handle(self, _o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept)
        path = head.split(b" ", 2)[1]
        if path.endswith(b"/bye"):
            writer.write(b"\x81\x03bye")  # one unmasked text frame, then the TCP connection ends
            await writer.drain()
            writer.close()
            return
        writer.write(b"\x81\x01.")
        await writer.drain()
        if await reader.read() == b"":  # the client's end arrives as EOF (a half-close) ...
            self.saw_eof.set()
        try:  # ... but this origin keeps its side open: the proxy must close it
            while True:
                writer.write(b"\x81\x01.")
                await writer.drain()
                await asyncio.sleep(0.05)  # a slow talker, paced; not a synchronisation
        except ConnectionError:
            self.closed_by_proxy.set()
        finally:
            writer.close()


@dataclass
class Setup:
    fm: Ferryman
    origin: WsOrigin
    client_ctx: ssl.SSLContext


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("wss")
    ca = trustme.CA()
    leaf = ca.issue_cert("ws.test")
    cert, key = tmp / "ws.pem", tmp / "ws.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    origin = WsOrigin()
    with serve(origin.handle) as raw:
        origin.raw = raw
        with run_reverse(tmp, routes=[{"upstream": "ws"}], upstreams={"ws": {"servers": [{"url": raw.url}]}},
                         tls={"certificates": [{"cert": str(cert), "key": str(key)}]},
                         timeouts={"tunnel_idle": "60s", "shutdown_grace": "1s"}) as fm:
            yield Setup(fm, origin, ctx)


def _wss(s: Setup, path: str) -> ClientConnection:
    return connect(f"wss://127.0.0.1:{s.fm.port}{path}", ssl=s.client_ctx, server_hostname="ws.test",
                   proxy=None, compression=None, ping_interval=None, open_timeout=5, close_timeout=1)


def test_backend_closing_its_tcp_connection_reaches_the_wss_client(setup: Setup) -> None:
    with _wss(setup, "/ws/bye") as ws:
        assert ws.recv(timeout=5) == "bye"
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)  # tunnel_idle is 60 s: only the passed-on close ends this
        assert time.monotonic() - t0 < 2.0
    wait_log(setup.fm.access_log, lambda e: e["status"] == 101 and e["target"] == "/ws/bye")


def test_wss_client_end_closes_the_backend_connection(setup: Setup) -> None:
    with _wss(setup, "/ws/linger") as ws:
        assert ws.recv(timeout=5) == "."
        ws.socket.close()  # the client goes away without a close handshake
        t0 = time.monotonic()
    assert setup.origin.saw_eof.wait(5)
    assert setup.origin.closed_by_proxy.wait(5), "the proxy left the backend's socket open"
    assert time.monotonic() - t0 < 3.0
    wait_for(lambda: setup.fm.access_log().count('"/ws/linger"') > 0, what="tunnel logged when it closed")
