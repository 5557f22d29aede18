"""Byte relay between two transports: CONNECT tunnels and upgrades (after a 101).

State table, per direction:  open -> half-closed (EOF passed on with
write_eof) -> closed.  The tunnel ends when both directions are half-closed,
either side is lost, or nothing moved for ``idle`` seconds.  A TLS transport
cannot half-close (``can_write_eof()`` is False): when either side of a tunnel
with a TLS leg ends, the tunnel ends, both transports flushing what they hold
before they close, so a wss client sees its backend go away at once.
Backpressure: when one side's write buffer fills, the other side stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from ferryman.conn.clock import Clock


class RelaySide(asyncio.Protocol):
    __slots__ = ("transport", "peer", "tunnel", "pending", "eof", "bytes_read", "head_waiter",
                 "_head_buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: RelaySide | None = None
        self.tunnel: Tunnel | None = None
        self.pending: list[bytes] = []
        self.eof = False
        self.bytes_read = 0
        # Set while waiting for a parent proxy's answer to our CONNECT.
        self.head_waiter: asyncio.Future[tuple[bytes, bytes]] | None = None
        self._head_buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.head_waiter is not None:
            self._head_buf += data
            end = self._head_buf.find(b"\r\n\r\n")
            if end >= 0:
                waiter, self.head_waiter = self.head_waiter, None
                head, rest = self._head_buf[: end + 4], self._head_buf[end + 4 :]
                self._head_buf = b""
                if not waiter.done():
                    waiter.set_result((head, rest))
            elif len(self._head_buf) > 16384:
                waiter, self.head_waiter = self.head_waiter, None
                if not waiter.done():
                    waiter.set_exception(ValueError("parent proxy answer too large"))
            return
        self.bytes_read += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            if self.tunnel is not None:
                self.tunnel.touch()
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        if self.head_waiter is not None:
            waiter, self.head_waiter = self.head_waiter, None
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("closed before answering CONNECT"))
            return False
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            mine = self.transport
            if peer.transport.can_write_eof() and mine is not None and mine.can_write_eof():
                peer.transport.write_eof()
            elif self.tunnel is not None:
                # A TLS leg cannot pass a half-close on (nor go on after its own end):
                # end the tunnel; close() sends what is buffered first.
                self.tunnel.close()
                return False
        if self.tunnel is not None:
            self.tunnel.check_done()
        return True  # keep our write side open: half-close (RFC 9110 9.3.6)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_waiter is not None:
            waiter, self.head_waiter = self.head_waiter, None
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost"))
        if self.tunnel is not None:
            self.tunnel.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Tunnel:
    """Two `RelaySide`s glued together, with one idle deadline for both."""

    def __init__(
        self,
        client: RelaySide,
        upstream: RelaySide,
        idle: float,
        on_close: Callable[[Tunnel], None],
        clock: Clock,
    ) -> None:
        self.clock = clock
        self.client = client
        self.upstream = upstream
        self.idle = idle
        self.closed = False
        self._on_close = on_close
        self._last = clock.time()
        self._timer = clock.call_later(idle, self._on_timer)
        client.peer, upstream.peer = upstream, client
        client.tunnel = upstream.tunnel = self

    def start(self) -> None:
        """Flush bytes either side sent before the tunnel was joined."""
        for side in (self.client, self.upstream):
            if side.pending and side.peer is not None and side.peer.transport is not None:
                side.peer.transport.writelines(side.pending)
                side.pending = []

    @property
    def bytes_from_client(self) -> int:
        return self.client.bytes_read

    @property
    def bytes_from_upstream(self) -> int:
        return self.upstream.bytes_read

    def touch(self) -> None:
        self._last = self.clock.time()

    def _on_timer(self) -> None:
        left = self._last + self.idle - self.clock.time()
        if left > 0:
            self._timer = self.clock.call_later(left, self._on_timer)
        else:
            self.close()

    def check_done(self) -> None:
        if self.client.eof and self.upstream.eof:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()
        self._on_close(self)


def join(
    transport: asyncio.Transport,
    pending: list[bytes],
    eof: bool,
    upstream: RelaySide,
    idle: float,
    on_close: Callable[[Tunnel], None],
    clock: Clock,
) -> Tunnel:
    """Glue a client's transport (with the bytes it sent early, ``pending``, and whether it
    already half-closed, ``eof``) to ``upstream`` and start relaying."""
    client = RelaySide()
    client.transport = transport
    client.pending = pending
    for data in pending:
        client.bytes_read += len(data)
    tunnel = Tunnel(client, upstream, idle, on_close, clock)
    transport.set_protocol(client)
    transport.resume_reading()
    if upstream.transport is not None:
        upstream.transport.resume_reading()
    tunnel.start()
    if eof:
        client.eof_received()
    return tunnel
