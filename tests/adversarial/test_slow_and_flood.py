"""Slow clients, vanishing clients and floods: bounded by timeouts, nothing leaked.

The only deliberate pacing is the slowloris client's 100 ms between bytes (it
has to be slow to be a slowloris); every other wait is a bounded socket read
or a bounded poll of /proc.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, read_head, serve
from tests.helpers.procs import Ferryman, fd_count, run_ferryman
from tests.helpers.rawhttp import (
    EOF,
    assert_error_and_closed,
    connect,
    exchange,
    get,
    parse_response,
    read_response,
    read_to_eof,
    reset_close,
    send_quietly,
)
from tests.helpers.rawhttp import read_head as client_read_head
from tests.helpers.wait import wait_for, wait_log

pytestmark = pytest.mark.timeout(30)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TIMEOUTS = {"client_header": "1s", "client_idle": "1s", "client_body": "1s"}


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK, close=False)) as o:
        yield o


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    tmp: Path = tmp_path_factory.mktemp("slow")
    with run_ferryman(tmp, timeouts=TIMEOUTS) as fm:
        yield fm


def request(origin: Origin, path: str, extra: bytes = b"") -> bytes:
    return b"GET %s%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (
        origin.url.encode(), path.encode(), origin.port, extra,
    )


def assert_serving(proxy: Ferryman, origin: Origin) -> None:
    assert proxy.proc.poll() is None, f"ferryman died:\n{proxy.stderr()[-2000:]}"
    resp = get(proxy.port, f"{origin.url}/still-serving")
    assert resp.status == 200 and resp.body == b"ok"


def test_slowloris_head_gets_408_and_close(proxy: Ferryman, origin: Origin) -> None:
    head = request(origin, "/slowloris", b"User-Agent: slowloris\r\nX-Pad: " + b"a" * 40 + b"\r\n")
    t0 = time.monotonic()
    sent = 0
    with connect(proxy.port, 5) as sock:
        for i in range(len(head)):
            if not send_quietly(sock, head[i : i + 1]):
                break
            sent += 1
            # The 100 ms pace between bytes; returns early once the proxy has answered.
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
        raw, ended = read_to_eof(sock, 3)
    elapsed = time.monotonic() - t0
    assert sent < len(head), "the proxy waited for the whole slow head"
    resp = parse_response(raw)
    resp.ended = ended
    assert_error_and_closed(resp, 408)
    assert elapsed < 3.0, elapsed


def test_idle_keep_alive_connection_closed_after_client_idle(proxy: Ferryman, origin: Origin) -> None:
    with connect(proxy.port, 5) as sock:
        sock.sendall(request(origin, "/keep-alive"))
        resp = read_response(sock, 3)
        assert resp.status == 200 and (resp.header("connection") or "").lower() != "close"
        t0 = time.monotonic()
        raw, ended = read_to_eof(sock, 4)
        elapsed = time.monotonic() - t0
    assert raw == b"" and ended == EOF, raw
    assert 0.8 <= elapsed < 3.0, elapsed


def test_silent_new_connection_closed_after_client_header(proxy: Ferryman) -> None:
    """A client that connects and never sends a byte does not keep its socket."""
    t0 = time.monotonic()
    with connect(proxy.port, 5) as sock:
        raw, _ = read_to_eof(sock, 4)
    elapsed = time.monotonic() - t0
    assert raw == b"" or raw.startswith(b"HTTP/1.1 408 "), raw
    assert 0.8 <= elapsed < 3.0, elapsed


async def swallow(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An origin that reads the request and waits for the body forever (never answers)."""
    await reader.read()


def test_slow_request_body_closed_after_client_body(proxy: Ferryman) -> None:
    with serve(swallow) as sink:
        head = b"POST %s/upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 100\r\n\r\n" % (
            sink.url.encode(), sink.port,
        )
        t0 = time.monotonic()
        with connect(proxy.port, 5) as sock:
            sock.sendall(head + b"0123456789")
            raw, ended = read_to_eof(sock, 4)
        elapsed = time.monotonic() - t0
    if raw:
        resp = parse_response(raw)
        resp.ended = ended
        assert_error_and_closed(resp, 408)
    assert 0.8 <= elapsed < 3.0, elapsed


