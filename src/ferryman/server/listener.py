"""Binding listening sockets (the ACCEPT phase).

A `Bound` listener keeps its socket across reloads: what its new connections
are made from (the ListenerPlan: mode, PROXY protocol...) and its TLS
certificates are swapped in place.  Only a change of address or of TLS on/off
binds a new socket.

How a connection starts depends on the listener's *shape*:
- a TLS listener without PROXY protocol is served by the event loop's TLS
  server, built with ``timeouts.tls_handshake`` as its handshake timeout;
- any other listener accepts plain TCP: `conn/accept.py` reads a PROXY header
  in cleartext first where one is expected (and then runs the handshake on a
  TLS listener), else the connection goes straight to `Downstream`.
A reload that changes the shape (PROXY protocol on/off on a TLS listener, a new
handshake timeout) builds a new server on a duplicate of the same listening
socket and then closes the old one: the socket, and its accept queue, stay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from ferryman.conn.accept import protocol_for
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.pipeline.plan import ListenerPlan
from ferryman.server.tls import ServerTls

log = logging.getLogger("ferryman")


def _shape(lp: ListenerPlan) -> tuple[bool, float]:
    native_tls = lp.tls is not None and not lp.proxy_protocol
    return native_tls, lp.tls_handshake if native_tls else 0.0


class Bound:
    def __init__(self, lp: ListenerPlan) -> None:
        self.plan = lp
        self.tls = ServerTls(lp.tls) if lp.tls is not None else None
        self.servers: list[asyncio.Server] = []
        self.engine: Engine | None = None
        self._shape = _shape(lp)
        self._swap: asyncio.Task[None] | None = None
        self._held: list[socket.socket] = []  # listening sockets while accepting is held

    def update(self, lp: ListenerPlan) -> None:
        """New settings for later connections (raises on bad certificates: reload refused)."""
        if self.tls is not None and lp.tls is not None:
            self.tls.update(lp.tls)
        self.plan = lp
        if _shape(lp) != self._shape and self.servers and self.engine is not None:
            self._shape = _shape(lp)
            self._swap = asyncio.get_running_loop().create_task(self._reserve())

    async def _reserve(self) -> None:
        """Serve the same sockets with a server of the new shape, then close the old one."""
        assert self.engine is not None
        old = self.servers
        loop = asyncio.get_running_loop()
        new: list[asyncio.Server] = []
        try:
            for server in old:
                for s in server.sockets:
                    dup = socket.socket(s.family, s.type, s.proto, os.dup(s.fileno()))
                    new.append(await _serve_socket(loop, self.engine, self, dup))
        except OSError as exc:
            for server in new:
                server.close()
            log.error("ferryman: listener %s keeps its old TLS settings: %s", self.plan.name, exc)
            return
        self.servers = new
        for server in old:
            server.close()

    def hold(self) -> None:
        """Stop accepting but keep the listening sockets, and so their accept queues: clients
        wait there (out of descriptors) instead of being accepted and dropped."""
        if self._held or not self.servers or self.engine is None:
            return
        held = []
        try:
            for server in self.servers:
                for s in server.sockets:
                    held.append(socket.socket(s.family, s.type, s.proto, os.dup(s.fileno())))
        except OSError:
            for s in held:
                s.close()
            return  # not even a descriptor to hold them: keep accepting
        for server in self.servers:
            server.close()
        self.servers = []
        self._held = held

    async def unhold(self) -> None:
        held, self._held = self._held, []
        assert self.engine is not None or not held
        loop = asyncio.get_running_loop()
        for sock in held:
            assert self.engine is not None
            self.servers.append(await _serve_socket(loop, self.engine, self, sock))

    def close(self) -> None:
        for s in self._held:
            s.close()
        self._held = []
        for server in self.servers:
            server.close()
        if self._swap is not None:
            self._swap.cancel()


def _factory(engine: Engine, bound: Bound) -> Callable[[], asyncio.BaseProtocol]:
    accepting = engine.accepting  # called at each accept: the descriptor check (engine.py)
    if _shape(bound.plan)[0]:

        def native() -> asyncio.BaseProtocol:
            accepting()
            return Downstream(engine, bound.plan)  # the loop's TLS server wraps it

        return native

    def plain() -> asyncio.BaseProtocol:
        accepting()
        return protocol_for(engine, bound.plan, bound.tls.default if bound.tls is not None else None)

    return plain


async def _serve_socket(
    loop: asyncio.AbstractEventLoop, engine: Engine, bound: Bound, sock: socket.socket
) -> asyncio.Server:
    native_tls, handshake = _shape(bound.plan)
    assert not native_tls or bound.tls is not None
    return await loop.create_server(
        _factory(engine, bound),
        sock=sock,
        backlog=bound.plan.backlog,
        ssl=bound.tls.default if native_tls and bound.tls is not None else None,
        ssl_handshake_timeout=handshake if native_tls else None,
    )


async def start_listener(engine: Engine, bound: Bound, reuse_port: bool = False) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    lp = bound.plan
    host: str | None = lp.host
    if host in ("0.0.0.0", "*", ""):
        host = None  # every interface, IPv4 and IPv6
    native_tls, handshake = _shape(lp)
    bound.engine = engine
    bound._shape = (native_tls, handshake)
    server = await loop.create_server(
        _factory(engine, bound),
        host,
        lp.port,
        family=socket.AF_UNSPEC,
        backlog=lp.backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
        ssl=bound.tls.default if native_tls and bound.tls is not None else None,
        ssl_handshake_timeout=handshake if native_tls else None,
    )
    bound.servers = [server]
    return bound.servers


def listener_key(lp: ListenerPlan) -> tuple[str, int, bool]:
    return (lp.host, lp.port, lp.tls is not None)
