"""A pooled upstream connection never goes back to the pool with reading paused (issue 7, item 10).

A slow client makes the relay pause reading from the upstream; when the response ends
while the pause is still on, that connection used to be parked as it was, and the next
request on it waited for `upstream_header` and got a 504.  Here 26 readers of an 8 MiB
body, each stalling near the end at another point, leave their connections in the pool
(some of them, on the old code, paused); then requests held briefly by the origin take
every one of them (in parallel, so LIFO reuse cannot hide a bad one): each must answer
at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, read_head, serve
from tests.helpers.procs import Ferryman, run_ferryman
from tests.helpers.rawhttp import connect, read_response

BIG = 8 << 20
SLOW_READERS = 26
BIG_BODY = bytes(range(256)) * (BIG // 256)
STALL = 0.15
OK = b"HTTP/1.1 200 OK\r\n"


async def _origin(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive origin: /big* is 8 MiB; /coalesce* (cacheable) and /hold* answer after 300 ms."""
    try:
        while True:
            head = await read_head(reader)
            path = head.split(b" ", 2)[1]
            small = b"fresh" if path.startswith(b"/coalesce") else b"small"
            cc = b"max-age=60" if small == b"fresh" else b"no-store"
            if path.startswith(b"/big"):
                writer.write(OK + b"Content-Length: %d\r\nCache-Control: no-store\r\n\r\n" % BIG)
                writer.write(BIG_BODY)
            elif path.startswith((b"/coalesce", b"/hold")):
                # Held a moment: the followers of a fill arrive while the leader waits, and
                # parallel requests each take their own pooled connection.
                await asyncio.sleep(0.3)
                writer.write(OK + b"Content-Length: 5\r\nCache-Control: %s\r\n\r\n%s" % (cc, small))
            else:
                writer.write(OK + b"Content-Length: 5\r\nCache-Control: no-store\r\n\r\nsmall")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass


@pytest.fixture
def origin() -> Iterator[Origin]:
    with serve(_origin) as o:
        yield o


def request(origin: Origin, path: str) -> bytes:
    return f"GET {origin.url}{path} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()


def slow_reader(port: int, req: bytes, stall_at: int, errors: list[str]) -> None:
    """Read an 8 MiB response through a small receive window, stalling with ``stall_at`` bytes to go.

    While the client stalls, the proxy fills the kernel's send buffer (several MiB on
    loopback) and then its own write buffer, and pauses reading from the upstream.  When
    the response's last bytes arrive in the read that takes the write buffer over its
    high-water mark, the response ends with reading paused: the case under test.  The
    kernel's buffer size is not known here, so each reader stalls at another point."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(20)
        s.connect(("127.0.0.1", port))
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise AssertionError(f"closed before the head: {buf[:200]!r}")
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        got = len(body)
        stalled = False
        while got < BIG:
            if not stalled and got >= BIG - stall_at:
                stalled = True
                time.sleep(STALL)
            data = s.recv(65536)
            if not data:
                raise AssertionError(f"body cut at {got} bytes")
            got += len(data)
    except Exception as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(repr(exc))
    finally:
        s.close()


def slow_readers(fm: Ferryman, origin: Origin) -> None:
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=slow_reader,
            args=(fm.port, request(origin, f"/big?{i}"), (256 << 10) + i * (192 << 10), errors),
        )
        for i in range(SLOW_READERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def parallel_gets(fm: Ferryman, origin: Origin, paths: list[str]) -> list[tuple[int, float, bytes]]:
    """Send every request at once, each on its own client connection: (status, seconds, body)."""
    socks = [connect(fm.port, timeout=10) for _ in paths]
    t0 = time.monotonic()
    try:
        for s, p in zip(socks, paths, strict=True):
            s.sendall(request(origin, p))
        out = []
        for s in socks:
            resp = read_response(s, timeout=10)
            out.append((resp.status, time.monotonic() - t0, resp.body))
        return out
    finally:
        for s in socks:
            s.close()


CONFIG = {"timeouts": {"upstream_header": "8s"}}  # a stuck connection shows as a 504 after 8 s


def test_slow_readers_leave_no_paused_connection_in_the_pool(
    tmp_path: Path, origin: Origin
) -> None:
    with run_ferryman(tmp_path, **CONFIG) as fm:
        slow_readers(fm, origin)
        slow_readers(fm, origin)  # on the first round's pooled connections
        reused_before = origin.connections
        results = parallel_gets(fm, origin, [f"/hold?{i}" for i in range(SLOW_READERS + 5)])
        assert [r[0] for r in results] == [200] * len(results), results
        assert max(r[1] for r in results) < 4.0, results
        assert all(r[2] == b"small" for r in results)
        # The later requests did run on the slow readers' pooled connections: each of them
        # the proxy kept took one (none was passed over for a new dial), and at most 5 were
        # dropped.  (How many connections the slow rounds needed depends on how their threads
        # overlapped: under heavy load a reader may start after another finished, so fewer
        # than SLOW_READERS may be pooled and the count of new dials alone says nothing.)
        pooled = [c for c in range(1, reused_before + 1) if c not in origin.closed]
        passed_over = [c for c in pooled if not any(b" /hold?" in h for h in origin.heads_on(c))]
        assert not passed_over, f"pooled connections left idle while new ones were dialled: {passed_over}"
        assert len(pooled) >= reused_before - 5, (reused_before, pooled)
        assert origin.connections - reused_before <= len(results) - len(pooled)
        assert origin.connections <= max(reused_before, SLOW_READERS + 5)


def test_coalesced_fills_on_reused_connections_are_not_stalled(
    tmp_path: Path, origin: Origin
) -> None:
    """Each leader of a coalesced cache fill takes a pooled connection; its followers wait on it.
    More URLs than idle connections, so every pooled connection leads one fill."""
    urls = [f"/coalesce?{j}" for j in range(SLOW_READERS + 4)]
    with run_ferryman(tmp_path, cache={"store": "memory"}, **CONFIG) as fm:
        slow_readers(fm, origin)
        results = parallel_gets(fm, origin, [u for u in urls for _ in range(3)])
        assert [r[0] for r in results] == [200] * len(results), results
        assert all(r[2] == b"fresh" for r in results)
        assert max(r[1] for r in results) < 4.0, results
        for u in urls:
            asked = [r for r in origin.requests if b" %s " % u.encode() in r]
            assert len(asked) == 1, f"{u}: the followers fetched for themselves"
