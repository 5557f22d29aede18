"""The PROXY-header acceptor with a fake transport: exact reads, hand-over, rejection."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferryman.config.compile import build_plan
from ferryman.conn import accept
from ferryman.conn.accept import Acceptor
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.http1 import proxy_protocol as pp
from ferryman.pipeline.admit.acl import ClientAcl
from tests.helpers.fakeclock import FakeClock
from tests.protocol.test_downstream import FakeTransport


class Tr(FakeTransport):
    def __init__(self) -> None:
        super().__init__(("10.0.0.9", 4000))
        self.protocol: Any = None

    def set_protocol(self, p: Any) -> None:
        self.protocol = p


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    import ipaddress

    plan = build_plan(None)
    from ferryman.pipeline.route.plan import ReversePlan
    from ferryman.pipeline.route.table import RouteTable

    rev = ReversePlan(RouteTable([]), {}, ClientAcl((ipaddress.ip_network("10.0.0.0/8"),)), True, None)
    eng = Engine(dataclasses.replace(plan, reverse=rev))
    eng.log.enabled = False
    yield eng
    eng.close()


def _feed(a: Acceptor, data: bytes) -> int:
    """Feed as a transport would, one get_buffer at a time; return how many bytes were taken."""
    taken = 0
    while taken < len(data) and not a._done:
        buf = a.get_buffer(65536)
        n = min(len(buf), len(data) - taken)
        buf[:n] = data[taken : taken + n]
        a.buffer_updated(n)
        taken += n
    return taken


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 5 80\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 1\r\n",
        pp.build_v2(("192.0.2.1", 5), ("192.0.2.2", 80)),
        pp.build_v2(("2001:db8::1", 5), ("2001:db8::2", 80)),
        pp.V2_SIG + b"\x20\x00\x00\x00",
    ],
)
async def test_reads_never_pass_the_end_of_the_header(engine: Engine, header: bytes) -> None:
    lp = dataclasses.replace(engine.plan.listeners[0], mode="reverse", proxy_protocol=True)
    a = Acceptor(engine, lp, None)
    tr = Tr()
    a.connection_made(tr)  # type: ignore[arg-type]
    taken = _feed(a, header + b"GET / HTTP/1.1\r\n\r\n")
    assert taken == len(header)
    assert isinstance(tr.protocol, Downstream)
    assert tr.reading  # resumed for the client protocol
    expect = pp.parse(header)[1]
    assert tr.protocol.client_ip == (expect[0] if expect else "10.0.0.9")


async def test_untrusted_peer_is_closed_before_reading(engine: Engine) -> None:
    lp = dataclasses.replace(engine.plan.listeners[0], mode="reverse", proxy_protocol=True)
    a = Acceptor(engine, lp, None)
    tr = FakeTransport(("192.0.2.50", 1))
    a.connection_made(tr)  # type: ignore[arg-type]
    assert tr.closed


async def test_rejections_are_logged_in_bursts(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(engine, "clock", clock)
    monkeypatch.setattr(accept, "reject_log", accept._RejectLog())
    lp = dataclasses.replace(engine.plan.listeners[0], mode="reverse", proxy_protocol=True)
    with caplog.at_level(logging.WARNING, logger="ferryman"):
        for _ in range(accept.LOG_BURST + 5):
            a = Acceptor(engine, lp, None)
            tr = Tr()
            a.connection_made(tr)  # type: ignore[arg-type]
            _feed(a, b"GET / HTTP/1.1\r\n\r\n")
            assert tr.closed
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == accept.LOG_BURST
        assert all("rejected PROXY header from 10.0.0.9:4000" in ln for ln in lines)
        clock.advance(accept.LOG_EVERY)
        a = Acceptor(engine, lp, None)
        a.connection_made(Tr())  # type: ignore[arg-type]
        _feed(a, b"XXXXXXXXXXXXXXXXXXXXX")
        lines = [r.getMessage() for r in caplog.records]
        assert "5 more PROXY headers rejected" in lines[-2]
        assert "rejected PROXY header from" in lines[-1]