def test_client_reset_mid_response_leaves_proxy_serving(proxy: Ferryman, origin: Origin) -> None:
    """The client resets while a large body streams: the upstream leg is dropped, nothing crashes.

    The origin sends 512 KiB, waits for the reset, then keeps streaming (16 MiB declared):
    with only 1 MiB the rest can sit in socket buffers and the exchange "complete" before
    ferryman hears of the reset, which would make this test a race.
    """
    piece = 512 * 1024
    total = 16 << 20
    client_gone = threading.Event()
    upstream_released = threading.Event()
    streamed_all: list[bool] = []

    async def big(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + b"a" * piece)
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, client_gone.wait, 5)
        try:
            for _ in range(total // piece - 1):
                writer.write(b"b" * piece)
                await writer.drain()
            streamed_all.append(True)
            await reader.read()
        except ConnectionError:
            pass  # ferryman dropped the upstream connection: what we want
        upstream_released.set()

    with serve(big) as bulk:
        url = f"{bulk.url}/big"
        with connect(proxy.port, 5) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (url.encode(), bulk.port))
            head, _ = client_read_head(sock, 3)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert sock.recv(65536)  # the body is streaming
            reset_close(sock)
        client_gone.set()
        assert upstream_released.wait(5), "ferryman kept the upstream connection of a vanished client"
        assert not streamed_all, "ferryman read the whole body for a client that was gone"
    assert_serving(proxy, origin)
    line = wait_log(proxy.access_log, lambda x: x["target"] == url)
    assert line["bytes_out"] < total, line


def test_client_reset_mid_response_is_logged_as_error(proxy: Ferryman) -> None:
    client_gone = threading.Event()

    async def big(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 20) + b"a" * 65536)
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, client_gone.wait, 5)
        await reader.read()

    with serve(big) as bulk:
        url = f"{bulk.url}/aborted"
        try:
            with connect(proxy.port, 5) as sock:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (url.encode(), bulk.port))
                client_read_head(sock, 3)
                reset_close(sock)
            line = wait_log(proxy.access_log, lambda x: x["target"] == url)
        finally:
            client_gone.set()
    assert line["error"], f"an aborted transfer logged as complete: {line}"


def test_abandoned_connections_do_not_leak(proxy: Ferryman, origin: Origin) -> None:
    """200 connections: a third closed at once, a third reset, a third left open mid-head."""
    pid = proxy.proc.pid
    assert_serving(proxy, origin)  # warm: the pooled upstream connection is in the baseline
    base = fd_count(pid)
    partial = request(origin, "/abandoned")[:40]
    held = []
    for i in range(200):
        sock = connect(proxy.port, 5)
        if i % 3 == 0:
            sock.close()
        elif i % 3 == 1:
            sock.sendall(partial)
            reset_close(sock)
        else:
            sock.sendall(partial)
            held.append(sock)
    try:
        wait_for(lambda: fd_count(pid) >= base + len(held) // 2, 5, "proxy never took them")
        # The held ones are timed out (client_header 1 s) and every descriptor comes back.
        wait_for(lambda: fd_count(pid) <= base + 2, 6, lambda: repr((base, fd_count(pid))))
        for sock in held:
            raw, _ = read_to_eof(sock, 2)
            assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
    finally:
        for sock in held:
            sock.close()
    assert_serving(proxy, origin)


FLOOD_KINDS = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET http://127.0.0.1:1/ HTTP/1.1\nHost: x\n\n",
    b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
]


def test_flood_of_malformed_requests(proxy: Ferryman, origin: Origin) -> None:
    pid = proxy.proc.pid
    assert_serving(proxy, origin)
    base = fd_count(pid)

    def one(i: int) -> int:
        return exchange(proxy.port, FLOOD_KINDS[i % len(FLOOD_KINDS)], timeout=5).status

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(500)))
    assert statuses == [400] * 500, {s: statuses.count(s) for s in set(statuses)}
    wait_for(lambda: fd_count(pid) <= base + 2, 5, lambda: repr((base, fd_count(pid))))
    assert_serving(proxy, origin)
