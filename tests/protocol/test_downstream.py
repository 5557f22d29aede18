"""The client Protocol with fake transports: no sockets, responses scripted.

The upstream side is a real `UpstreamConnection` whose transport is fake and
which is parked in the engine's pool beforehand, so `_start` finds it
synchronously and everything happens inside the test's calls.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.upstream.connection import UpstreamConnection


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 5555)) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.eof_written = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.eof_written = True

    @property
    def ended(self) -> bool:
        """The client sees the end: a FIN (half-close, ferryman lingering) or the close."""
        return self.closed or self.eof_written

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


ORIGIN = ("http", "origin.test", 80)


def park_upstream(engine: Engine) -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(ORIGIN, 32768, 100)
    tr = FakeTransport()
    conn.connection_made(tr)  # type: ignore[arg-type]
    assert engine.pool.park(ORIGIN, conn, engine.loop.time()) is None
    return conn, tr


def client(engine: Engine) -> tuple[Downstream, FakeTransport]:
    ds = Downstream(engine, engine.plan.listeners[0])
    tr = FakeTransport()
    ds.connection_made(tr)  # type: ignore[arg-type]
    return ds, tr


GET = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


async def test_keepalive_exchange_returns_upstream_to_pool(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    assert up_tr.take().startswith(b"GET /a HTTP/1.1\r\nHost: origin.test\r\n")
    up.data_received(OK)
    resp = tr.take()
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and resp.endswith(b"\r\n\r\nhi")
    assert not tr.closed
    assert engine.pool.idle_count(ORIGIN) == 1


async def test_pipelined_requests_answered_in_order(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET + GET.replace(b"/a", b"/b"))
    # Only the first is sent upstream; the second waits and reading pauses.
    assert up_tr.take().startswith(b"GET /a ")
    assert not tr.reading
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert tr.reading
    await asyncio.sleep(0)  # the next request starts on the loop's next turn
    assert up_tr.take().startswith(b"GET /b ")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    out = tr.take()
    assert out.index(b"\r\n\r\n1") < out.index(b"\r\n\r\n2")


async def test_bytes_after_a_response_never_answer_the_pipelined_request(engine: Engine) -> None:
    # An origin sends a second response after the one asked for, in the same read.  The
    # pipelined request must not be sent on that connection (it used to be, from inside
    # the read, and got the extra response as its own).
    spare, spare_tr = park_upstream(engine)
    up, up_tr = park_upstream(engine)  # handed out first (LIFO)
    ds, tr = client(engine)
    ds.data_received(GET + GET.replace(b"/a", b"/b"))
    assert up_tr.take().startswith(b"GET /a ")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON")
    assert up_tr.closed
    await asyncio.sleep(0)
    assert up_tr.take() == b""
    assert spare_tr.take().startswith(b"GET /b ")
    spare.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    out = tr.take()
    assert b"POISON" not in out and out.endswith(b"\r\n\r\n2") and _statuses(out) == [b"200", b"200"]


async def test_interim_103_relayed_to_http11_only(engine: Engine) -> None:
    for version, expect_103 in ((b"1.1", True), (b"1.0", False)):
        up, _ = park_upstream(engine)
        ds, tr = client(engine)
        ds.data_received(GET.replace(b"HTTP/1.1", b"HTTP/" + version))
        up.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
        out = tr.take()
        assert (b"103 Early Hints" in out) is expect_103
        assert b"200 OK" in out


async def test_truncated_body_closes_client(engine: Engine) -> None:
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)
    assert tr.closed
    assert tr.take().endswith(b"abc")  # never padded or "completed"


async def test_invalid_response_gives_502_and_nothing_raw(engine: Engine) -> None:
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi")
    out = tr.take()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"hi" not in out.split(b"\r\n\r\n", 1)[1]
    assert tr.closed


async def test_client_backpressure_pauses_upstream_reads(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    ds.pause_writing()
    assert not up_tr.reading
    ds.resume_writing()
    assert up_tr.reading


async def test_response_ending_while_the_client_is_slow_parks_a_reading_connection(engine: Engine) -> None:
    """Issue 7 item 10: the pause made for a slow client ends with its response."""
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    ds.pause_writing()  # the client's socket is full
    assert not up_tr.reading
    up.data_received(b"cd")  # the last bytes were already read: the response ends paused
    assert tr.take().endswith(b"abcd")
    assert engine.pool.idle_count(ORIGIN) == 1
    assert up_tr.reading and up.idle_ready
    ds2, tr2 = client(engine)
    ds2.data_received(GET)
    assert up_tr.take().count(b"GET /a ") == 2  # the same connection serves the next request
    up.data_received(OK)
    assert tr2.take().endswith(b"\r\n\r\nhi")
    ds.resume_writing()  # the first client's late resume touches nothing of the pooled connection
    assert up_tr.reading


async def test_upstream_backpressure_pauses_client_reads(engine: Engine) -> None:
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\n")
    up.pause_writing()
    assert not tr.reading
    up.resume_writing()
    assert tr.reading


async def test_chunked_response_rechunked_for_11_and_raw_for_10(engine: Engine) -> None:
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET)
    up.data_received(body)
    out = tr.take()
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET.replace(b"HTTP/1.1", b"HTTP/1.0"))
    up.data_received(body)
    out = tr.take()
    assert b"Transfer-Encoding" not in out and out.endswith(b"\r\n\r\nabc")
    assert tr.closed  # close-delimited for HTTP/1.0


async def test_forbidden_client_gets_403_naming_rule(engine: Engine) -> None:
    ds = Downstream(engine, engine.plan.listeners[0])
    tr = FakeTransport(peer=("192.0.2.7", 4444))
    ds.connection_made(tr)  # type: ignore[arg-type]
    ds.data_received(GET)
    out = tr.take()
    assert out.startswith(b"HTTP/1.1 403 Forbidden") and b"forward.clients" in out
    assert tr.closed


def test_no_leftover_fixture_state() -> None:
    # Sanity: the fake transport rejects writes after close (guards the tests above).
    tr = FakeTransport()
    tr.close()
    with pytest.raises(AssertionError):
        tr.write(b"x")



# -- a refusal behind a request in a pipeline is answered in its turn ------------------------
BAD_HEAD = b"GET http://origin.test/c HTTP/1.1\r\nHost: origin.test\r\nContent-Length: x\r\n\r\n"


def _statuses(out: bytes) -> list[bytes]:
    """The status of each response in ``out`` (the bodies here are short and plain)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", out)


