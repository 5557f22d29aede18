"""A backend that dies with several idle pooled connections open to it: the re-sends
on those dead sockets are not the server's failures, so a GET still reaches the other
backend.  CI once saw one 502 when a backend was killed mid-run
(`test_reverse_health.py`): each dead pooled socket counted as a retry, so after two of
them the connect refusal that followed had no retry left.

Backend ``a`` here is a raw socket server that answers its first two requests (held
until both arrived, so ferryman pools two connections to it), closes its listener, and
then closes each pooled connection when the next request comes on it, the moment a
killed process's sockets would fail."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import run_reverse, upstream


class DyingBackend:
    """Answers two concurrent requests on two connections, then goes away."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.both = threading.Barrier(2, timeout=10)
        self.answered = 0
        self.after_death = 0  # requests that came on a pooled socket after the listener closed
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        for _ in range(2):
            conn, _ = self.listener.accept()
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _read_head(conn: socket.socket) -> bytes:
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = conn.recv(65536)
            if not piece:
                return b""
            buf += piece
        return buf

    def _serve(self, conn: socket.socket) -> None:
        if not self._read_head(conn):
            return
        self.both.wait()  # two requests in flight: ferryman keeps two connections to a
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Backend: a\r\n\r\na")
        with self.lock:
            self.answered += 1
            if self.answered == 2:
                self.listener.close()  # from now on a connect is refused
        if self._read_head(conn):
            with self.lock:
                self.after_death += 1
        conn.close()  # the pooled socket fails as the request arrives

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            c.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def dying() -> Iterator[DyingBackend]:
    d = DyingBackend()
    yield d
    d.close()


@pytest.fixture
def b() -> Iterator[Backend]:
    with backends("b") as bs:
        yield bs[0]


def test_dead_pooled_sockets_do_not_use_up_the_retries(
    tmp_path: Path, dying: DyingBackend, b: Backend
) -> None:
    ups = {"web": upstream(dying.url, b.url)}  # round robin, 2 retries (the defaults)
    with run_reverse(tmp_path, routes=[{"upstream": "web"}], upstreams=ups) as fm:

        def get(path: str) -> tuple[int, str]:
            r = httpx.get(fm.proxy + path, trust_env=False, timeout=10)
            return r.status_code, r.text

        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(get, ["/1", "/2", "/3", "/4"]))  # a, b, a, b
        assert sorted(first) == [(200, "a"), (200, "a"), (200, "b"), (200, "b")]
        # Round robin is back at a, which has two idle pooled sockets and no listener.
        again = [get(f"/after/{i}") for i in range(4)]
    assert again == [(200, "b")] * 4
    assert dying.after_death >= 1  # the dead pooled sockets were really tried
