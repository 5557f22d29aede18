"""Whole-object fills with no client behind them: a Range miss, a stale-while-revalidate refresh.

The OS-update case: a hundred clients ask for pieces of one large file. The
first Range request starts this task, which GETs the full object (no Range)
into the store through the same next hop the request was routed to; Range
requests (and plain misses) that come while it runs follow its `Fill`, and are
answered from it as soon as their bytes have arrived.  When an entry with
validators is stored, the request is conditional: a 304 freshens the entry.
The fill is registered with the cache like any other, so a purge marks it.

The fill holds a server slot like any request (the dial returns the release of its
`Lease`, taken before dialling): it counts toward ``max_conns`` and the in-flight
requests of ``/status``, and the slot comes back exactly once, when the response has
arrived or the fill ends otherwise, with the server's verdict for passive health and
the balancer: a bad, cut-short, stalled or 5xx response counts against the server;
ferryman's own reasons to stop (a purge, the store refusing, the process stopping)
do not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from ferryman.conn.fill import Fill
from ferryman.errors import FerrymanError
from ferryman.http1 import serialize as ser
from ferryman.http1.events import Framing, Headers, RequestHead, ResponseHead
from ferryman.http1.headers import forward_response_headers
from ferryman.http1.parser import ResponseParser
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.index import selecting_fields, variant_bytes
from ferryman.pipeline.cache.lookup import Stored
from ferryman.pipeline.cache.store import EntryMeta, Writer
from ferryman.pipeline.plan import TimeoutsPlan
from ferryman.pipeline.stage import Proxy

if TYPE_CHECKING:
    from ferryman.conn.cache_front import CacheFront, FillDial, FillRelease

log = logging.getLogger("ferryman")

_DROP = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match"})


class _FillClient(asyncio.Protocol):
    def __init__(
        self, cache: CacheFront, fill: Fill, req: RequestHead, rules: policy.Rules, validate: Stored | None
    ) -> None:
        self.cache, self.fill, self.key, self.req, self.rules = cache, fill, fill.key, req, rules
        self.validate = validate
        self.parser = ResponseParser(self, 65536, 200)
        self.writer: Writer | None = None
        self.stored: Stored | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.t0 = time.time()
        self.verdict: bool | None = None  # the server's (set by the final head; module doc)
        self.release: FillRelease | None = None  # the server slot's, set once dialled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except FerrymanError:
            self._finish("failed: bad response", fault=True)

    def eof_received(self) -> bool | None:
        try:
            self.parser.finish()
        except FerrymanError:
            if not self.fill.done:
                self._finish("failed: response cut short", fault=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.fill.done:  # once the body is complete, the commit decides
            self._finish("failed: connection lost", fault=True)

    def on_response_head(self, head: ResponseHead) -> None:
        if head.status < 200:
            return
        self.verdict = head.status < 500
        now = time.time()
        if head.status == 304 and self.validate is not None:
            entry = policy.refresh_entry(self.validate.entry, head.headers, self.t0, now, self.rules)
            if entry is None:
                self._finish("failed: the 304 does not match the stored entry")
                return
            self.cache.refreshed(self.key, self.validate, entry, self.fill)
            self._finish("revalidated (304)")
            return
        if self.fill.invalidated:
            self._finish("not stored: purged or invalidated meanwhile")
            return
        stored = forward_response_headers(head.headers, head.connection_tokens, None)
        verdict = policy.storable("GET", head.status, self.req.headers, head.headers, self.rules)
        if head.status != 200 or not verdict:
            self._finish(f"not stored: {head.status} {verdict.reason}")
            return
        entry = policy.make_entry(200, self.req.headers, stored, self.t0, now, self.rules)
        variant = variant_bytes(entry.vary)
        size = head.content_length if head.framing is Framing.LENGTH else 0
        selecting = selecting_fields(entry, self.req.headers)
        meta = EntryMeta(self.key, variant, 200, tuple(stored), selecting, self.t0, now, size)
        self.writer = self.cache.store.begin(meta)
        if self.writer is None:
            self._finish("not stored: the store refused it (too big, full or off)")
            return
        self.stored = Stored(entry, variant, self.writer.meta.version)
        self.fill.set_variant(entry.vary_fields, entry.vary, variant)
        length = head.content_length if head.framing is Framing.LENGTH else -1
        self.fill.publish_head(200, head.reason, stored, length)

    def on_response_body(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
            self.fill.append(data)
            wait = self.writer.ready()
            transport = self.transport
            if wait is not None and transport is not None:
                transport.pause_reading()  # the store is behind: let it catch up
                wait.add_done_callback(lambda _: _resume(transport))

    def on_response_end(self) -> None:
        if self.verdict is None:
            return  # the end of an interim (1xx) response: the final one is still to come
        self._release()  # the server is done: its slot comes back before the commit
        if self.writer is not None and self.stored is not None:
            self.fill.finish()
            writer, self.writer = self.writer, None
            asyncio.get_running_loop().create_task(self._commit(writer, self.stored))
        elif not self.done.done():
            self._finish("failed: no body")

    async def _commit(self, writer: Writer, stored: Stored) -> None:
        ok = await self.cache.commit(self.key, stored, writer, self.fill)
        self._finish("stored" if ok else "not stored")

    def _finish(self, outcome: str, fault: bool = False) -> None:
        """The fill's end, whatever it is: release its followers, the server slot and the
        connection.  ``fault``: the server's (the first end decides the verdict)."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if not self.done.done():
            if fault:
                self.verdict = False
            self.done.set_result(outcome)
        self._release()
        if not self.fill.done:
            self.fill.fail()  # followers past what arrived decide for themselves
        if self.transport is not None:
            self.transport.close()

    def _release(self) -> None:
        if self.release is not None:
            self.release(self.verdict)  # only the first call counts

    # Upstream-handler methods the parser may call.
    def on_upgrade(self, conn: object, rest: bytes) -> None:
        self._finish("failed: unexpected upgrade", fault=True)


