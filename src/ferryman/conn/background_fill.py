"""Range misses: fetch the whole object once in the background so later ranges hit.

The OS-update case: a hundred clients ask for pieces of one large file. The
first Range request passes through to the origin untouched while this task
GETs the full object (no Range, no validators) into the store, through the
same next hop the request was routed to. At most one such fill per key runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from ferryman.errors import FerrymanError
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, Headers, RequestHead, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.http1.parser import ResponseParser
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.store import EntryMeta, Writer
from ferryman.pipeline.stage import Proxy
from ferryman.upstream.dial import open_connection

if TYPE_CHECKING:
    from ferryman.conn.cache_flow import Cache
    from ferryman.conn.engine import Engine

log = logging.getLogger("ferryman")
_DROP = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match"})


class _FillClient(asyncio.Protocol):
    def __init__(self, cache: Cache, key: bytes, req: RequestHead, rules: policy.Rules) -> None:
        self.cache, self.key, self.req, self.rules = cache, key, req, rules
        self.parser = ResponseParser(self, 65536, 200)
        self.writer: Writer | None = None
        self.entry: policy.Entry | None = None
        self.variant = b""
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.t0 = time.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except FerrymanError:
            self._finish(False)

    def eof_received(self) -> bool | None:
        try:
            self.parser.finish()
        except FerrymanError:
            self._finish(False)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False)

    def on_response_head(self, head: ResponseHead) -> None:
        if head.status < 200:
            return
        stored = forward_response_headers(head.headers, head.connection_tokens, None)
        if head.status != 200 or not policy.storable("GET", 200, self.req.headers, head.headers, self.rules):
            self._finish(False)
            return
        now = time.time()
        self.entry = policy.make_entry(200, self.req.headers, stored, self.t0, now, self.rules)
        from ferryman.conn.cache_flow import variant_bytes

        self.variant = variant_bytes(self.entry.vary)
        size = head.content_length if head.framing is Framing.LENGTH else 0
        meta = EntryMeta(
            self.key, self.variant, 200, tuple(stored), tuple(self.req.headers), self.t0, now, size
        )
        self.writer = self.cache.store.begin(meta)
        if self.writer is None:
            self._finish(False)

    def on_response_body(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
            wait = self.writer.ready()
            transport = self.transport
            if wait is not None and transport is not None:
                transport.pause_reading()  # the store is behind: let it catch up
                wait.add_done_callback(lambda _: _resume(transport))

    def on_response_end(self) -> None:
        if self.writer is not None and self.entry is not None:
            asyncio.get_running_loop().create_task(self._commit())
        else:
            self._finish(False)

    async def _commit(self) -> None:
        writer, self.writer = self.writer, None
        ok = writer is not None and await writer.commit()
        if ok and writer is not None and self.entry is not None:
            from ferryman.conn.cache_flow import Stored

            version = writer.meta.version
            self.cache.remember(self.key, Stored(self.entry, self.variant, version))
        self._finish(ok)

    def _finish(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if not self.done.done():
            self.done.set_result(ok)
        if self.transport is not None:
            self.transport.close()


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()


async def fill_whole_object(
    engine: Engine, cache: Cache, d: Proxy, req: RequestHead, key: bytes, rules: policy.Rules, client_ip: str
) -> None:
    plan = engine.plan
    try:
        if d.group is not None:
            group = engine.groups.get(d.group)
            server = group.pick(client_ip, req, time.monotonic(), frozenset()) if group else None
            if server is None:
                return
            host, port, ssl_ctx, sni = server.plan.host, server.plan.port, server.ssl, server.tls_name
            authority = server.plan.authority if d.host_from_server else d.host
        else:
            assert d.next_hop is not None
            _, host, port = d.next_hop
            ssl_ctx = engine.tls_context if d.tls_name else None
            sni, authority = d.tls_name, d.host
        headers: Headers = [(n, v) for n, v in d.fields() if n.lower() not in _DROP]
        headers.append((b"Connection", b"close"))
        addrs = await engine.resolver.resolve(host, port)
        if d.address_check is not None:
            addrs = d.address_check.admit(addrs)
        if d.group is None and any(engine.is_self(str(a[1][0]), port) for a in addrs):
            return  # a loop (the request itself was refused with 508 already)
        _, proto = await open_connection(
            addrs, lambda: _FillClient(cache, key, req, rules), plan.timeouts.upstream_connect, ssl_ctx, sni
        )
        client = cast(_FillClient, proto)
        assert client.transport is not None
        client.transport.write(ser.request_head("GET", d.target, authority, headers, Framing.NONE, 0))
        async with asyncio.timeout(plan.timeouts.upstream_header + 600.0):
            ok = await client.done
        log.info("ferryman: background fill of %s %s", key.decode("latin-1"), "stored" if ok else "failed")
    except (FerrymanError, OSError, TimeoutError) as exc:
        log.info("ferryman: background fill of %s failed: %s", key.decode("latin-1"), exc)
    finally:
        cache.fills.pop(key, None)
