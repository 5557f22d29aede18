"""The admin listener: status, health, reload and cache purge over plain HTTP.

Loopback-only by default (the config refuses other addresses unless
`admin.allow_remote` is set), one request per connection, tiny JSON bodies.
It reuses the strict request parser; nothing here is on the proxy hot path.

    GET  /healthz                 200 "ok" (liveness)
    GET  /status                  JSON: connections, upstream servers and health
    POST /reload                  same as SIGHUP; 200 when the new config took effect, 409 if refused
                                  (during a reload: answered after the one that follows it)
    POST /purge?url=URL           drop one cached URL (all variants); or a JSON body {"url": URL}
    POST /purge?prefix=URL        drop every cached URL starting with the prefix; or {"prefix": URL}

Rules that keep a browser from driving it (`host_allowed`, `may_change_state`):
- ``Host`` must be a loopback name or address (``localhost``, ``*.localhost``,
  127.0.0.0/8, ::1), the listen address, or one of ``admin.allowed_hosts``: a
  page whose name was rebound to 127.0.0.1 (DNS rebinding) gets a 403;
- a state-changing call (reload, purge) must carry ``Content-Type:
  application/json`` or an ``X-Ferryman-Admin`` header, which no form or simple
  cross-site request can send without a CORS preflight; ferryman answers no
  preflight and sends no ``Access-Control-*`` field, so none is ever granted.
The proxy itself refuses requests to the admin listener as a loop (508).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from ferryman.conn.engine import Engine
from ferryman.errors import BodyTooLarge, FerrymanError
from ferryman.http1.events import RequestHead
from ferryman.http1.parser import RequestParser
from ferryman.pipeline import respond
from ferryman.pipeline.admit.safety import unmapped_ip

log = logging.getLogger("ferryman")

Reload = Callable[[], Awaitable[bool]]

MAX_BODY = 64 * 1024
ADMIN_HEADER = b"x-ferryman-admin"
_NEEDS = "Content-Type: application/json (a JSON body) or an X-Ferryman-Admin header"


def host_allowed(host: bytes | None, allowed: frozenset[str]) -> bool:
    """Whether the admin API answers a request with this Host value (pure)."""
    if host is None:
        return True  # HTTP/1.0 without Host: no browser sends that
    h = host.decode("latin-1").strip().lower()
    if h.startswith("["):
        h = h[1 : h.find("]")] if "]" in h else h
    else:
        h = h.partition(":")[0]
    h = h.removesuffix(".")
    if h == "localhost" or h.endswith(".localhost") or h in allowed:
        return True
    addr = unmapped_ip(h)
    return addr is not None and addr.is_loopback


def is_json(head: RequestHead) -> bool:
    for name, value in head.headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def may_change_state(head: RequestHead) -> bool:
    """A JSON body or the custom header: what a cross-site form or simple request cannot send."""
    return is_json(head) or any(name.lower() == ADMIN_HEADER for name, _ in head.headers)


def _json(status: int, obj: object) -> bytes:
    return respond.json(status, obj)


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
        # proxy users (forward.auth): requests and bytes per user, this worker's
        "users": engine.usage.snapshot() if engine.auth.plan is not None or len(engine.usage) else None,
        "auth": engine.auth.status(),
    }


class AdminProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, reload: Reload) -> None:
        self.engine = engine
        self.reload = reload
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser(self, 16384, 4096, 50)
        self.head: RequestHead | None = None
        self.body: list[bytes] = []
        self.body_len = 0
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
            self._send(respond.text(exc.status, exc.detail, close=True))

    def on_request_head(self, head: RequestHead) -> None:
        self.head = head

    def on_request_body(self, data: bytes) -> None:
        self.body_len += len(data)
        if self.body_len > MAX_BODY:
            raise BodyTooLarge(f"admin request body over {MAX_BODY} bytes")
        self.body.append(data)

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
        body = self._json_body() if is_json(head) else {}
        try:
            if not host_allowed(head.host, self.engine.plan.admin_hosts):
                shown = (head.host or b"").decode("latin-1")[:100]
                out = _json(403, {"error": f"Host {shown!r} is not a name of this admin API "
                                           "(loopback names, or admin.allowed_hosts)"})
            elif path in ("/reload", "/purge") and not may_change_state(head):
                out = _json(403, {"error": f"{method} {path} needs {_NEEDS}"})
            elif path in ("/reload", "/purge") and body is None:
                out = _json(400, {"error": "the body must be a JSON object"})
            elif path == "/healthz" and method in ("GET", "HEAD"):
                out = respond.fixed(200, b"text/plain", b"ok\n")
            elif path == "/status" and method == "GET":
                out = _json(200, status_document(self.engine))
            elif path == "/reload" and method == "POST":
                ok = await self.reload()
                out = _json(200 if ok else 409, {"reloaded": ok})
            elif path == "/purge" and method in ("POST", "PURGE", "DELETE"):
                if body:
                    args.update({k: v for k, v in body.items() if isinstance(v, str)})
                out = await self._purge(args)
            else:
                out = _json(404, {"error": f"no admin endpoint {method} {path}"})
        except Exception as exc:  # noqa: BLE001 - an admin call must answer, whatever broke
            log.exception("ferryman: admin %s %s failed", method, path)
            out = _json(500, {"error": str(exc)})
        self._send(respond.bodiless(out) if method == "HEAD" else out)

    def _json_body(self) -> dict[str, object] | None:
        """The JSON object sent (an empty body is ``{}``), or None if it is not one."""
        raw = b"".join(self.body)
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

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
