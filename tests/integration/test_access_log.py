"""The access log, JSON and combined: one line per request or tunnel, errors included."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, read_request, serve
from tests.helpers.procs import Ferryman, Nginx, free_port, run_ferryman
from tests.helpers.rawhttp import curl, proxy_request, raw_client
from tests.helpers.wait import json_lines, wait_for, wait_log

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    """JSON access log, a named deny rule, and a short upstream_header timeout."""
    rules = [{"name": "no-ads", "deny": {"domains": [".ads.test"]}}]
    # log_query: these tests find their line by a query string (the forward default drops
    # it: tests/integration/test_forward_anonymity.py)
    with run_ferryman(tmp_path_factory.mktemp("log"), forward={"rules": rules, "log_query": True},
                      timeouts={"upstream_header": "1s"}) as fm:
        yield fm


def test_json_line_for_a_get(logged: Ferryman, nginx: Nginx) -> None:
    url = f"{nginx.url}/small?json-proxy_request"
    with raw_client(logged.port) as c:
        r = c.request(proxy_request(url))
    assert r.status == 200
    e = wait_log(logged.access_log, lambda e: e["target"] == url)
    assert ISO_UTC.match(e["time"]), e["time"]
    assert e["client"] == "127.0.0.1"
    assert e["user"] == ""
    assert e["method"] == "GET" and e["version"] == "1.1"
    assert e["status"] == 200
    assert e["bytes_in"] == 0
    assert len(r.body) <= e["bytes_out"] <= len(r.head.raw) + len(r.body)
    assert e["duration_ms"] >= e["first_byte_ms"] >= 0
    assert e["connect_ms"] is not None and 0 <= e["connect_ms"] <= e["duration_ms"]
    assert e["cache"] == ""
    assert e["upstream"] == f"127.0.0.1:{nginx.port}"
    assert e["error"] == ""


def test_json_line_counts_request_body_bytes(logged: Ferryman, nginx: Nginx) -> None:
    url = f"{nginx.url}/echo?json-post"
    out = curl("-x", logged.proxy, "--data-binary", "z" * 12_345, "-H", "Expect:", url)
    assert out.stdout == b"POST /echo?json-post\n"
    e = wait_log(logged.access_log, lambda e: e["target"] == url)
    assert e["method"] == "POST" and e["status"] == 200
    assert e["bytes_in"] == 12_345
    assert e["bytes_out"] >= len(b"POST /echo?json-post\n")


COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
    r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<out>\d+) (?P<in>\d+) '
    r'(?P<dur>[\d.]+)ms connect=(?P<connect>[\d.]+|-) first_byte=(?P<fb>[\d.]+|-) '
    r'cache=- upstream=(?P<upstream>\S+)(?: error="(?P<error>[^"]*)")?$'
)


def test_combined_format(tmp_path: Path, nginx: Nginx) -> None:
    with run_ferryman(tmp_path, access_log={"format": "combined"}) as fm:
        url = f"{nginx.url}/echo"
        assert curl("-x", fm.proxy, "--data-binary", "abc", "-H", "Expect:", url).stdout == b"POST /echo\n"
        with raw_client(fm.port) as c:  # an error: origin-form sent to a forward proxy
            assert c.request(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").status == 400

        def two_lines() -> list[str] | None:
            lines = fm.access_log().splitlines()
            return lines if len(lines) >= 2 else None

        ok_line, err_line = wait_for(two_lines, 10, "two combined log lines")[:2]
    m = COMBINED.match(ok_line)
    assert m, ok_line
    assert (m["method"], m["target"], m["status"]) == ("POST", url, "200")
    assert int(m["in"]) == 3 and int(m["out"]) >= len(b"POST /echo\n")
    assert m["connect"] != "-" and m["fb"] != "-"
    assert m["upstream"] == f"127.0.0.1:{nginx.port}" and m["error"] is None
    m = COMBINED.match(err_line)
    assert m, err_line
    assert (m["method"], m["target"], m["status"]) == ("GET", "/nope", "400")
    assert m["error"]


async def answer_then_wait_eof(origin: Origin, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(1000)
    writer.write(b"y" * 2500)
    await writer.drain()
    await reader.read()  # until the client half-closes
    writer.close()
    await writer.wait_closed()


def test_tunnel_logged_with_exact_byte_counts_when_it_closes(tmp_path: Path, nginx: Nginx) -> None:
    with serve(answer_then_wait_eof) as o, \
            run_ferryman(tmp_path, forward={"connect_ports": [o.port]}) as fm, raw_client(fm.port) as c:
        c.send(f"CONNECT 127.0.0.1:{o.port} HTTP/1.1\r\nHost: 127.0.0.1:{o.port}\r\n\r\n".encode())
        assert c.read_head().status == 200
        c.send(b"x" * 1000)
        assert c.read_exact(2500) == b"y" * 2500
        # while the tunnel is open it has no line yet (a later request's line is already there)
        with raw_client(fm.port) as other:
            assert other.request(proxy_request(f"{nginx.url}/small")).status == 200
        wait_log(fm.access_log, lambda e: e["method"] == "GET")
        assert not [e for e in json_lines(fm.access_log()) if e["method"] == "CONNECT"]
        c.shutdown_write()
        assert c.read_to_eof() == b""
        e = wait_log(fm.access_log, lambda e: e["method"] == "CONNECT")
    assert e["target"] == f"127.0.0.1:{o.port}" and e["status"] == 200
    assert e["bytes_in"] == 1000
    assert e["bytes_out"] == 2500
    assert e["connect_ms"] is not None and e["upstream"] == f"127.0.0.1:{o.port}"


async def never_answers(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(origin, reader)
    await reader.read()


def _error_entry(fm: Ferryman, request: bytes, target: str) -> tuple[int, dict[str, object]]:
    with raw_client(fm.port) as c:
        status = c.request(request).status
        assert c.at_eof(5), "an error response must close the connection"
    return status, wait_log(fm.access_log, lambda e: e["target"] == target)


def test_errors_are_logged_with_their_status(logged: Ferryman) -> None:
    cases: list[tuple[bytes, str, int]] = []
    denied = "http://www.ads.test/x"
    cases.append((proxy_request(denied), denied, 403))
    closed = f"http://127.0.0.1:{free_port()}/closed"
    cases.append((proxy_request(closed), closed, 502))
    cases.append((b"GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n", "/origin-form", 400))
    cases.append((b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n", "127.0.0.1:25", 403))
    for request, target, status in cases:
        got, entry = _error_entry(logged, request, target)
        assert got == status, target
        assert entry["status"] == status, entry
        assert entry["error"], entry
        assert entry["client"] == "127.0.0.1"
    with serve(never_answers) as o:
        target = f"{o.url}/slow"
        got, entry = _error_entry(logged, proxy_request(target), target)
    assert got == 504 and entry["status"] == 504 and "no response" in str(entry["error"])
