"""The SSRF guard (issue 12 item 3), on a real forward proxy in front of recording origins.

With a ``forward.clients`` that holds a non-loopback network, loopback, private,
link-local and "this network" destinations are refused (403) unless a rule allows
them by network, in every spelling, by name (a name that resolves to loopback), and
by CONNECT; the origin never sees a connection.  With the built-in loopback-only
clients (laptop mode) they are allowed.  ferryman's own listeners are a loop (508)
in both modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, run_ferryman
from tests.helpers.rawhttp import assert_error_and_closed, exchange

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
OFFICE = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]  # one non-loopback network: not laptop mode

LOOPBACK_SPELLINGS = [
    "127.0.0.1", "2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0x7f.0.0.1", "127.0.0.1.",
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "localhost", "LocalHost.",
]
PRIVATE = [
    "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.5", "[fe80::1]", "[fd00::1]",
    "[::ffff:10.0.0.1]", "[64:ff9b::a9fe:a9fe]",
]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK)) as o:
        yield o


@pytest.fixture(scope="module")
def origin6() -> Iterator[Origin]:
    with serve(canned(OK), host="::1") as o:
        yield o


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Ferryman]:
    fwd = {"clients": OFFICE, "connect_ports": [443, origin.port]}
    with run_ferryman(tmp_path_factory.mktemp("ssrf"), forward=fwd) as fm:
        yield fm


def _get(host: str, port: int) -> bytes:
    return b"GET http://%s:%d/x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
        host.encode(), port, host.encode()
    )


def _connect(host: str, port: int) -> bytes:
    return b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port, host.encode(), port)


def _refused(fm: Ferryman, req: bytes, *origins: Origin) -> bytes:
    before = [o.connections for o in origins]
    resp = exchange(fm.port, req)
    assert_error_and_closed(resp, 403)
    assert b"(rule: SSRF guard" in resp.body, resp.body
    assert [o.connections for o in origins] == before, "the request reached the origin"
    return resp.body


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_refused(
    office: Ferryman, origin: Origin, host: str, method: str
) -> None:
    req = _get(host, origin.port) if method == "GET" else _connect(host, origin.port)
    body = _refused(office, req, origin)
    assert b"is a loopback address" in body


def test_ipv6_loopback_is_refused(office: Ferryman, origin6: Origin) -> None:
    _refused(office, _get("[::1]", origin6.port), origin6)
    _refused(office, _get("[0:0:0:0:0:0:0:1]", origin6.port), origin6)


@pytest.mark.parametrize("host", PRIVATE)
def test_private_link_local_and_metadata_addresses_are_refused_without_a_dial(
    office: Ferryman, host: str
) -> None:
    body = _refused(office, _get(host, 80))
    assert any(k in body for k in (b"private", b"link-local", b"unique-local", b"this-network")), body


def test_ferryman_itself_is_a_loop_in_every_mode(office: Ferryman) -> None:
    resp = exchange(office.port, _get("127.0.0.1", office.port))
    assert_error_and_closed(resp, 508)


def test_a_rule_allows_a_network(tmp_path: Path, origin: Origin, origin6: Origin) -> None:
    rules = [
        {"name": "lo4", "allow": {"networks": ["127.0.0.0/8"]}},
        {"name": "by-name", "allow": {"domains": ["ip6-localhost", "ip6-loopback"]}},
    ]
    fwd = {"clients": OFFICE, "rules": rules, "connect_ports": [origin.port]}
    with run_ferryman(tmp_path, forward=fwd) as fm:
        for host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"):
            resp = exchange(fm.port, _get(host, origin.port))
            assert (resp.status, resp.body) == (200, b"ok"), host
        resp = exchange(fm.port, _connect("localhost", origin.port) + _get("x", 1))
        assert resp.status == 200
        # ::1 is in no allowed network; an allow by name does not open loopback either
        _refused(fm, _get("[::1]", origin6.port), origin6)
        _refused(fm, _get("10.1.2.3", 80))


def test_laptop_mode_allows_loopback_and_private(tmp_path: Path, origin: Origin) -> None:
    with run_ferryman(tmp_path, forward={"connect_ports": [origin.port]}) as fm:  # built-in clients
        for host in ("127.0.0.1", "localhost", "0x7f000001"):
            resp = exchange(fm.port, _get(host, origin.port))
            assert (resp.status, resp.body) == (200, b"ok"), host
        resp = exchange(fm.port, _get("127.0.0.1", fm.port))
        assert_error_and_closed(resp, 508)  # itself: still a loop
