"""The body of an Upgrade request is relayed like any body; only bytes after the 101 are the
tunnel's (issue 10, item 4).  Raw-socket transcripts against a recording origin that reads
the body by its framing, answers 101 and then echoes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import ScriptedOrigin, scripted_origin
from tests.helpers.procs import Ferryman, run_reverse
from tests.helpers.rawhttp import connect, read_head
from tests.helpers.wait import wait_for

UPGRADE = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
WS = ("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ferryman, ScriptedOrigin]]:
    tmp: Path = tmp_path_factory.mktemp("upgrade-body")
    with scripted_origin() as origin, run_reverse(
        tmp, routes=[{"upstream": "o"}], upstreams={"o": {"servers": [{"url": origin.url}]}},
        timeouts={"upstream_header": "3s", "shutdown_grace": "1s"},
    ) as fm:
        yield fm, origin


def _recv_exactly(s: socket.socket, n: int, already: bytes = b"") -> bytes:
    buf = already
    s.settimeout(5)
    while len(buf) < n:
        data = s.recv(65536)
        assert data, f"closed after {buf!r}"
        buf += data
    return buf


def _switch(s: socket.socket) -> bytes:
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    return rest


def _seen(origin: ScriptedOrigin, path: str) -> bytes:
    found = wait_for(lambda: [x for x in origin.seen if x.target == path], what=f"{path} at the origin")
    return found[0].body


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "head-then-body"])
def test_content_length_body_of_an_upgrade_request_reaches_the_origin(
    setup: tuple[Ferryman, ScriptedOrigin], split: bool
) -> None:
    fm, origin = setup
    path = f"/cl-{int(split)}/upgrade"
    head = f"POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n{UPGRADE}\r\n".encode()
    with connect(fm.port) as s:
        if split:
            s.sendall(head)
            wait_for(lambda: any(f" {path} ".encode() in h for h in origin.heads), what="head at the origin")
            s.sendall(b"hello")
        else:
            s.sendall(head + b"hello")
        rest = _switch(s)  # not a 504: the origin got its 5 bytes and switched
        assert _seen(origin, path) == b"hello"
        s.sendall(b"after the switch")
        assert _recv_exactly(s, 16, rest) == b"after the switch"


def test_bytes_after_the_body_belong_to_the_tunnel(setup: tuple[Ferryman, ScriptedOrigin]) -> None:
    fm, origin = setup
    path = "/eager/upgrade"
    req = f"POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n{UPGRADE}\r\n".encode()
    with connect(fm.port) as s:
        s.sendall(req + b"helloTUNNEL")  # a client that did not wait for the 101
        rest = _switch(s)
        assert _recv_exactly(s, 6, rest) == b"TUNNEL"
    assert _seen(origin, path) == b"hello"


def test_chunked_body_of_a_websocket_get_is_relayed(setup: tuple[Ferryman, ScriptedOrigin]) -> None:
    fm, origin = setup
    path = "/ws-chunked/upgrade"
    req = f"GET {path} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n{WS}\r\n".encode()
    with connect(fm.port) as s:
        s.sendall(req + b"5\r\nhello\r\n")
        s.sendall(b"6;ext=1\r\n world\r\n0\r\n\r\n")
        rest = _switch(s)
        s.sendall(b"frame")
        assert _recv_exactly(s, 5, rest) == b"frame"
    # Re-framed by ferryman, but every byte is there (not just "0\r\n\r\n").
    body = _seen(origin, path)
    assert body.endswith(b"0\r\n\r\n") and b"hello" in body and b" world" in body, body
    assert _dechunk(body) == b"hello world"


def test_malformed_chunked_body_of_an_upgrade_request_is_refused(
    setup: tuple[Ferryman, ScriptedOrigin]
) -> None:
    fm, origin = setup
    path = "/bad-chunks/upgrade"
    req = f"GET {path} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n{WS}\r\n".encode()
    with connect(fm.port) as s:
        s.sendall(req + b"zz\r\nhello\r\n0\r\n\r\n")
        head, _ = read_head(s)
    assert head.startswith(b"HTTP/1.1 400"), head


def _dechunk(raw: bytes) -> bytes:
    out = b""
    while True:
        line, _, raw = raw.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out
        out, raw = out + raw[:size], raw[size + 2 :]


def test_refused_upgrade_relays_its_body_as_a_plain_request(setup: tuple[Ferryman, ScriptedOrigin]) -> None:
    fm, origin = setup
    path = "/refused/ok"  # "test" is not an allowed upgrade protocol: a plain POST goes on
    req = f"POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: Upgrade\r\n" \
          f"Upgrade: test\r\n\r\nhello".encode()
    with connect(fm.port) as s:
        s.sendall(req)
        head, rest = read_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head
    assert _seen(origin, path) == b"hello"
