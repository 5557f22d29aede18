"""A reload asked for during a reload is never lost (issue 7, item 7).

Which config serves is read off a deny-everything rule whose name is the config's
version: the 403 names it.  To hold a reload open for as long as a test needs, the
config it reads names a FIFO as a `domains_file`: compiling blocks on it (off the event
loop, as any slow list would) until the test writes the list and closes it.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.helpers.procs import free_port, launch
from tests.helpers.wait import wait_for

RULE = re.compile(rb"\(rule: (v\d+)\)")


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    cfg: Path
    err: Path
    fifo: Path
    admin: int

    def write(self, version: int, hold: bool = False) -> None:
        """Config ``version``; ``hold``: its list is the FIFO, so a reload of it blocks."""
        deny: dict[str, object] = {}
        if hold:
            deny["domains_file"] = str(self.fifo)
        cfg = {
            "listeners": [{"listen": f"127.0.0.1:{self.port}", "mode": "forward"}],
            "access_log": {"enabled": False},
            "admin": {"listen": f"127.0.0.1:{self.admin}"},
            "forward": {"rules": [{"name": f"v{version}", "deny": deny}, {"name": "other", "deny": {}}]},
        }
        tmp = self.cfg.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg))
        tmp.replace(self.cfg)  # atomic: a reload never reads half a file

    def stderr(self) -> str:
        return self.err.read_text()

    def served(self) -> str:
        """The version a new connection is served with (the rule that refuses it)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET http://held.test/ HTTP/1.1\r\nHost: held.test\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not RULE.search(data):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        m = RULE.search(data)
        assert m, data[:300]
        return m.group(1).decode()

    def wait_served(self, version: int, timeout: float = 10.0, connections: int = 1) -> None:
        """Until ``connections`` new connections in a row are all served ``version``."""
        want = f"v{version}"
        got: list[str] = []

        def all_served() -> bool:
            got[:] = [self.served() for _ in range(connections)]
            return set(got) == {want}

        wait_for(all_served, timeout, lambda: f"serving {want}, still {got}:\n{self.stderr()[-2000:]}")


@contextmanager
def proxy(tmp: Path, workers: int = 1) -> Iterator[Proxy]:
    fifo = tmp / "held.list"
    os.mkfifo(fifo)
    px = Proxy(None, free_port(), tmp / "ferryman.yaml", tmp / "stderr", fifo, free_port())  # type: ignore[arg-type]
    px.write(1)
    if workers > 1:
        cfg = yaml.safe_load(px.cfg.read_text())
        cfg["workers"] = workers
        cfg.pop("admin")
        px.cfg.write_text(yaml.safe_dump(cfg))
    with launch(tmp, "run", "-c", str(px.cfg), port=px.port, stderr_path=px.err) as fm:
        px.proc = fm.proc
        px.wait_served(1)
        yield px


@contextmanager
def held_reload(fifo: Path, timeout: float = 10.0) -> Iterator[int]:
    """The FIFO's write end, once a reload has opened it to read (the reload is blocked until
    the write end closes, which happens on leaving, whatever the test's outcome)."""

    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) + 1  # + 1: descriptor 0 is falsy
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    w = wait_for(opened, timeout, "a reload to open the FIFO") - 1
    try:
        yield w
    finally:
        os.close(w)


def wait_stderr(px: Proxy, needle: str, count: int = 1, timeout: float = 10.0) -> None:
    wait_for(lambda: px.stderr().count(needle) >= count, timeout,
             lambda: f"{needle!r} (x{count}) in:\n{px.stderr()[-2000:]}")


def test_sighup_during_a_reload_is_followed_by_one_more_reload(tmp_path: Path) -> None:
    with proxy(tmp_path) as px:
        px.write(2, hold=True)
        px.proc.send_signal(signal.SIGHUP)
        with held_reload(px.fifo) as w:  # reload 1 is blocked reading version 2's list
            px.write(3)
            px.proc.send_signal(signal.SIGHUP)
            wait_stderr(px, "SIGHUP during a reload: one more reload follows it")
            px.proc.send_signal(signal.SIGHUP)  # a third one merges with the second
            wait_stderr(px, "SIGHUP during a reload: merged with the reload already due")
            os.write(w, b"held.test\n")
        px.wait_served(3)
        wait_stderr(px, "configuration reloaded", count=2)


def test_post_reload_during_a_reload_waits_for_the_one_that_follows(tmp_path: Path) -> None:
    with proxy(tmp_path) as px:
        px.write(2, hold=True)
        px.proc.send_signal(signal.SIGHUP)
        answer: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"http://127.0.0.1:{px.admin}/reload", json={}, timeout=15)
            )
        )
        with held_reload(px.fifo) as w:
            px.write(3)
            t.start()
            wait_stderr(px, "POST /reload during a reload: one more reload follows it")
            assert not answer  # it waits for the reload that reads version 3
            os.write(w, b"held.test\n")
        t.join(15)
        assert answer and answer[0].status_code == 200, answer
        assert answer[0].json() == {"reloaded": True}
        assert px.served() == "v3"  # already in effect when the answer came


def test_back_to_back_sighups_end_on_the_last_file(tmp_path: Path) -> None:
    with proxy(tmp_path) as px:
        for version in range(2, 9):
            px.write(version)
            px.proc.send_signal(signal.SIGHUP)
        px.wait_served(8)


def test_workers_back_to_back_sighups_and_a_restarted_worker_serve_the_last_file(tmp_path: Path) -> None:
    with proxy(tmp_path, workers=2) as px:
        for version in range(2, 9):
            px.write(version)
            px.proc.send_signal(signal.SIGHUP)
        px.wait_served(8, timeout=20, connections=16)  # 16 new connections reach both workers
        children = [
            int(p) for p in Path(f"/proc/{px.proc.pid}/task/{px.proc.pid}/children").read_text().split()
        ]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        wait_stderr(px, f"worker {children[0]} exited")
        wait_stderr(px, "forward proxy listening", count=3, timeout=15)  # the new worker is up
        px.wait_served(8, timeout=20, connections=16)
