"""Broken, truncated, silent and vanishing upstreams, seen by a raw-socket client.

An invalid response is never relayed: the client gets ferryman's own 502 with a
plain-text body naming the cause.  A body cut short after the head went out is
never passed off as complete: the client connection is closed early.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Handler, Origin, canned, read_head, serve
from tests.helpers.procs import Ferryman, free_port, run_ferryman
from tests.helpers.rawhttp import (
    assert_error_and_closed,
    connect,
    exchange,
    get,
    parse_response,
    read_response,
    read_to_eof,
)
from tests.helpers.rawhttp import read_head as client_read_head
from tests.helpers.wait import wait_log

pytestmark = pytest.mark.timeout(30)

MARK = b"XYZZY"  # in every bad response; must never reach the client
OK_KEEPALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    tmp: Path = tmp_path_factory.mktemp("bad-upstream")
    with run_ferryman(tmp, timeouts={"upstream_header": "1s", "upstream_idle": "1s"}) as fm:
        yield fm


def request_bytes(url: str, close: bool = False) -> bytes:
    authority = url.split("/", 3)[2]
    extra = b"Connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (url.encode(), authority.encode(), extra)


# -- origin behaviours ----------------------------------------------------------
def close_after_head() -> Handler:
    async def handler(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.close()

    return handler


def reset_after_head() -> Handler:
    async def handler(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handler


def answer_then_hold(response: bytes) -> Handler:
    """Send ``response`` (maybe nothing) and keep the connection open until the proxy drops it."""

    async def handler(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        if response:
            writer.write(response)
            await writer.drain()
        await reader.read()  # returns once the proxy closes its side
        writer.close()

    return handler


BIG_HEADER = b"X-Big: " + MARK + b"a" * (33 * 1024) + b"\r\n"
INVALID = [
    pytest.param(canned(MARK + b" garbage\r\n\r\n"), "invalid response", id="garbage-status-line"),
    pytest.param(canned(MARK), "invalid response", id="garbage-no-head"),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" + MARK + b"!"),
        "content-length", id="conflicting-content-length",
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nContent-Length: " + MARK + b"\r\n\r\n" + MARK),
        "content-length", id="content-length-not-a-number",
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
               + MARK + b"\r\n0\r\n\r\n"),
        "transfer-encoding", id="cl-and-te",
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\n" + BIG_HEADER + b"Content-Length: 5\r\n\r\n" + MARK),
        "too large", id="headers-over-32k",
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + MARK), "transfer coding", id="te-gzip"
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n" + MARK + b"\r\n0\r\n\r\n"),
        "transfer coding", id="te-gzip-chunked",
    ),
    pytest.param(
        canned(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
               + MARK),
        "switched protocols", id="101-unasked",
    ),
    pytest.param(
        canned(b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\n" + MARK), "version", id="http2-status-line"
    ),
    pytest.param(
        canned(b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\n" + MARK), "status", id="status-code-4-digits"
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\nContent-Length: 5\n\n" + MARK), "invalid response", id="bare-lf"
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nX-A: a\x00" + MARK + b"\r\nContent-Length: 5\r\n\r\n" + MARK),
        "header value", id="nul-in-header",
    ),
    pytest.param(
        canned(b"HTTP/1.1 200 OK\r\nX-A: a\r\n " + MARK + b"\r\nContent-Length: 5\r\n\r\n" + MARK),
        "invalid response", id="obs-fold",
    ),
    pytest.param(close_after_head(), "closed", id="closes-without-answer"),
    pytest.param(reset_after_head(), "closed", id="resets-before-answer"),
]


@pytest.mark.parametrize(("handler", "cause"), INVALID)
def test_invalid_upstream_response_gives_502(proxy: Ferryman, handler: Handler, cause: str) -> None:
    with serve(handler) as origin:
        url = f"{origin.url}/bad"
        resp = exchange(proxy.port, request_bytes(url), timeout=3)
    assert_error_and_closed(resp, 502)
    assert cause in resp.text.lower(), resp.text
    assert MARK not in resp.raw, "bytes of the invalid response were relayed"
    line = wait_log(proxy.access_log, lambda x: x["target"] == url)
    assert line["status"] == 502 and line["error"], line


def test_invalid_chunk_size_from_upstream_is_never_relayed(proxy: Ferryman) -> None:
    """The head is relayed before the body is parsed, so the client sees a cut, never the garbage.

    (A 502 is impossible once the head has gone out; the client must then see the
    chunked body end without its last chunk.)
    """
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz%s\r\n%s\r\n0\r\n\r\n" % (MARK, MARK)
    with serve(canned(bad)) as origin:
        url = f"{origin.url}/bad-chunk"
        with connect(proxy.port, 3) as sock:
            sock.sendall(request_bytes(url))
            raw, _ = read_to_eof(sock, 3)
    resp = parse_response(raw)
    assert MARK not in raw and b"zz" not in raw, raw
    if resp.status == 502:
        assert resp.body.startswith(b"ferryman: 502"), raw
    else:
        assert resp.status == 200 and resp.header("transfer-encoding") == "chunked", raw
        assert not resp.complete, f"a broken body was passed off as complete: {raw!r}"
    line = wait_log(proxy.access_log, lambda x: x["target"] == url)
    assert line["error"], line


# -- bodies cut short -------------------------------------------------------------
CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
TRUNCATED = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", id="content-length"),
    pytest.param(CHUNKED_200 + b"5\r\nhello\r\n", id="chunked-no-last-chunk"),
    pytest.param(CHUNKED_200 + b"5\r\nhel", id="chunked-mid-chunk"),
]


@pytest.mark.parametrize("response", TRUNCATED)
def test_truncated_body_closes_client_before_completion(proxy: Ferryman, response: bytes) -> None:
    with serve(canned(response)) as origin:
        url = f"{origin.url}/cut"
        with connect(proxy.port, 3) as sock:
            sock.sendall(request_bytes(url))
            raw, _ = read_to_eof(sock, 3)  # the proxy closes (bounded wait), no hanging on
    resp = parse_response(raw)
    assert resp.status == 200
    assert not resp.complete, f"a truncated body was passed off as complete: {raw!r}"
    line = wait_log(proxy.access_log, lambda x: x["target"] == url)
    assert line["status"] == 200 and "middle of the body" in line["error"], line


@pytest.mark.parametrize("response", TRUNCATED)
def test_truncated_body_is_an_error_for_curl(proxy: Ferryman, response: bytes) -> None:
    with serve(canned(response)) as origin:
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "--max-time", "5", "-x", proxy.proxy, f"{origin.url}/curl"],
            capture_output=True, timeout=10,
        )
    assert out.returncode == 18, (out.returncode, out.stderr)  # CURLE_PARTIAL_FILE


# -- unreachable, silent, stalling -------------------------------------------------
def test_connection_refused_gives_502(proxy: Ferryman) -> None:
    port = free_port()  # nothing listens there
    resp = exchange(proxy.port, request_bytes(f"http://127.0.0.1:{port}/"), timeout=3)
    assert_error_and_closed(resp, 502)
    assert "connect" in resp.text.lower() and str(port) in resp.text, resp.text


def test_dns_failure_gives_502_naming_dns(proxy: Ferryman) -> None:
    resp = exchange(proxy.port, request_bytes("http://nonexistent.invalid/"), timeout=5)
    assert_error_and_closed(resp, 502)
    assert "dns" in resp.text.lower() and "nonexistent.invalid" in resp.text, resp.text


def test_upstream_that_never_answers_gives_504(proxy: Ferryman) -> None:
    with serve(answer_then_hold(b"")) as origin:
        t0 = time.monotonic()
        resp = exchange(proxy.port, request_bytes(f"{origin.url}/silent"), timeout=5)
        elapsed = time.monotonic() - t0
    assert_error_and_closed(resp, 504)
    assert 0.8 <= elapsed < 3.0, elapsed


def test_upstream_stalling_mid_body_closes_client(proxy: Ferryman) -> None:
    stall = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"
    with serve(answer_then_hold(stall)) as origin:
        url = f"{origin.url}/stall"
        with connect(proxy.port, 5) as sock:
            sock.sendall(request_bytes(url))
            head, rest = client_read_head(sock, 3)
            t0 = time.monotonic()
            tail, _ = read_to_eof(sock, 5)
            elapsed = time.monotonic() - t0
    resp = parse_response(head + rest + tail)
    assert resp.status == 200 and not resp.complete
    assert elapsed < 3.0, elapsed
    line = wait_log(proxy.access_log, lambda x: x["target"] == url)
    assert line["error"], line


# -- pooled connections the origin dropped -------------------------------------------
def first_conn_then(first: Handler) -> Handler:
    """Connection 1 runs ``first``; later ones answer every request with keep-alive."""
    counter = itertools.count()
    later = canned(OK_KEEPALIVE, close=False)

    async def handler(o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await (first if next(counter) == 0 else later)(o, reader, writer)

    return handler


def test_pooled_connection_closed_while_idle_is_not_reused(proxy: Ferryman) -> None:
    first_done = threading.Event()
    origin_closed = threading.Event()

    async def answer_once_then_close(
        _o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_head(reader)
        writer.write(OK_KEEPALIVE)
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, first_done.wait, 5)
        writer.close()
        await writer.wait_closed()
        origin_closed.set()

    with serve(first_conn_then(answer_once_then_close)) as origin:
        one = get(proxy.port, f"{origin.url}/one")
        assert one.status == 200 and one.body == b"ok"
        first_done.set()
        assert origin_closed.wait(5)
        two = get(proxy.port, f"{origin.url}/two")
        assert two.status == 200 and two.body == b"ok", two.raw
        assert origin.connections == 2


def test_pooled_connection_closed_on_reuse_is_retried(proxy: Ferryman) -> None:
    """The origin reads the second request on the pooled connection and hangs up unanswered."""

    async def answer_once_then_drop(
        _o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_head(reader)
        writer.write(OK_KEEPALIVE)
        await writer.drain()
        await read_head(reader)
        writer.close()

    with serve(first_conn_then(answer_once_then_drop)) as origin:
        assert get(proxy.port, f"{origin.url}/one").status == 200
        two = get(proxy.port, f"{origin.url}/two")
        assert two.status == 200 and two.body == b"ok", two.raw
        assert origin.connections == 2
        assert [r.split(b" ")[1] for r in origin.requests] == [b"/one", b"/two", b"/two"]


def test_request_with_body_on_dropped_pooled_connection_is_not_replayed(proxy: Ferryman) -> None:
    """A POST whose body went out on a connection that died is not sent again: 502."""

    async def answer_once_then_drop(
        _o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_head(reader)
        writer.write(OK_KEEPALIVE)
        await writer.drain()
        await read_head(reader)
        writer.close()

    with serve(first_conn_then(answer_once_then_drop)) as origin:
        assert get(proxy.port, f"{origin.url}/one").status == 200
        authority = f"127.0.0.1:{origin.port}".encode()
        post = b"POST %s/post HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n\r\nhello" % (
            origin.url.encode(), authority,
        )
        resp = exchange(proxy.port, post, timeout=3)
        assert_error_and_closed(resp, 502)
        assert origin.connections == 1


# -- bytes an upstream sends after a complete response ----------------------------------
def extra_after_first(first: bytes) -> Handler:
    """Answer ``/first`` with ``first`` (a response plus whatever follows it in the same write),
    anything else with a proper response naming the connection it came on."""
    conn_ids = itertools.count()

    async def handler(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = next(conn_ids)
        try:
            while True:
                head = await read_head(reader)
                if b" /first " in head:
                    writer.write(first)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nREAL-%d" % n)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    return handler


OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EXTRA = [
    pytest.param(OK_2 + MARK, id="garbage"),
    pytest.param(OK_2 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + MARK, id="whole-response"),
    pytest.param(
        OK_2 + b"HTTP/1.1 200 OK\r\nX-Mark: " + MARK + b"\r\nContent-Length: 40\r\n\r\n",
        id="response-head-only",
    ),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n" + MARK, id="body-after-204"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n" + MARK, id="body-after-304"),
]


@pytest.mark.parametrize("first", EXTRA)
def test_unsolicited_bytes_after_response_are_never_forwarded(proxy: Ferryman, first: bytes) -> None:
    """RFC 9112 6.3: extra data after a response must not be forwarded as (part of) another response."""
    with serve(extra_after_first(first)) as origin:
        one = get(proxy.port, f"{origin.url}/first")
        assert one.status in (200, 204, 304)
        with connect(proxy.port, 3) as sock:
            sock.sendall(request_bytes(f"{origin.url}/second", close=True))
            raw, _ = read_to_eof(sock, 3)
    assert MARK not in raw, raw
    resp = parse_response(raw)
    assert resp.status == 200 and resp.body.startswith(b"REAL-"), raw
    assert resp.header("via") is not None, f"raw upstream bytes relayed: {raw!r}"
    assert resp.rest == b"", raw


def test_head_response_with_body_does_not_desync(proxy: Ferryman) -> None:
    """A HEAD answered with a body: the body is dropped with the connection, never read as the
    next response, and the client's next request on the same connection gets its own answer."""
    with serve(extra_after_first(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + MARK)) as origin:
        with connect(proxy.port, 3) as sock:
            sock.sendall(b"HEAD %s/first HTTP/1.1\r\nHost: x\r\n\r\n" % origin.url.encode())
            head = read_response(sock, 3, method="HEAD")
            assert head.status == 200 and head.header("content-length") == "5" and head.rest == b""
            sock.sendall(request_bytes(f"{origin.url}/second", close=True))
            raw, _ = read_to_eof(sock, 3)
    assert MARK not in raw, raw
    resp = parse_response(raw)
    assert resp.status == 200 and resp.body.startswith(b"REAL-") and resp.rest == b"", raw
