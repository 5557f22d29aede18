"""Raw-socket HTTP/1.1 pieces for the adversarial tests (tests/adversarial/).

Every wait here is bounded: a socket timeout on each ``recv`` against one
overall deadline, so a proxy that hangs fails the test instead of the suite.
Nothing here sleeps to synchronise; `wait_until` polls external state (a
file, /proc) against a deadline.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tests.helpers import procs
from tests.helpers.procs import Ferryman

# How a connection ended once the proxy was done with it.
EOF = "eof"  # recv returned b""
RESET = "reset"  # the peer closed with unread input, so the kernel sent an RST


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """sendall, but a peer that already answered and closed is not an error here."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """Read until the peer closes; fail if it has not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"connection still open after {timeout}s; got {bytes(buf[:300])!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(buf), RESET
        if not data:
            return bytes(buf), EOF
        buf += data


def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read to the end of a response head; returns (head, bytes already read past it)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no response head within {timeout}s; got {buf[:300]!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a response head; got {buf[:300]!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    rest: bytes = b""  # bytes after the first response (must be none after an error)
    ended: str = ""  # EOF / RESET when read to the end of the connection
    complete: bool = True  # the body as framed by the head was all there
    raw: bytes = b""

    def header(self, name: str) -> bytes | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    """(body, bytes after the message, complete?) for a chunked body without trailers."""
    body = b""
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return body, b"", False
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            return body, data, False
        if size == 0:
            if rest.startswith(b"\r\n"):
                return body, rest[2:], True
            end = rest.find(b"\r\n\r\n")
            return (body, rest[end + 4 :], True) if end >= 0 else (body, b"", False)
        if len(rest) < size + 2:
            return body + rest[:size], b"", False
        body += rest[:size]
        data = rest[size + 2 :]


def parse_response(raw: bytes, method: str = "GET") -> Response:
    """Parse the first response in ``raw``: status, headers, framed body, leftovers."""
    head, sep, after = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {raw[:300]!r}")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise AssertionError(f"not a status line: {lines[0][:200]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    resp = Response(int(parts[1]), parts[2] if len(parts) > 2 else b"", headers, b"", raw=raw)
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
        resp.rest = after
    elif te is not None and te.lower() == b"chunked":
        resp.body, resp.rest, resp.complete = _dechunk(after)
    elif cl is not None:
        n = int(cl)
        resp.body, resp.rest = after[:n], after[n:]
        resp.complete = len(after) >= n
    else:
        resp.body = after  # close-delimited
    return resp


def exchange(port: int, request: bytes, timeout: float = 5.0) -> Response:
    """Send ``request`` on a fresh connection and read until the proxy closes it."""
    with connect(port, timeout) as sock:
        send_quietly(sock, request)
        raw, ended = read_to_eof(sock, timeout)
    resp = parse_response(raw)
    resp.ended = ended
    return resp


def read_response(sock: socket.socket, timeout: float = 5.0, method: str = "GET") -> Response:
    """Read one response by its framing, leaving the connection open (keep-alive)."""
    head, rest = read_head(sock, timeout)
    resp = parse_response(head + rest, method)
    deadline = time.monotonic() + timeout
    delimited = resp.header("content-length") is not None or resp.header("transfer-encoding") is not None
    while not resp.complete or not (delimited or resp.status in (204, 304) or method == "HEAD"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"response body incomplete after {timeout}s: {resp.raw[:300]!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            resp.ended = EOF
            break
        rest += data
        resp = parse_response(head + rest, method)
    return resp


def get(port: int, url: str, timeout: float = 5.0) -> Response:
    """A well-formed proxy GET (absolute-form, Connection: close) on a fresh connection."""
    authority = url.split("/", 3)[2]
    req = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (url.encode(), authority.encode())
    with connect(port, timeout) as sock:
        sock.sendall(req)
        return read_response(sock, timeout)


def assert_error_and_closed(resp: Response, status: int | tuple[int, ...]) -> None:
    """A synthetic ferryman error: right status, its own plain-text body, then the close."""
    wanted = (status,) if isinstance(status, int) else status
    assert resp.status in wanted, f"status {resp.status} not in {wanted}: {resp.raw[:300]!r}"
    assert resp.body.startswith(b"ferryman: %d" % resp.status), resp.raw[:300]
    assert (resp.header("content-type") or b"").startswith(b"text/plain"), resp.raw[:300]
    assert (resp.header("connection") or b"").lower() == b"close", resp.raw[:300]
    assert resp.complete, f"error body cut short: {resp.raw[:300]!r}"
    assert resp.rest == b"", f"bytes after the error response: {resp.rest[:300]!r}"
    assert resp.ended in (EOF, RESET), "connection not closed after the error"


# -- the proxy process ---------------------------------------------------------
def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def run_ferryman_at(tmp: Path, port: int, **overrides: object) -> Iterator[Ferryman]:
    """`run_ferryman` on a port the caller chose, so that the config can name it (a loop test
    puts the proxy's own port in ``forward.connect_ports`` or ``forward.parent``).
    `run_ferryman` picks its port with `procs.free_port`; that one call is pointed at ``port``."""
    with ExitStack() as stack:
        with mock.patch.object(procs, "free_port", return_value=port):
            fm = stack.enter_context(procs.run_ferryman(tmp, **overrides))
        yield fm
