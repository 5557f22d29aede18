"""A raw-socket HTTP/1 client for integration tests, and bounded polling helpers.

`RawClient` sends exactly the bytes a test gives it and parses what comes back
strictly by RFC 9112 6.3 (no-body statuses, HEAD, chunked, Content-Length,
close-delimited), keeping the framing it saw so tests can assert on it.
Every read is bounded by the socket timeout; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


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
    body: bytes
    framing: str  # "none" | "length" | "chunked" | "close"
    interim: list[Head] = field(default_factory=list)
    raw_body: bytes = b""

    @property
    def status(self) -> int:
        return self.head.status


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_s, _, reason = rest.partition(" ")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return Head(version, int(status_s), reason, headers, raw)


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()

    # -- context management -------------------------------------------------
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- bytes ----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_until(self, sep: bytes) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if not self._fill():
                raise EOFError(f"EOF before {sep!r}; got {bytes(self.buf)[:200]!r}")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the peer closed (EOF or reset) within ``timeout`` with no more data."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)
        if data:
            self.buf += data
            return False
        return True

    # -- HTTP -----------------------------------------------------------------
    def read_head(self) -> Head:
        return parse_head(self.read_until(b"\r\n\r\n"))

    def read_response(self, method: str = "GET") -> Response:
        """Read one final response (collecting 1xx interim responses before it)."""
        interim: list[Head] = []
        while True:
            head = self.read_head()
            if 100 <= head.status < 200:
                interim.append(head)
                continue
            break
        if method == "HEAD" or head.status in (204, 304):
            return Response(head, b"", "none", interim)
        te = head.get("transfer-encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            body, raw = self._read_chunked()
            return Response(head, body, "chunked", interim, raw)
        cl = head.get("content-length")
        if cl is not None:
            body = self.read_exact(int(cl))
            return Response(head, body, "length", interim, body)
        body = self.read_to_eof()
        return Response(head, body, "close", interim, body)

    def _read_chunked(self) -> tuple[bytes, bytes]:
        body = bytearray()
        raw = bytearray()
        while True:
            line = self.read_until(b"\r\n")
            raw += line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailer section up to the empty line
                    t = self.read_until(b"\r\n")
                    raw += t
                    if t == b"\r\n":
                        return bytes(body), bytes(raw)
            data = self.read_exact(size + 2)
            assert data.endswith(b"\r\n"), data[-10:]
            raw += data
            body += data[:-2]

    def request(self, data: bytes, method: str = "GET") -> Response:
        self.send(data)
        return self.read_response(method)


def get(url: str, version: str = "1.1", headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes = b"") -> bytes:
    """Absolute-form request bytes for a forward proxy."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    hdrs = {"Host": hostport}
    if body:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    lines = [f"{method} {url} HTTP/{version}"] + [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@contextmanager
def raw_client(port: int, timeout: float = 10.0) -> Iterator[RawClient]:
    c = RawClient(port, timeout)
    try:
        yield c
    finally:
        c.close()


def curl(*args: str, stdin: bytes | None = None, timeout: float = 30.0,
         check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run curl quietly (errors still shown) with a bounded wall time."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        input=stdin, capture_output=True, timeout=timeout + 5, check=check,
    )
