"""The raw-socket HTTP/1 client of the tests, and its one response parser.

Tests send exactly the bytes they mean and read what comes back strictly by
RFC 9112 6.3 (no-body statuses, HEAD, chunked, Content-Length, close-delimited),
keeping the framing seen so they can assert on it.  One reader does all the
parsing, over a socket (`RawClient`, `read_response`, `exchange`) or over bytes
already read (`parse_response`).  Every read is bounded by one deadline per call;
nothing here sleeps to synchronise.

- `RawClient` / `raw_client(port)`: a connection kept across requests (pipelining,
  keep-alive, 1xx interim responses collected); a response cut short raises EOFError.
- `connect`, `read_response(sock)`, `exchange(port, request)`, `get(port, url)`: a
  response cut short is returned with ``complete`` False, and ``ended`` says whether
  the connection ended with a FIN (`EOF`) or an RST (`RESET`).
- `proxy_request(url, ...)`: the bytes of an absolute-form request; `curl(...)`.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# How a connection ended once the peer was done with it.
EOF = "eof"  # recv returned b""
RESET = "reset"  # the peer closed with unread input, so the kernel sent an RST


@dataclass
class Head:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def all(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Response:
    head: Head
    body: bytes = b""
    framing: str = "none"  # "none" | "length" | "chunked" | "close"
    interim: list[Head] = field(default_factory=list)
    raw_body: bytes = b""  # the body as it was on the wire (chunk framing included)
    complete: bool = True  # the body as framed by the head was all there
    rest: bytes = b""  # bytes read past this response (there must be none after an error)
    ended: str = ""  # EOF / RESET when the connection was read to its end
    raw: bytes = b""  # every byte read for it: head, body and rest

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def reason(self) -> str:
        return self.head.reason

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.head.headers

    def header(self, name: str) -> str | None:
        return self.head.get(name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_s, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not status_s.isdigit():
        raise AssertionError(f"not a status line: {lines[0][:200]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return Head(version, int(status_s), reason, headers, raw)


# -- the reader -------------------------------------------------------------------------
class _Incomplete(EOFError):
    """The bytes ended inside a response body."""


class Reader:
    """Buffered reads from a socket (or from bytes alone) against one deadline per call
    (with ``idle``, a deadline that each byte received pushes back)."""

    def __init__(self, sock: socket.socket | None = None, data: bytes = b"", idle: bool = False) -> None:
        self.sock = sock
        self.buf = bytearray(data)
        self.ended = ""
        self.taken = bytearray()  # every byte handed out since `mark`
        self.idle = idle
        self._timeout = 0.0
        self._deadline = float("inf")

    def mark(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self.taken.clear()

    def _fill(self) -> bool:
        if self.sock is None or self.ended:
            self.ended = self.ended or EOF
            return False
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"deadline passed; got {bytes(self.taken + self.buf)[:300]!r}")
        self.sock.settimeout(min(left, 3600.0))
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            self.ended = RESET
            return False
        except TimeoutError:
            raise TimeoutError(f"no more bytes in time; got {bytes(self.taken + self.buf)[:300]!r}") from None
        if not chunk:
            self.ended = EOF
            return False
        self.buf += chunk
        if self.idle:
            self._deadline = time.monotonic() + self._timeout
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.taken += out
        return out

    def read_until(self, sep: bytes) -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                return self._take(i + len(sep))
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                raise EOFError(f"EOF before {sep!r}; got {bytes(self.taken + self.buf)[:300]!r}")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                got = self._take(len(self.buf))
                raise _Incomplete(f"EOF after {len(got)} of {n} bytes", got)
        return self._take(n)

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        return self._take(len(self.buf))


def _read_chunked(r: Reader) -> tuple[bytes, bool]:
    """The de-chunked body, and whether it was all there (False when the bytes end, or stop
    being chunked, before the last chunk and the trailer section)."""
    body = bytearray()
    size = 0
    try:
        while True:
            line = r.read_until(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while r.read_until(b"\r\n") != b"\r\n":  # trailer section up to the empty line
                    pass
                return bytes(body), True
            data = r.read_exact(size + 2)
            body += data[:size]
            if data[size:] != b"\r\n":
                return bytes(body), False
    except _Incomplete as exc:
        return bytes(body + exc.args[1][:size]), False
    except (EOFError, ValueError):
        return bytes(body), False


def read_message(r: Reader, method: str = "GET", timeout: float = 5.0, interim: bool = False) -> Response:
    """Read one response by its framing (with ``interim``, the 1xx responses before a final one
    are collected in its ``interim``).  A body cut short comes back with ``complete`` False;
    EOFError before a whole head."""
    r.mark(timeout)
    heads: list[Head] = []
    while True:
        head = parse_head(r.read_until(b"\r\n\r\n"))
        if interim and 100 <= head.status < 200 and head.status != 101:
            heads.append(head)
            continue
        break
    mark = len(r.taken)
    resp = Response(head, interim=heads)
    if method == "HEAD" or head.status in (204, 304) or head.status < 200:
        pass
    elif (te := head.get("transfer-encoding")) is not None and te.lower() == "chunked":
        resp.framing = "chunked"
        resp.body, resp.complete = _read_chunked(r)
        resp.raw_body = bytes(r.taken[mark:])
    elif (cl := head.get("content-length")) is not None and cl.isdigit():
        resp.framing = "length"
        try:
            resp.body = resp.raw_body = r.read_exact(int(cl))
        except _Incomplete as exc:
            resp.body = resp.raw_body = exc.args[1]
            resp.complete = False
    else:
        resp.framing = "close"
        resp.body = resp.raw_body = r.read_to_eof()
    resp.ended = r.ended
    resp.raw = bytes(r.taken)
    return resp


# -- a connection kept across requests ---------------------------------------------------
class RawClient:
    """One connection; each read waits at most ``timeout`` for the next bytes."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = Reader(self.sock, idle=True)  # as a socket timeout: per read

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def buf(self) -> bytearray:
        return self.reader.buf

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def read_until(self, sep: bytes) -> bytes:
        self.reader.mark(self.timeout)
        return self.reader.read_until(sep)

    def read_exact(self, n: int) -> bytes:
        self.reader.mark(self.timeout)
        try:
            return self.reader.read_exact(n)
        except _Incomplete as exc:
            raise EOFError(exc.args[0]) from None

    def read_to_eof(self) -> bytes:
        self.reader.mark(self.timeout)
        return self.reader.read_to_eof()

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the peer closed (EOF or reset) within ``timeout`` with no more data."""
        if self.reader.buf:
            return False
        self.reader.mark(timeout)
        try:
            return not self.reader._fill()
        except TimeoutError:
            return False

    def read_head(self) -> Head:
        return parse_head(self.read_until(b"\r\n\r\n"))

    def read_response(self, method: str = "GET") -> Response:
        """Read one final response (collecting 1xx interim responses before it); EOFError if
        its body is cut short."""
        resp = read_message(self.reader, method, self.timeout, interim=True)
        if not resp.complete:
            raise EOFError(f"response body cut short: {resp.raw[:300]!r}")
        return resp

    def request(self, data: bytes, method: str = "GET") -> Response:
        self.send(data)
        return self.read_response(method)


@contextmanager
def raw_client(port: int, timeout: float = 10.0) -> Iterator[RawClient]:
    c = RawClient(port, timeout)
    try:
        yield c
    finally:
        c.close()


# -- one socket, one response -------------------------------------------------------------
def connect(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


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
    """Read until the peer closes: (bytes, EOF or RESET); fail if it has not within ``timeout``."""
    r = Reader(sock)
    r.mark(timeout)
    try:
        data = r.read_to_eof()
    except TimeoutError:
        raise AssertionError(f"still open after {timeout}s; got {bytes(r.taken)[:300]!r}") from None
    return data, r.ended


def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read to the end of a response head: (head, bytes already read past it)."""
    r = Reader(sock)
    r.mark(timeout)
    try:
        head = r.read_until(b"\r\n\r\n")
    except (EOFError, TimeoutError) as exc:
        raise AssertionError(f"no response head within {timeout}s: {exc}") from None
    return head, bytes(r.buf)


