"""2 GiB each way through the proxy with bounded memory (flow control on both legs)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers.origin import CHUNK, bulk_origin
from tests.helpers.procs import RssSampler, run_ferryman
from tests.helpers.rawhttp import parse_head, proxy_request

SIZE = 2 << 30  # 2 GiB
MAX_GROWTH_MIB = 64


def _recv_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"EOF in response head: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


@pytest.mark.timeout(120)
def test_2gib_download_with_bounded_rss(tmp_path: Path) -> None:
    with bulk_origin("source", SIZE) as origin, run_ferryman(tmp_path) as fm, \
            socket.create_connection(("127.0.0.1", fm.port), timeout=30) as sock, RssSampler(fm) as rss:
        t0 = time.monotonic()
        sock.sendall(proxy_request(f"http://127.0.0.1:{origin.port}/big"))
        raw_head, rest = _recv_head(sock)
        head = parse_head(raw_head)
        assert head.status == 200 and head.get("content-length") == str(SIZE)
        got = len(rest)
        buf = bytearray(CHUNK)
        while got < SIZE:
            n = sock.recv_into(buf)
            assert n, f"EOF after {got} of {SIZE} bytes"
            got += n
        elapsed = time.monotonic() - t0
        assert got == SIZE
        assert origin.done.wait(10) and not origin.errors, origin.errors
    assert rss.samples > 10
    assert rss.growth_mib < MAX_GROWTH_MIB, f"RSS grew {rss.growth_mib:.1f} MiB (peak {rss.peak} KiB)"
    assert elapsed < 60, f"2 GiB download took {elapsed:.1f}s"


@pytest.mark.timeout(120)
def test_2gib_upload_with_bounded_rss(tmp_path: Path) -> None:
    with bulk_origin("sink", SIZE) as origin, run_ferryman(tmp_path) as fm, \
            socket.create_connection(("127.0.0.1", fm.port), timeout=30) as sock, RssSampler(fm) as rss:
        t0 = time.monotonic()
        sock.sendall(proxy_request(f"http://127.0.0.1:{origin.port}/big", method="POST",
                         headers={"Content-Length": str(SIZE)}))
        block = memoryview(bytes(CHUNK))
        left = SIZE
        while left:
            n = min(left, CHUNK)
            sock.sendall(block[:n])
            left -= n
        raw_head, rest = _recv_head(sock)
        head = parse_head(raw_head)
        body = rest
        while len(body) < int(head.get("content-length") or 0):
            data = sock.recv(65536)
            assert data
            body += data
        elapsed = time.monotonic() - t0
        assert head.status == 200
        assert body == str(SIZE).encode()
        assert origin.done.wait(10) and not origin.errors, origin.errors
        assert origin.received == SIZE
    assert rss.samples > 10
    assert rss.growth_mib < MAX_GROWTH_MIB, f"RSS grew {rss.growth_mib:.1f} MiB (peak {rss.peak} KiB)"
    assert elapsed < 60, f"2 GiB upload took {elapsed:.1f}s"
