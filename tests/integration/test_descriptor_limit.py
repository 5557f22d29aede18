"""A forward proxy visiting many sites never runs out of file descriptors (issue 7, item 6).

ferryman runs with a descriptor limit of 1,024 that it cannot raise (hard = soft), and one
client asks for 5,000 distinct origins in a row: each is another 127.x.y.z address of one
loopback server, so every request dials a new upstream connection that the pool would like
to keep.  The total idle cap (derived from the limit) evicts the least recently used ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.origin import Origin, serve
from tests.helpers.procs import free_port, run_config
from tests.helpers.rawhttp import connect, read_response
from tests.helpers.wait import wait_for, wait_text

ORIGINS = 5000


@contextmanager
def many_host_origin() -> Iterator[int]:
    """One keep-alive HTTP server answering on every 127.x.y.z address (bound to the wildcard
    address; anything not from loopback is closed at once)."""

    async def on_conn(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not ipaddress.ip_address(peer[0]).is_loopback:
            return
        local = writer.get_extra_info("sockname")[0].encode()
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(local), local))
            await writer.drain()

    with serve(on_conn, host="0.0.0.0", backlog=1024) as origin:
        yield origin.port


@contextmanager
def ferryman_with_limit(
    tmp: Path, soft: int, hard: int, **cfg: object
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    conf: dict[str, object] = {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "forward"}],
        "access_log": {"enabled": False},
        **cfg,
    }

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with run_config(tmp, conf, port, preexec_fn=limit) as fm:
        yield fm.proc, port, fm.stderr_path


def host(i: int) -> str:
    return f"127.{1 + i // 62500}.{i // 250 % 250}.{1 + i % 250}"


def get(sock: socket.socket, host: str, port: int) -> tuple[int, bytes]:
    sock.sendall(f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    resp = read_response(sock, timeout=10)
    return resp.status, resp.body


def test_5000_origins_in_a_row_under_a_1024_descriptor_limit(tmp_path: Path) -> None:
    with many_host_origin() as oport, ferryman_with_limit(tmp_path, 1024, 1024) as (proc, port, err):
        with connect(port, timeout=10) as c:
            t0 = time.monotonic()
            for i in range(ORIGINS):
                status, body = get(c, host(i), oport)
                assert (status, body) == (200, host(i).encode()), f"origin #{i}: {status} {body[:200]!r}"
            elapsed = time.monotonic() - t0
            fds = len(list(Path(f"/proc/{proc.pid}/fd").iterdir()))
            assert fds < 1024 * 3 // 4, fds  # idle connections capped well below the limit
            for i in (ORIGINS - 1, 0):  # one still pooled, one evicted long ago
                t1 = time.monotonic()
                assert get(c, host(i), oport) == (200, host(i).encode())
                assert time.monotonic() - t1 < 1.0
        assert "file descriptor limit 1024" in err.read_text()
        assert "out of file descriptors" not in err.read_text()
        print(f"{ORIGINS} origins in {elapsed:.1f}s; {fds} descriptors open after")


def test_soft_descriptor_limit_raised_to_the_hard_one(tmp_path: Path) -> None:
    with ferryman_with_limit(tmp_path, 256, 4096) as (proc, _port, err):
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        m = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert m and m.groups() == ("4096", "4096"), limits
        assert "file descriptor limit 4096 (raised from 256)" in err.read_text()


def test_explicit_idle_cap_is_kept(tmp_path: Path) -> None:
    """pool.max_idle: N holds at most N idle upstream connections, whatever the limit."""
    with many_host_origin() as oport, ferryman_with_limit(
        tmp_path, 1024, 1024, pool={"max_idle": 20}
    ) as (proc, port, _err):
        with connect(port, timeout=10) as c:
            base = len(list(Path(f"/proc/{proc.pid}/fd").iterdir()))
            for i in range(200):
                assert get(c, host(i), oport)[0] == 200
            # 20 idle + this request's connection at most, once the loop has closed the evicted
            # sockets (a close takes effect on the loop's next turn)
            fds = Path(f"/proc/{proc.pid}/fd")
            wait_for(lambda: len(list(fds.iterdir())) <= base + 21, 5, lambda: repr(len(list(fds.iterdir()))))


def test_out_of_descriptors_closes_idle_connections_and_retries(tmp_path: Path) -> None:
    """A cap set above what the limit allows: the dial that hits EMFILE frees idle ones and goes on."""
    with many_host_origin() as oport, ferryman_with_limit(
        tmp_path, 1024, 1024, pool={"max_idle": 5000}
    ) as (_proc, port, err):
        with connect(port, timeout=10) as c:
            for i in range(1500):
                status, body = get(c, host(i), oport)
                assert (status, body) == (200, host(i).encode()), f"origin #{i}: {status} {body[:200]!r}"
        assert "out of file descriptors" not in err.read_text()


def test_out_of_descriptors_holds_accepting_and_drops_no_client(tmp_path: Path) -> None:
    """More clients than descriptors: the listener stops accepting (clients wait in the accept
    queue, none is accepted and dropped), logs it once, and accepts them when descriptors free."""
    with ferryman_with_limit(tmp_path, 128, 128) as (proc, port, err):
        clients = []
        for _ in range(200):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_text(err.read_text, "out of file descriptors (limit 128)", 5)
        cpu0 = _cpu_seconds(proc.pid)
        time.sleep(0.5)  # held: ferryman must idle, not spin on accept()
        assert _cpu_seconds(proc.pid) - cpu0 < 0.2
        for c in clients:
            c.setblocking(False)
            try:
                data = c.recv(1)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            raise AssertionError(f"a client was dropped ({data!r}):\n{err.read_text()}")
        for c in clients[:120]:
            c.close()
        for c in clients[120:]:  # the ones still in the accept queue are served now
            c.setblocking(True)
            c.settimeout(5)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # origin-form to a forward proxy: 400
            assert read_response(c, timeout=5).status == 400
            c.close()
        assert err.read_text().count("out of file descriptors") == 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
