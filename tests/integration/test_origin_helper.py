"""The test origin itself (tests/helpers/origin.py): what the other tests rely on when it stops."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from tests.helpers.origin import Backend


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