def parse_response(raw: bytes, method: str = "GET") -> Response:
    """The first response in ``raw`` (bytes already read): status, headers, framed body, and
    in ``rest`` whatever follows it."""
    if b"\r\n\r\n" not in raw:
        raise AssertionError(f"no complete response head in {raw[:300]!r}")
    r = Reader(data=raw)
    resp = read_message(r, method)
    resp.rest = bytes(r.buf)
    resp.raw = raw
    resp.ended = ""
    return resp


def read_response(sock: socket.socket, timeout: float = 5.0, method: str = "GET") -> Response:
    """Read one response by its framing, leaving the connection open (keep-alive); bytes read
    past it are in ``rest``."""
    r = Reader(sock)
    resp = read_message(r, method, timeout)
    resp.rest = bytes(r.buf)
    resp.raw += resp.rest
    return resp


def exchange(port: int, request: bytes, timeout: float = 5.0) -> Response:
    """Send ``request`` on a fresh connection and read until the peer closes it."""
    with connect(port, timeout) as sock:
        send_quietly(sock, request)
        raw, ended = read_to_eof(sock, timeout)
    resp = parse_response(raw)
    resp.ended = ended
    return resp


def get(port: int, url: str, timeout: float = 5.0) -> Response:
    """A well-formed proxy GET (absolute-form, Connection: close) on a fresh connection."""
    with connect(port, timeout) as sock:
        sock.sendall(proxy_request(url, headers={"Connection": "close"}))
        return read_response(sock, timeout)


def proxy_request(url: str, version: str = "1.1", headers: dict[str, str] | None = None,
                  method: str = "GET", body: bytes = b"") -> bytes:
    """Absolute-form request bytes for a forward proxy."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    hdrs = {"Host": hostport}
    if body:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    lines = [f"{method} {url} HTTP/{version}"] + [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_error_and_closed(resp: Response, status: int | tuple[int, ...]) -> None:
    """A synthetic ferryman error: right status, its own plain-text body, then the close."""
    wanted = (status,) if isinstance(status, int) else status
    assert resp.status in wanted, f"status {resp.status} not in {wanted}: {resp.raw[:300]!r}"
    assert resp.body.startswith(b"ferryman: %d" % resp.status), resp.raw[:300]
    assert (resp.header("content-type") or "").startswith("text/plain"), resp.raw[:300]
    assert (resp.header("connection") or "").lower() == "close", resp.raw[:300]
    assert resp.complete, f"error body cut short: {resp.raw[:300]!r}"
    assert resp.rest == b"", f"bytes after the error response: {resp.rest[:300]!r}"
    assert resp.ended in (EOF, RESET), "connection not closed after the error"


def curl(*args: str, stdin: bytes | None = None, timeout: float = 30.0,
         check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run curl quietly (errors still shown) with a bounded wall time."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        input=stdin, capture_output=True, timeout=timeout + 5, check=check,
    )

