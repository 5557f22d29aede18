"""h2c smuggling: an Upgrade the allow-list refuses never reaches the upstream.

The origin below plays an h2c-capable backend: it answers 101 to any request that still
carries ``Upgrade: h2c`` when it arrives.  Each test reads what the origin received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, read_head, serve
from tests.helpers.procs import Ferryman, run_ferryman, run_reverse, upstream
from tests.helpers.rawhttp import EOF, exchange

pytestmark = pytest.mark.timeout(30)

SETTINGS = b"AAMAAABkAARAAAAAAAIAAAAA"
WS = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
FOO = b"Upgrade: foo/2\r\nConnection: Upgrade\r\n"
H2C = (
    b"Upgrade: h2c\r\nHTTP2-Settings: " + SETTINGS + b"\r\nConnection: Upgrade, HTTP2-Settings\r\n"
)


async def h2c_backend(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """101 for whatever Upgrade still arrives (as an h2c / WebSocket server would), else 200."""
    try:
        while True:
            head = await read_head(reader)
            fields = {
                line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")[1:] if b":" in line
            }
            if b"upgrade" in fields:
                proto = fields[b"upgrade"]
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n"
                             % proto)
                await writer.drain()
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def fields_of(head: bytes) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def assert_plain(head: bytes) -> None:
    """The request reached the origin without any trace of the refused upgrade."""
    f = fields_of(head)
    assert b"upgrade" not in f, head
    assert b"http2-settings" not in f, head
    for value in f.get(b"connection", []):
        tokens = {t.strip().lower() for t in value.split(b",")}
        assert not tokens & {b"upgrade", b"http2-settings"}, head


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(h2c_backend) as o:
        yield o


@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    with run_ferryman(tmp_path_factory.mktemp("h2c-fwd")) as fm:
        yield fm


@pytest.fixture(scope="module")
def reverse(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Ferryman]:
    routes = [{"name": "all", "match": {}, "upstream": "o"}]  # the default allow-list: websocket
    ups = {"o": upstream(origin.url)}
    with run_reverse(tmp_path_factory.mktemp("h2c-rev"), routes=routes, upstreams=ups) as fm:
        yield fm


def _send(fm: Ferryman, origin: Origin, mode: str, path: str, extra: bytes) -> tuple[int, bytes, bytes]:
    """One request; (status, body, the head the origin received). The proxy must close after it."""
    before = len(origin.requests)
    target = f"{origin.url}{path}" if mode == "forward" else path
    req = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (target.encode(), origin.port, extra)
    resp = exchange(fm.port, req)
    assert resp.ended == EOF or resp.status == 101, resp.raw[:300]
    assert len(origin.requests) == before + 1, origin.requests[before:]
    return resp.status, resp.body, origin.requests[-1]


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(H2C, id="h2c"),
        pytest.param(H2C.replace(b"h2c", b"H2C"), id="h2c-upper"),
        pytest.param(b"Upgrade: h2c\r\nConnection: Upgrade\r\n", id="h2c-no-settings"),
        pytest.param(FOO, id="unknown-protocol"),
    ],
)
def test_refused_upgrade_is_forwarded_as_a_plain_request(
    request: pytest.FixtureRequest, origin: Origin, mode: str, extra: bytes
) -> None:
    fm = request.getfixturevalue(mode)
    status, body, head = _send(fm, origin, mode, "/page", extra)
    assert (status, body) == (200, b"plain")
    assert_plain(head)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_http2_settings_is_dropped_even_without_an_upgrade(
    request: pytest.FixtureRequest, origin: Origin, mode: str
) -> None:
    fm = request.getfixturevalue(mode)
    extra = b"HTTP2-Settings: " + SETTINGS + b"\r\nConnection: close\r\n"
    status, _, head = _send(fm, origin, mode, "/page", extra)
    assert status == 200
    assert_plain(head)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(
            b"Upgrade: h2c, websocket\r\nHTTP2-Settings: x\r\nConnection: Upgrade, HTTP2-Settings\r\n",
            id="one-line",
        ),
        pytest.param(b"Upgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n", id="two-lines"),
    ],
)
def test_only_the_allowed_protocol_of_an_offer_is_passed_on(
    request: pytest.FixtureRequest, origin: Origin, mode: str, extra: bytes
) -> None:
    fm = request.getfixturevalue(mode)
    status, _, head = _send(fm, origin, mode, "/ws", extra)
    assert status == 101
    f = fields_of(head)
    assert f[b"upgrade"] == [b"websocket"], head
    assert b"http2-settings" not in f, head
    assert f[b"connection"] == [b"upgrade"], head


def test_route_allow_list_is_configurable(tmp_path: Path, origin: Origin) -> None:
    routes = [
        {"name": "extra", "match": {"path_prefix": "/extra"}, "upstream": "o",
         "upgrade_protocols": ["websocket", "foo"]},
        {"name": "none", "match": {"path_prefix": "/none"}, "upstream": "o", "upgrade_protocols": []},
    ]
    with run_reverse(tmp_path, routes=routes, upstreams={"o": upstream(origin.url)}) as fm:
        _route_allow_list(fm, origin)


def _route_allow_list(reverse: Ferryman, origin: Origin) -> None:
    status, _, head = _send(reverse, origin, "reverse", "/extra/x", FOO)
    assert status == 101 and fields_of(head)[b"upgrade"] == [b"foo/2"]
    # h2c stays refused on a route that lists other protocols
    status, _, head = _send(reverse, origin, "reverse", "/extra/x", H2C)
    assert status == 200
    assert_plain(head)
    # an empty list refuses even WebSocket
    status, _, head = _send(reverse, origin, "reverse", "/none", WS)
    assert status == 200
    assert_plain(head)


def test_forward_allow_list_is_its_own(tmp_path: Path, origin: Origin) -> None:
    with run_ferryman(tmp_path, forward={"upgrade_protocols": []}) as fm:
        status, _, head = _send(fm, origin, "forward", "/ws", WS)
        assert status == 200
        assert_plain(head)