async def _progressing(client: _FillClient, first: float, idle: float) -> str:
    """The fill's outcome; TimeoutError when no byte came for ``first`` (head) / ``idle`` (body)
    seconds.  A big object on a slow link may take long: only a stalled one is given up."""
    seen = -1
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(client.done), first if seen < 0 else idle)
        except TimeoutError:
            if client.fill.size == seen or (seen < 0 and client.fill.head is None and not client.fill.done):
                client._finish("failed: the upstream stalled", fault=True)
                raise
            seen = client.fill.size


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()


async def fill_whole_object(
    dial: FillDial, timeouts: TimeoutsPlan, cache: CacheFront, fill: Fill, d: Proxy, req: RequestHead,
    rules: policy.Rules, client_ip: str, validate: Stored | None,
) -> None:
    key = fill.key
    release: FillRelease | None = None
    try:
        headers: Headers = [(n, v) for n, v in d.fields() if n.lower() not in _DROP]
        if validate is not None:
            headers += policy.conditional_headers(validate.entry.headers)
        headers.append((b"Connection", b"close"))
        factory = lambda: _FillClient(cache, fill, req, rules, validate)  # noqa: E731
        dialled = await dial(d, client_ip, req, factory, timeouts.upstream_connect)
        if dialled is None:  # (or a forward loop: the request itself was refused with 508)
            log.info("ferryman: background fill of %s skipped: no server up, or none free "
                     "within the queue timeout", key.decode("latin-1"))
            return
        proto, authority, release = dialled
        client = cast(_FillClient, proto)
        client.release = release
        if client.done.done():  # the connection ended before this task went on
            client._release()
        assert client.transport is not None
        client.transport.write(ser.request_head("GET", d.target, authority, headers, Framing.NONE, 0))
        outcome = await _progressing(client, timeouts.upstream_header, timeouts.upstream_idle)
        log.info("ferryman: background fill of %s %s", key.decode("latin-1"), outcome)
    except (FerrymanError, OSError, TimeoutError) as exc:
        log.info("ferryman: background fill of %s failed: %s", key.decode("latin-1"), exc)
    finally:
        if release is not None:
            release(None)  # a no-op once released; else cancelled (the process stopping) or a bug
        if fill.stored is None:
            fill.fail()
        cache._end_fill(fill)
