"""The admin listener: status, health, reload and cache purge over plain HTTP.

Loopback-only by default (the config refuses other addresses unless
`admin.allow_remote` is set), one request per connection, tiny JSON bodies.
It reuses the strict request parser; nothing here is on the proxy hot path.

    GET  /healthz                 200 "ok" (liveness)
    GET  /status                  JSON: connections, upstream servers and health
    POST /reload                  same as SIGHUP; 200 when the new config took effect, 409 if refused
    POST /purge?url=URL           drop one cached URL (all variants)
    POST /purge?prefix=URL        drop every cached URL starting with the prefix
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from ferryman.conn.engine import Engine
from ferryman.errors import FerrymanError
from ferryman.http1 import serialize as ser
from ferryman.http1.events import RequestHead
from ferryman.http1.parser import RequestParser

log = logging.getLogger("ferryman")

Reload = Callable[[], Awaitable[bool]]


def _json(status: int, obj: object) -> bytes:
    body = json.dumps(obj, indent=1).encode() + b"\n"
    return ser.fixed_response(status, b"application/json", body)


def status_document(engine: Engine) -> dict[str, Any]:
    groups = {}
    for name, g in engine.groups.items():
        groups[name] = [
            {
                "url": s.plan.url,
                "healthy": s.state.healthy,
                "ejected": s.ejected,
                "active": s.state.active,
                "backup": s.plan.backup,
                "weight": s.plan.weight,
            }
            for s in g.servers
        ]
    return {
        "connections": len(engine.connections),
        "idle_upstream_connections": engine.pool.idle_count(),
        "draining": engine.draining,
        "config": engine.plan.source,
        "upstreams": groups,
        "queued": {name: g.queued for name, g in engine.groups.items()},  # waiting for a free server
        "cache": engine.cache_status(),
    }


class AdminProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, reload: Reload) -> None:
        self.engine = engine
        self.reload = reload
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser(self, 16384, 4096, 50)
        self.head: RequestHead | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(10.0, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except FerrymanError as exc:
            self._send(ser.simple_response(exc.status, exc.detail, close=True))

    def on_request_head(self, head: RequestHead) -> None:
        self.head = head

    def on_request_body(self, data: bytes) -> None:
        pass  # admin calls carry their arguments in the query string

    def on_request_end(self) -> None:
        head = self.head
        if head is None or self.transport is None:
            return
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._handle(head))

    async def _handle(self, head: RequestHead) -> None:
        url = urlsplit(head.target.decode("latin-1"))
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path, method = url.path, head.method
        try:
            if path == "/healthz" and method in ("GET", "HEAD"):
                out = ser.fixed_response(200, b"text/plain", b"ok\n")
            elif path == "/status" and method == "GET":
                out = _json(200, status_document(self.engine))
            elif path == "/reload" and method == "POST":
                ok = await self.reload()
                out = _json(200 if ok else 409, {"reloaded": ok})
            elif path == "/purge" and method in ("POST", "PURGE", "DELETE"):
                out = await self._purge(args)
            else:
                out = _json(404, {"error": f"no admin endpoint {method} {path}"})
        except Exception as exc:  # noqa: BLE001 - an admin call must answer, whatever broke
            log.exception("ferryman: admin %s %s failed", method, path)
            out = _json(500, {"error": str(exc)})
        self._send(out)

    async def _purge(self, args: dict[str, str]) -> bytes:
        if self.engine.cache is None:
            return _json(404, {"error": "no cache configured"})
        purge = self.engine.purge
        if "url" in args:
            n = await purge(args["url"], prefix=False)
        elif "prefix" in args:
            n = await purge(args["prefix"], prefix=True)
        else:
            return _json(400, {"error": "give url=URL or prefix=URL"})
        return _json(200, {"purged": n})

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()
