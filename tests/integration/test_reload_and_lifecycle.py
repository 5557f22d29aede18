"""Configuration reload (SIGHUP), `ferryman check`, the `forward` one-liner, and draining
on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from contextlib import suppress
from pathlib import Path

import yaml

from tests.helpers.origin import Origin, read_request, serve
from tests.helpers.procs import (
    Nginx,
    base_config,
    child_env,
    ferryman_cli,
    ferryman_cmd,
    free_port,
    launch,
    run_ferryman,
    stop_process,
)
from tests.helpers.rawhttp import curl, proxy_request, raw_client
from tests.helpers.wait import wait_for, wait_log, wait_port, wait_text


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# -- SIGHUP --------------------------------------------------------------------------
def test_sighup_with_valid_config_applies_to_new_requests(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path) as fm, raw_client(fm.port) as c:
        assert c.request(proxy_request(f"{nginx.url}/small")).status == 200
        rules = [{"name": "reloaded-rule", "deny": {"networks": ["127.0.0.0/8"]}}]
        fm.write_config(base_config(fm.port, fm.log_path, forward={"rules": rules}))
        fm.reload()
        wait_text(fm.stderr, "configuration reloaded")
        # the next request on the same keep-alive connection uses the new Plan ...
        r = c.request(proxy_request(f"{nginx.url}/small"))
        assert r.status == 403 and b"(rule: reloaded-rule)" in r.body
        # ... and so does a request on a new connection
        assert "HTTP/1.1 403" in curl("-i", "-x", fm.proxy, f"{nginx.url}/small").stdout.decode()
        assert fm.proc.poll() is None


def test_sighup_with_invalid_config_keeps_old_config(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path) as fm:
        good = base_config(fm.port, fm.log_path)
        bad = dict(good, forward={"bogus": 1})
        fm.write_config(bad)
        fm.reload()
        err = wait_text(fm.stderr, "forward.bogus")
        assert f"{fm.config_path}: forward.bogus: unknown setting" in err
        assert "old config keeps serving" in err
        assert curl("-x", fm.proxy, f"{nginx.url}/small").stdout == b"hello from nginx\n"
        # a file that validates but cannot be compiled is refused the same way
        missing = dict(good, forward={"rules": [{"deny": {"domains_file": "nope.txt"}}]})
        fm.write_config(missing)
        fm.reload()
        err = wait_text(fm.stderr, "forward.rules[0].deny.domains_file")
        assert "cannot read" in err
        assert curl("-x", fm.proxy, f"{nginx.url}/small").stdout == b"hello from nginx\n"
        assert fm.proc.poll() is None


def test_sighup_revoking_a_client_applies_to_its_open_connection(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path) as fm, raw_client(fm.port) as c:
        assert c.request(proxy_request(f"{nginx.url}/small")).status == 200
        fm.write_config(base_config(fm.port, fm.log_path, forward={"clients": ["10.0.0.0/8"]}))
        fm.reload()
        wait_text(fm.stderr, "configuration reloaded")
        # a new connection is refused ...
        with raw_client(fm.port) as fresh:
            assert fresh.request(proxy_request(f"{nginx.url}/small")).status == 403
        # ... and so must be the next request on the connection opened before the reload
        r = c.request(proxy_request(f"{nginx.url}/small"))
        assert r.status == 403 and b"forward.clients" in r.body


# -- ferryman check ---------------------------------------------------------------------------
def test_check_prints_each_error_with_its_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "forward": {"bogus": 1, "connect_ports": [70000]},
        "timeouts": {"client_idle": "soon"},
    }))
    p = ferryman_cli(tmp_path, "check", "-c", str(bad))
    assert p.returncode != 0
    lines = p.stderr.splitlines()
    assert f"{bad}: forward.bogus: unknown setting" in lines, lines
    assert any(ln.startswith(f"{bad}: forward.connect_ports[0]: ") for ln in lines), lines
    assert any(ln.startswith(f"{bad}: timeouts.client_idle: ") for ln in lines), lines
    assert all(ln.startswith(f"{bad}: ") for ln in lines if ln.strip()), lines


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base_config(free_port(), tmp_path / "a.log",
                                               forward={"connect_ports": [443, 8443]})))
    p = ferryman_cli(tmp_path, "check", "-c", str(good))
    assert p.returncode == 0, p.stderr
    assert "OK" in p.stdout


def test_sighup_while_starting_reloads_once_serving_instead_of_killing(tmp_path: Path) -> None:
    """A SIGHUP that comes before the reload handler exists (a service manager's reload
    right after the start, or one sent as soon as the pid file shows up) waits for it.
    The pid file here is a FIFO, so ferryman stops at writing it until the test reads it:
    the signal lands in the middle of the start every time."""
    port, pid_file, err = free_port(), tmp_path / "ferryman.pid", tmp_path / "stderr"
    os.mkfifo(pid_file)
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            ferryman_cmd("forward", "--listen", f"127.0.0.1:{port}", "--access-log", "off",
                         "--pid-file", str(pid_file)),
            stdout=subprocess.DEVNULL, stderr=out, cwd=tmp_path, env=child_env(),
        )
    try:
        wait_text(err.read_text, "file descriptor limit")  # logged just before the pid file
        proc.send_signal(signal.SIGHUP)
        fifo = os.open(pid_file, os.O_RDONLY | os.O_NONBLOCK)  # lets it go on
        got = bytearray()

        def pid_written() -> bool:
            assert proc.poll() is None, f"ferryman ended ({proc.returncode}):\n{err.read_text()}"
            with suppress(BlockingIOError):
                got.extend(os.read(fifo, 64))
            return got.endswith(b"\n")

        try:
            wait_for(pid_written, what="the pid file")
        finally:
            os.close(fifo)
        assert got == b"%d\n" % proc.pid
        wait_text(err.read_text, "configuration reloaded")
        assert proc.poll() is None, err.read_text()
        wait_port(port, proc)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err.read_text()


# -- the one-liner ----------------------------------------------------------------------------
def test_forward_one_liner(tmp_path: Path, nginx: Nginx) -> None:
    port = free_port()
    log = tmp_path / "one-liner.log"
    with launch(tmp_path, "forward", "--listen", f"127.0.0.1:{port}", "--access-log", str(log),
                "--log-format", "json", port=port, log_path=log) as fm:
        out = curl("-x", f"http://127.0.0.1:{port}", f"{nginx.url}/small")
        assert out.stdout == b"hello from nginx\n"
        entry = wait_log(fm.access_log, lambda e: e["target"] == f"{nginx.url}/small")
        assert entry["status"] == 200
        fm.proc.send_signal(signal.SIGTERM)
        assert fm.proc.wait(timeout=15) == 0


# -- SIGTERM drains -------------------------------------------------------------------------------
async def slow_body(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends the head, waits until the test releases it, then sends the body."""
    await read_request(origin, reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    await writer.drain()
    release = origin.event("release")
    await asyncio.get_running_loop().run_in_executor(None, release.wait, 15)
    writer.write(b"0123456789")
    await writer.drain()


def test_sigterm_lets_a_slow_response_finish_then_exits_0(tmp_path: Path) -> None:
    with serve(slow_body) as o, run_ferryman(tmp_path) as fm, raw_client(fm.port) as c:
        c.send(proxy_request(f"{o.url}/slow"))
        head = c.read_head()
        assert head.status == 200 and head.get("content-length") == "10"
        fm.proc.send_signal(signal.SIGTERM)
        wait_text(fm.stderr, "shutting down")
        wait_for(lambda: refuses_connections(fm.port), 5, "the listener to close")
        assert fm.proc.poll() is None  # still draining the response in flight
        o.event("release").set()
        assert c.read_exact(10) == b"0123456789"
        assert fm.proc.wait(timeout=15) == 0
        assert c.at_eof(5)
    entry = wait_log(fm.access_log, lambda e: e["target"] == f"{o.url}/slow", timeout=2)
    assert entry["status"] == 200


def test_sigterm_closes_idle_keep_alive_connections_promptly(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path) as fm, raw_client(fm.port) as c:
        assert c.request(proxy_request(f"{nginx.url}/small")).status == 200
        fm.proc.send_signal(signal.SIGTERM)
        assert c.at_eof(5), "idle keep-alive connection was not closed on SIGTERM"
        assert fm.proc.wait(timeout=5) == 0
