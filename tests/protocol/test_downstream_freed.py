"""A client connection that ends with nothing in flight is freed by reference counting:
its parts (decider, relay, responder) and its parser stop pointing back at it, so it is
no cycle left for the garbage collector (whose passes cost a new-connection-per-request
workload some 4% of its instructions)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ferryman.conn.client import GONE
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from tests.protocol.test_downstream import GET, OK, client, park_upstream


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The collector off, and what it finds kept in gc.garbage for the test to look at."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()


def _cyclic_downstreams() -> list[Downstream]:
    gc.collect()
    return [o for o in gc.garbage if isinstance(o, Downstream)]


async def test_a_connection_closed_after_its_exchange_is_no_cycle(engine: Engine, no_collector: None) -> None:
    up, up_tr = park_upstream(engine)
    ds, tr = client(engine)
    ds.data_received(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    up.data_received(OK)
    assert tr.take().endswith(b"\r\n\r\nhi") and tr.closed
    ds.connection_lost(None)
    assert ds.relay.conn is GONE and ds.responder.conn is GONE and ds.decider.conn is GONE
    del ds
    assert _cyclic_downstreams() == []


async def test_an_idle_connection_closed_by_the_client_is_no_cycle(
    engine: Engine, no_collector: None
) -> None:
    ds, _ = client(engine)
    ds.connection_lost(None)
    del ds
    assert _cyclic_downstreams() == []


async def test_a_connection_left_mid_exchange_keeps_its_parts(engine: Engine) -> None:
    """The client left with an exchange in flight: tasks of that exchange may still reach
    the parts, which go on pointing at the (closed) connection itself."""
    park_upstream(engine)
    ds, _ = client(engine)
    ds.data_received(GET)
    assert ds.cur is not None
    ds.connection_lost(None)
    assert ds.relay.conn is ds and ds.responder.conn is ds and ds.closed
