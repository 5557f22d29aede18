"""The test helpers themselves (tests/helpers/): what every other test relies on, where a
slow or busy machine could make them lie (a leaked socket, a port taken by another process)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import procs
from tests.helpers.origin import Backend, backends
from tests.helpers.procs import PortTaken, run_reverse, upstream


def test_connections_accepted_as_the_origin_stops_are_closed_not_leaked() -> None:
    """A connection the origin's loop accepts in the very turn that stops it (a health check
    arriving as a test stops a backend) gets its transport and is closed.  asyncio cannot
    make a transport once its server is closed and leaves such a socket to the garbage
    collector, whose ResourceWarning then fails whichever test is running."""
    b = Backend("b").start()
    server = b._server
    errors: list[dict[str, Any]] = []
    server.loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    clients: list[socket.socket] = []
    try:
        held, hold = threading.Event(), threading.Event()

        def stall() -> None:
            held.set()
            hold.wait(10)

        server.loop.call_soon_threadsafe(stall)  # the origin's loop stops turning ...
        assert held.wait(10)
        for _ in range(5):  # ... while clients connect (the kernel queues them) ...
            clients.append(socket.create_connection(("127.0.0.1", b.port), timeout=5))
        # ... and the stop is queued before the loop sees them: it runs in their accept's turn.
        stopped = asyncio.run_coroutine_threadsafe(server._stop(True), server.loop)
        hold.set()
        stopped.result(10)
        for c in clients:  # every one is closed by the origin (EOF or reset), none left open
            try:
                assert c.recv(1) == b""
            except ConnectionResetError:
                pass
        assert errors == []
    finally:
        for c in clients:
            c.close()
        b.close()


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other process listens on (as one that bound it after `free_port` chose it)."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


def _app(app: Backend) -> dict[str, Any]:
    return {"routes": [{"upstream": "app"}], "upstreams": {"app": upstream(app.url)}}


def test_a_port_another_process_listens_on_is_not_taken_for_ferryman(tmp_path: Path, taken: int) -> None:
    with backends("app") as (app,), pytest.raises(PortTaken, match="in use"), \
            run_reverse(tmp_path, port=taken, **_app(app)):
        pytest.fail("ready, on the word of whatever listened on the port")


def test_a_port_chosen_for_ferryman_and_taken_meanwhile_is_chosen_again(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = iter([taken, procs.free_port()])
    monkeypatch.setattr(procs, "free_port", lambda: next(chosen))
    with backends("app") as (app,), run_reverse(tmp_path, **_app(app)) as fm:
        assert fm.port != taken
        with socket.create_connection(("127.0.0.1", fm.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert c.recv(65536).startswith(b"HTTP/1.1 200 ")