async def test_malformed_head_behind_a_request_is_answered_after_it(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET + BAD_HEAD)
    assert up_tr.take().startswith(b"GET /a ")  # the good request goes upstream
    assert tr.take() == b"" and not tr.closed and not tr.reading  # no 400 in its place
    up.data_received(OK)
    out = tr.take()
    assert _statuses(out) == [b"200", b"400"]
    assert out.index(b"\r\n\r\nhi") < out.index(b"400 Bad Request")
    assert tr.closed


async def test_malformed_head_behind_two_requests_waits_for_both(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET + GET.replace(b"/a", b"/b") + BAD_HEAD)
    assert up_tr.take().startswith(b"GET /a ")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    await asyncio.sleep(0)  # the next request starts on the loop's next turn
    assert up_tr.take().startswith(b"GET /b ")
    assert _statuses(tr.take()) == [b"200"] and not tr.reading  # still not reading on
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    out = tr.take()
    assert _statuses(out) == [b"200", b"400"] and out.startswith(b"HTTP/1.1 200 OK") and tr.closed


async def test_malformed_body_of_a_queued_request_is_answered_in_its_turn(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    bad_chunked = (b"POST http://origin.test/p HTTP/1.1\r\nHost: origin.test\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    ds.data_received(GET + bad_chunked)
    assert up_tr.take().startswith(b"GET /a ")
    assert tr.take() == b"" and not tr.closed
    up.data_received(OK)
    out = tr.take()
    assert _statuses(out) == [b"200", b"400"] and tr.closed
    assert up_tr.take() == b""  # the refused POST never went upstream


async def test_malformed_body_of_the_current_request_is_answered_at_once(engine: Engine) -> None:
    park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(b"POST http://origin.test/p HTTP/1.1\r\nHost: origin.test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert _statuses(tr.take()) == [b"400"] and tr.closed


async def test_tunnel_request_pipelined_behind_a_request_is_refused_in_its_turn(engine: Engine) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET + b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    assert up_tr.take().startswith(b"GET /a ")
    assert tr.take() == b""  # used to be a 502 written ahead of the GET's response
    up.data_received(OK)
    out = tr.take()
    assert _statuses(out) == [b"200", b"400"] and tr.closed
    assert b"tunnel request pipelined behind a request" in out


async def test_a_refusal_with_nothing_in_flight_is_answered_at_once(engine: Engine) -> None:
    ds, tr = client(engine)
    ds.data_received(BAD_HEAD)
    assert _statuses(tr.take()) == [b"400"] and tr.closed


@pytest.mark.parametrize("bad", [
    b"\x01BAD / HTTP/1.1\r\n\r\n",  # no method
    b"GET /x HTTP/1.1\r\nHost: origin.test\r\nHost: other.test\r\n\r\n",  # two Hosts
    b"GET http://origin.test/# HTTP/1.1\r\nHost: origin.test\r\n\r\n",  # a fragment
    b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: gzip\r\n\r\n",
])
async def test_every_refused_spelling_behind_a_request_waits_its_turn(engine: Engine, bad: bytes) -> None:
    up, _ = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET + bad)
    assert tr.take() == b"" and not tr.closed
    up.data_received(OK)
    out = tr.take()
    assert _statuses(out)[0] == b"200" and len(_statuses(out)) == 2 and _statuses(out)[1].startswith(b"4")
    assert tr.closed
