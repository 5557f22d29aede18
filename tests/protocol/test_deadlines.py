"""Every deadline of the client connection, driven by a fake clock and fake transports:
no sleeping, no sockets (DESIGN 2.6, 2.12).  Each test moves the clock to just before the
deadline (nothing happens), then past it (the connection's state table says what does)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferryman.config.compile import TimeoutsPlan, build_plan
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.conn.state import NEXT, TIMEOUT, State, StateError
from ferryman.conn.tunnel import RelaySide, Tunnel
from ferryman.upstream.connection import UpstreamConnection
from tests.helpers.fakeclock import FakeClock
from tests.protocol.test_downstream import GET, ORIGIN, FakeTransport

T = TimeoutsPlan(
    client_header=10, tls_handshake=10, client_idle=20, client_body=30, upstream_connect=5,
    upstream_header=40, upstream_idle=50, tunnel_idle=70, shutdown_grace=5,
)


class Tr(FakeTransport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 5555)) -> None:
        super().__init__(peer)
        self.protocol: Any = None

    def set_protocol(self, p: Any) -> None:
        self.protocol = p

    def can_write_eof(self) -> bool:
        return True


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(clock: FakeClock) -> AsyncIterator[Engine]:
    eng = Engine(dataclasses.replace(build_plan(None), timeouts=T), clock=clock)
    eng.log.enabled = False
    yield eng
    eng.close()


def client(engine: Engine) -> tuple[Downstream, Tr]:
    ds = Downstream(engine, engine.plan.listeners[0])
    tr = Tr()
    ds.connection_made(tr)  # type: ignore[arg-type]
    return ds, tr


def park(engine: Engine) -> tuple[UpstreamConnection, Tr]:
    conn = UpstreamConnection(ORIGIN, 32768, 100)
    tr = Tr()
    conn.connection_made(tr)  # type: ignore[arg-type]
    assert engine.pool.park(ORIGIN, conn, engine.clock.time()) is None
    return conn, tr


def status(out: bytes) -> int:
    return int(out.split(b" ", 2)[1])


# -- the table --------------------------------------------------------------------------------------


def test_every_state_has_a_deadline_entry_and_moves() -> None:
    assert set(TIMEOUT) == set(State) == set(NEXT)
    assert all(f is None or f in TimeoutsPlan.__dataclass_fields__ for f in TIMEOUT.values())


async def test_a_move_the_table_does_not_list_is_refused(engine: Engine) -> None:
    ds, _ = client(engine)
    with pytest.raises(StateError):
        ds.to(State.RESPONSE)  # a response before any request
    ds.to(State.CLOSED)
    with pytest.raises(StateError):
        ds.to(State.HEAD)


# -- client side ------------------------------------------------------------------------------------


async def test_a_client_that_never_speaks_is_closed_quietly(engine: Engine, clock: FakeClock) -> None:
    ds, tr = client(engine)
    clock.advance(T.client_header - 0.1)
    assert not tr.closed
    clock.advance(0.2)
    assert tr.closed and tr.take() == b"" and ds.state is State.CLOSED


async def test_head_deadline_counts_from_the_accept(engine: Engine, clock: FakeClock) -> None:
    ds, tr = client(engine)
    clock.advance(6)
    ds.data_received(b"GET http://origin.test/ HTTP/1.1\r\n")  # slowloris: half a head
    assert ds.state is State.HEAD
    clock.advance(T.client_header - 6 - 0.1)
    assert not tr.ended
    clock.advance(0.2)
    out = tr.take()
    assert status(out) == 408 and b"request header" in out and tr.ended


async def test_body_deadline_is_an_activity_deadline(engine: Engine, clock: FakeClock) -> None:
    up, up_tr = park(engine)
    ds, tr = client(engine)
    ds.data_received(
        b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\nab"
    )
    assert ds.state is State.BODY
    clock.advance(T.client_body - 1)
    ds.data_received(b"cd")  # bytes moved (streamed upstream): the deadline counts from here
    clock.advance(T.client_body - 1)
    assert not tr.ended
    clock.advance(2)
    out = tr.take()
    assert status(out) == 408 and b"request body" in out and tr.ended
    assert up_tr.closed  # the half-sent request is not left on a pooled connection


async def test_waiting_for_the_upstream(engine: Engine, clock: FakeClock) -> None:
    park(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    assert ds.state is State.WAIT
    clock.advance(T.upstream_header - 0.1)
    assert tr.take() == b""
    clock.advance(0.2)
    out = tr.take()
    assert status(out) == 504 and b"no response within 40s" in out and tr.ended


async def test_a_stalled_response_is_cut_not_completed(engine: Engine, clock: FakeClock) -> None:
    up, _ = park(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    clock.advance(T.upstream_header - 1)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert ds.state is State.RESPONSE
    clock.advance(T.upstream_idle - 1)
    up.data_received(b"de")  # activity: the stall deadline starts again
    clock.advance(T.upstream_idle - 1)
    assert not tr.closed
    clock.advance(2)
    assert tr.closed and tr.take().endswith(b"abcde")  # no error page after a started body


async def test_keep_alive_idle(engine: Engine, clock: FakeClock) -> None:
    up, _ = park(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert ds.state is State.IDLE and tr.take().endswith(b"hi")
    clock.advance(T.client_idle - 0.1)
    assert not tr.closed
    clock.advance(0.2)
    assert tr.closed and tr.take() == b""


async def test_the_next_request_gets_a_fresh_head_deadline(engine: Engine, clock: FakeClock) -> None:
    up, _ = park(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    tr.take()
    clock.advance(T.client_idle - 1)
    ds.data_received(b"GET http://origin.test/b HTTP/1.1\r\n")
    clock.advance(T.client_header - 0.1)
    assert not tr.closed
    clock.advance(0.2)
    assert status(tr.take()) == 408


# -- tunnels ----------------------------------------------------------------------------------------


async def test_tunnel_idle_after_an_upgrade(
    engine: Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialled: list[tuple[UpstreamConnection, Tr]] = []

    async def resolve(host: str, port: int) -> list[Any]:
        return [(2, ("192.0.2.1", port))]

    async def open_connection(addrs: Any, factory: Any, *args: Any) -> tuple[Tr, UpstreamConnection]:
        proto, tr = factory(), Tr()
        proto.connection_made(tr)
        dialled.append((proto, tr))
        return tr, proto

    monkeypatch.setattr(engine.resolver, "resolve", resolve)
    monkeypatch.setattr("ferryman.conn.relay.open_connection", open_connection)
    ds, tr = client(engine)
    ds.data_received(
        b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    while not dialled:  # an upgrade gets a connection of its own: dialled in a task
        await asyncio.sleep(0)
    up, up_tr = dialled[0]
    assert up_tr.take().startswith(b"GET /ws HTTP/1.1\r\n")
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert ds.state is State.TUNNEL and status(tr.take()) == 101
    client_side = tr.protocol
    assert isinstance(client_side, RelaySide)
    clock.advance(T.tunnel_idle - 1)
    client_side.data_received(b"ping")  # activity either way keeps the tunnel
    assert up_tr.take().endswith(b"ping")
    clock.advance(T.tunnel_idle - 1)
    assert not tr.closed and not up_tr.closed
    clock.advance(2)
    assert tr.closed and up_tr.closed and ds.state is State.CLOSED
    assert ds not in engine.connections


async def test_tunnel_idle_of_a_bare_tunnel(clock: FakeClock) -> None:
    a, b = RelaySide(), RelaySide()
    ta, tb = Tr(), Tr()
    a.connection_made(ta)  # type: ignore[arg-type]
    b.connection_made(tb)  # type: ignore[arg-type]
    ended: list[Tunnel] = []
    tunnel = Tunnel(a, b, 5.0, ended.append, clock)
    tunnel.start()
    clock.advance(4.9)
    assert not ended
    clock.advance(0.2)
    assert ended == [tunnel] and ta.closed and tb.closed


# -- shutdown ---------------------------------------------------------------------------------------


async def test_a_connection_ended_after_a_response_lingers_until_the_client_closes(
    engine: Engine, clock: FakeClock
) -> None:
    # RFC 9112 9.6: a half-close after the answer, bytes still coming are read and dropped,
    # and the close comes with the client's own (or after 2 s at most).  Here the answer
    # comes before the whole body, so the client is still sending.
    post = b"POST http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n\r\n"
    for client_closes in (True, False):
        park(engine)
        ds, tr = client(engine)
        ds.data_received(post + b"x" * 10)
        up = ds.cur.up.conn if ds.cur is not None else None
        assert up is not None
        up.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
        assert tr.take().endswith(b"\r\n\r\nno")
        assert tr.eof_written and not tr.closed and tr.reading and ds.state is State.CLOSED
        ds.data_received(b"x" * 90 + b"GET /more HTTP/1.1\r\n\r\n")  # dropped: never parsed
        assert tr.take() == b""
        if client_closes:
            assert ds.eof_received() is None  # the transport closes itself
        else:
            clock.advance(2.1)
            assert tr.closed


async def test_a_client_that_asked_to_close_is_closed_at_once(engine: Engine, clock: FakeClock) -> None:
    # It sends nothing more (RFC 9112 9.6), so no lingering: no half-close, no timer that
    # would keep every Connection: close connection alive for seconds.
    park(engine)
    ds, tr = client(engine)
    ds.data_received(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    up = ds.cur.up.conn if ds.cur is not None else None
    assert up is not None
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert tr.take().endswith(b"\r\n\r\nhi")
    assert tr.closed and not tr.eof_written


async def test_drain_ends_when_the_last_connection_closes(engine: Engine, clock: FakeClock) -> None:
    up, _ = park(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    engine.draining = True
    waiter = asyncio.ensure_future(engine.wait_closed(T.shutdown_grace))
    await asyncio.sleep(0)
    assert not waiter.done()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")  # the last response ends
    assert tr.closed  # draining: no keep-alive
    ds.connection_lost(None)
    await asyncio.wait_for(waiter, 1)  # woken at once, no polling


async def test_drain_gives_up_after_the_grace(engine: Engine, clock: FakeClock) -> None:
    ds, tr = client(engine)
    ds.data_received(GET.replace(b"\r\n\r\n", b"\r\n"))  # a request that never ends
    waiter = asyncio.ensure_future(engine.wait_closed(T.shutdown_grace))
    await asyncio.sleep(0)
    clock.advance(T.shutdown_grace - 0.1)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(0.2)
    await asyncio.wait_for(waiter, 1)
    assert ds in engine.connections  # still there: the shutdown closes it by force


async def test_an_answer_ready_after_the_client_left_is_dropped(engine: Engine) -> None:
    """A cache answer found after an await (store read, a fill) may meet a closed client:
    nothing is written and the state stays CLOSED (no move out of it is allowed)."""
    from ferryman.conn.exchange import Exchange
    from ferryman.http1.events import Framing, RequestHead
    from ferryman.pipeline.context import RequestContext

    ds, tr = client(engine)
    head = RequestHead(
        "GET", b"http://o.test/", "1.1", [], Framing.NONE, 0, True, b"o.test", frozenset(), False
    )
    ex = Exchange(RequestContext(ds.client, head, engine.plan), engine.clock.time())
    ds.connection_lost(None)
    ds.responder.begin_stream(ex, 200, None, [], b"", True, 2)
    assert not ds.responder.stream_chunk(ex, b"hi")
    ds.responder.end_stream(ex)
    assert tr.take() == b"" and ds.state is State.CLOSED


async def test_a_request_pipelined_behind_a_closing_answer_is_not_started(clock: FakeClock) -> None:
    from ferryman.config.compile import compile_config
    from ferryman.config.load import load_text, normalise

    text = (
        "listeners: [{listen: '127.0.0.1:8080', mode: reverse}]\n"
        "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
        "routes: [{match: {path_prefix: /}, redirect: {to: 'https://{host}{uri}', status: 301}}]\n"
    )
    eng = Engine(compile_config(normalise(load_text(text, "t")), "t"), clock=clock)
    eng.log.enabled = False
    try:
        ds, tr = client(eng)
        req = b"GET /a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        ds.data_received(req + req.replace(b"/a", b"/b"))  # one read: the second is parsed too
        out = tr.take()
        assert out.count(b"HTTP/1.1 301") == 1 and b"/b" not in out
        assert tr.ended and ds.state is State.CLOSED
    finally:
        eng.close()
