"""The client connection as the code around it sees it (a narrow interface).

`Downstream` (conn/downstream.py) is the one implementation.  The relay, the
responder, the cache flow, CONNECT and the upstream queue are typed against
`ClientConn` instead, so none of them imports the Protocol class that imports
them (no import circle), and what they may do to the connection is listed here:
they change its state only through `to`, never by writing its fields.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ferryman.conn.clock import Clock
from ferryman.conn.exchange import Exchange
from ferryman.conn.state import Deadlines, State, StateError
from ferryman.conn.tunnel import RelaySide
from ferryman.errors import FerrymanError
from ferryman.http1.events import Headers
from ferryman.pipeline.cache.store import BodyReader
from ferryman.upstream.group import Lease


class Writer(Protocol):
    """Writing an answer to the client (conn/responder.py): cache hits, followers,
    ferryman's own answers."""

    def send_synthetic(self, ex: Exchange, status: int, text: str, extra: Headers = ...) -> None: ...

    def begin_stream(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        has_body: bool, length: int | None = None,
    ) -> None: ...

    def write_whole(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        body: bytes | None,
    ) -> None: ...

    def stream_chunk(self, ex: Exchange, data: bytes) -> bool: ...

    def end_stream(self, ex: Exchange) -> None: ...

    def write_cached(
        self, ex: Exchange, status: int, reason: bytes, hdrs: Headers, extra: bytes,
        body: object, start: int, end: int,
    ) -> None: ...

    async def stream_cached(
        self, ex: Exchange, status: int, reason: bytes | None, hdrs: Headers, extra: bytes,
        reader: BodyReader | None, start: int, end: int,
    ) -> None: ...

    def abort_after_partial(self, ex: Exchange, reason: str) -> None: ...

    def resume_proxy(self, ex: Exchange) -> None: ...


class ClientConn(Protocol):
    """One client connection: its exchange, its state, and what may be asked of it."""

    @property
    def responder(self) -> Writer:
        """Writes the answers that do not come from an upstream (conn/responder.py)."""

    loop: asyncio.AbstractEventLoop
    clock: Clock
    transport: asyncio.Transport | None
    cur: Exchange | None  # the exchange being served
    reverse: bool  # a reverse-proxy listener
    write_paused: bool  # the client's transport asked us to stop writing

    @property
    def closed(self) -> bool: ...

    @property
    def state(self) -> State: ...

    def to(self, new: State, deadlines: Deadlines | None = None) -> None:
        """Move to ``new`` (checked against conn/state.py), arming its deadline."""

    def touch(self) -> None:
        """Bytes moved: an activity deadline counts from now."""

    def write(self, ex: Exchange, data: bytes) -> None:
        """Write part of the answer's head or body as it is (counted in the log)."""

    def write_body(self, ex: Exchange, data: bytes) -> None:
        """One piece of the answer's body, framed as its head said."""

    def finish(self, ex: Exchange) -> None: ...

    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None: ...

    def log(self, ex: Exchange) -> None: ...

    def abort(self) -> None: ...

    def proxy(self, ex: Exchange) -> None:
        """Send the request upstream (again): pick a server, or queue for one."""

    def send_to(self, ex: Exchange, lease: Lease | None) -> None: ...

    def pause(self, why: int) -> None: ...

    def resume(self, why: int) -> None: ...

    async def wait_writable(self) -> None: ...

    # -- tunnels (conn/connect.py)
    def hold_for_tunnel(self) -> bool:
        """Bytes the client sends from now on belong to a tunnel that is being opened
        (False: they were held already)."""

    def drop_tunnel_hold(self) -> None:
        """No tunnel after all (refused upgrade, failed CONNECT)."""

    def join_tunnel(self, ex: Exchange, upstream: RelaySide, idle: float) -> None:
        """The exchange becomes a tunnel between the client and ``upstream``."""


class Gone:
    """What the parts of a client connection point at once it ended with nothing in flight
    (`Downstream.connection_lost`), instead of at it: a connection closed for good, on which nothing
    is written and no state moves (as on the closed connection itself).  Pointing there ends
    the reference cycles between the connection and its parts, so reference counting frees
    them all when it closes, not the garbage collector some passes later."""

    loop: asyncio.AbstractEventLoop  # never read: nothing starts on a closed connection
    clock: Clock
    transport: asyncio.Transport | None = None
    cur: Exchange | None = None
    reverse = False
    write_paused = False

    @property
    def responder(self) -> Writer:
        raise StateError("client connection: closed")

    @property
    def closed(self) -> bool:
        return True

    @property
    def state(self) -> State:
        return State.CLOSED

    def to(self, new: State, deadlines: Deadlines | None = None) -> None:
        if new is not State.CLOSED:
            raise StateError(f"client connection: CLOSED -> {new.name} is not a move of the table")

    def touch(self) -> None:
        pass

    def write(self, ex: Exchange, data: bytes) -> None:
        pass

    def write_body(self, ex: Exchange, data: bytes) -> None:
        pass

    def finish(self, ex: Exchange) -> None:
        pass

    def fail(self, ex: Exchange | None, exc: FerrymanError) -> None:
        pass

    def log(self, ex: Exchange) -> None:
        pass

    def abort(self) -> None:
        pass

    def proxy(self, ex: Exchange) -> None:
        pass

    def send_to(self, ex: Exchange, lease: Lease | None) -> None:
        pass

    def pause(self, why: int) -> None:
        pass

    def resume(self, why: int) -> None:
        pass

    async def wait_writable(self) -> None:
        pass

    def hold_for_tunnel(self) -> bool:
        return False

    def drop_tunnel_hold(self) -> None:
        pass

    def join_tunnel(self, ex: Exchange, upstream: RelaySide, idle: float) -> None:
        pass


GONE: ClientConn = Gone()
