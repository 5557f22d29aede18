"""Binding listening sockets (the ACCEPT phase).

A `Bound` listener keeps its socket across reloads: what its new connections
are made from (the ListenerPlan: mode, PROXY protocol...) and its TLS
certificates are swapped in place.  Only a change of address or of TLS on/off
binds a new socket.
"""

from __future__ import annotations

import asyncio
import socket

from ferryman.config.compile import ListenerPlan
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.server.tls import ServerTls


class Bound:
    def __init__(self, lp: ListenerPlan) -> None:
        self.plan = lp
        self.tls = ServerTls(lp.tls) if lp.tls is not None else None
        self.server: asyncio.Server | None = None

    def update(self, lp: ListenerPlan) -> None:
        """New settings for later connections (raises on bad certificates: reload refused)."""
        if self.tls is not None and lp.tls is not None:
            self.tls.update(lp.tls)
        self.plan = lp

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def start_listener(engine: Engine, bound: Bound, reuse_port: bool = False) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    lp = bound.plan
    host: str | None = lp.host
    if host in ("0.0.0.0", "*", ""):
        host = None  # every interface, IPv4 and IPv6
    bound.server = await loop.create_server(
        lambda: Downstream(engine, bound.plan),
        host,
        lp.port,
        family=socket.AF_UNSPEC,
        backlog=lp.backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
        ssl=bound.tls.default if bound.tls is not None else None,
    )
    return bound.server


def listener_key(lp: ListenerPlan) -> tuple[str, int, bool]:
    return (lp.host, lp.port, lp.tls is not None)
