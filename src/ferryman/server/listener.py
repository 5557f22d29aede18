"""Binding listening sockets (the ACCEPT phase)."""

from __future__ import annotations

import asyncio
import socket

from ferryman.config.compile import ListenerPlan
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.server.tls import server_context


async def start_listener(engine: Engine, lp: ListenerPlan, reuse_port: bool = False) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    host: str | None = lp.host
    if host in ("0.0.0.0", "*", ""):
        host = None  # every interface, IPv4 and IPv6
    return await loop.create_server(
        lambda: Downstream(engine, lp),
        host,
        lp.port,
        family=socket.AF_UNSPEC,
        backlog=lp.backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
        ssl=server_context(lp.tls) if lp.tls is not None else None,
    )


def listener_key(lp: ListenerPlan) -> tuple[str, int]:
    return (lp.host, lp.port)
