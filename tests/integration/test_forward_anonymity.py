"""forward.anonymity (issue 12 item 4): every cell of the README's table, as a recording
origin receives it; and forward.log_query (query strings out of the access log)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, run_ferryman
from tests.helpers.rawhttp import exchange
from tests.helpers.wait import wait_log

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
LEVELS = ("transparent", "anonymous", "elite")

# What the client sends (a client behind another proxy, and a few fields that name it).
SENT = [
    ("Via", "1.1 upstream.example"),
    ("X-Forwarded-For", "10.9.9.9"),
    ("Forwarded", "for=10.9.9.9"),
    ("X-Real-IP", "10.9.9.9"),
    ("From", "alice@example.com"),
    ("X-Client-IP", "10.9.9.9"),
    ("Client-IP", "10.9.9.9"),
    ("True-Client-IP", "10.9.9.9"),
    ("Accept", "text/html"),
]
OURS = "{ours}"  # ferryman's own Via entry, filled in per proxy
# The README table: field -> what reaches the origin at each level (None: absent).
TABLE: dict[str, tuple[str | None, str | None, str | None]] = {
    "via": (f"1.1 upstream.example, {OURS}", f"1.1 upstream.example, {OURS}", None),
    "x-forwarded-for": ("10.9.9.9, 127.0.0.1", "10.9.9.9", None),
    "forwarded": ("for=10.9.9.9, for=127.0.0.1", "for=10.9.9.9", None),
    "x-real-ip": ("10.9.9.9", "10.9.9.9", None),
    "from": ("alice@example.com", "alice@example.com", None),
    "x-client-ip": ("10.9.9.9", "10.9.9.9", None),
    "client-ip": ("10.9.9.9", "10.9.9.9", None),
    "true-client-ip": ("10.9.9.9", "10.9.9.9", None),
    "accept": ("text/html", "text/html", "text/html"),  # anything else passes at every level
}
# The same, when the client sent none of the identifying fields.
TABLE_BARE: dict[str, tuple[str | None, str | None, str | None]] = {
    "via": (OURS, OURS, None),
    "x-forwarded-for": ("127.0.0.1", None, None),
    "forwarded": ("for=127.0.0.1", None, None),
}


def received(request: bytes) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK)) as o:
        yield o


@pytest.fixture(scope="module", params=LEVELS)
def level(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Ferryman]]:
    lvl = request.param
    with run_ferryman(tmp_path_factory.mktemp(lvl), forward={"anonymity": lvl}) as fm:
        yield lvl, fm


def _dir(p: Path) -> Path:
    p.mkdir()
    return p


def _send(fm: Ferryman, origin: Origin, fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    extra = "".join(f"{n}: {v}\r\n" for n, v in fields)
    url = f"http://127.0.0.1:{origin.port}/page"
    req = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()
    before = len(origin.requests)
    resp = exchange(fm.port, req)
    assert (resp.status, resp.body) == (200, b"ok")
    assert len(origin.requests) == before + 1
    return received(origin.requests[-1])


def _expect(cell: str | None, fm: Ferryman) -> list[str] | None:
    if cell is None:
        return None
    return [cell.replace(OURS, f"1.1 {socket.gethostname()}:{fm.port} (ferryman)")]


def test_every_cell_of_the_table(level: tuple[str, Ferryman], origin: Origin) -> None:
    lvl, fm = level
    col = LEVELS.index(lvl)
    got = _send(fm, origin, SENT)
    for field, cells in TABLE.items():
        assert got.get(field) == _expect(cells[col], fm), (lvl, field, got.get(field))


def test_every_cell_when_the_client_sends_none_of_them(
    level: tuple[str, Ferryman], origin: Origin
) -> None:
    lvl, fm = level
    col = LEVELS.index(lvl)
    got = _send(fm, origin, [("Accept", "*/*")])
    for field, cells in TABLE_BARE.items():
        assert got.get(field) == _expect(cells[col], fm), (lvl, field, got.get(field))
    for field in ("x-real-ip", "from", "x-client-ip", "client-ip", "true-client-ip"):
        assert field not in got


def test_elite_strips_a_configured_list_and_via_off_keeps_the_rest(
    tmp_path: Path, origin: Origin
) -> None:
    fwd = {"anonymity": "elite", "identifying_headers": ["X-Employee-Id", "From"]}
    with run_ferryman(_dir(tmp_path / "a"), forward=fwd) as fm:
        got = _send(fm, origin, [*SENT, ("X-Employee-Id", "4711")])
        assert "x-employee-id" not in got and "from" not in got and "via" not in got
        assert got["x-client-ip"] == ["10.9.9.9"]  # not on this list
    # today's `via: false`: no Via of ours, the client's fields as sent
    with run_ferryman(_dir(tmp_path / "b"), forward={"via": False}) as fm:
        got = _send(fm, origin, SENT)
        assert got["via"] == ["1.1 upstream.example"] and got["x-forwarded-for"] == ["10.9.9.9"]


def test_the_forward_log_drops_query_strings_unless_asked(tmp_path: Path, origin: Origin) -> None:
    req = (
        b"GET http://127.0.0.1:%d/search?q=secret&token=abc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n" % origin.port
    )
    with run_ferryman(_dir(tmp_path / "default")) as fm:
        assert exchange(fm.port, req).status == 200
        line = wait_log(fm.access_log, lambda x: x["method"] == "GET")
        assert line["target"] == f"http://127.0.0.1:{origin.port}/search"
        assert "secret" not in fm.access_log()
        assert origin.requests[-1].startswith(b"GET /search?q=secret&token=abc ")  # only the log drops it
    with run_ferryman(_dir(tmp_path / "kept"), forward={"log_query": True}) as fm:
        assert exchange(fm.port, req).status == 200
        line = wait_log(fm.access_log, lambda x: x["method"] == "GET")
        assert line["target"] == f"http://127.0.0.1:{origin.port}/search?q=secret&token=abc"
