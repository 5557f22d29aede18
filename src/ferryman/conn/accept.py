"""A PROXY-protocol listener's connections, from accept() to the first HTTP byte.

A listener without ``proxy_protocol`` hands its connections straight to
`Downstream` (a TLS one through the event loop's own TLS server, with
``timeouts.tls_handshake`` as its handshake timeout) and nothing here runs.
With it, an `Acceptor` owns the connection first:

    accepted -> PROXY header, in cleartext -> [tls listener: handshake] -> Downstream

Rules this module owns:
- The PROXY header comes before TLS, as every sender writes it (HAProxy
  ``send-proxy``/``send-proxy-v2``, AWS NLB): it is never looked for inside TLS.
- Only a TCP peer in ``reverse.trusted_proxies`` may connect to a PROXY listener;
  anyone else is closed at accept, before one byte is read.
- Reads are sized so that not one byte past the header is consumed: what
  follows belongs to TLS or to the HTTP parser, untouched.
- A rejected header closes the connection and is logged with the peer address,
  at most `LOG_BURST` lines per `LOG_EVERY` seconds (then one line counting the
  rest), so a scanner cannot flood the log.
- One deadline covers the whole phase: ``timeouts.tls_handshake`` on a TLS
  listener, ``timeouts.client_header`` on a plain one.

The handshake is started with ``loop.start_tls`` only once the header has been
read: uvloop starts reading right after ``connection_made`` whatever the
protocol asked, so a listener that reads no PROXY header leaves TLS to the
loop's server instead.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import cast

from ferryman.conn.clock import Timer
from ferryman.conn.downstream import Downstream
from ferryman.conn.engine import Engine
from ferryman.errors import ClientProtocolError
from ferryman.http1 import proxy_protocol
from ferryman.pipeline.plan import ListenerPlan

log = logging.getLogger("ferryman")

LOG_EVERY = 10.0
LOG_BURST = 10
_V1_MIN = len(b"PROXY UNKNOWN\r\n")  # the shortest header of either version: the first read


class _RejectLog:
    """Rejected PROXY headers: a burst of lines per interval, then a count of the rest."""

    __slots__ = ("_start", "_lines", "_held")

    def __init__(self) -> None:
        self._start = 0.0
        self._lines = 0
        self._held = 0

    def __call__(self, peer: str, why: str, now: float) -> None:
        if now - self._start >= LOG_EVERY:
            if self._held:
                log.warning("ferryman: %d more PROXY headers rejected (not logged)", self._held)
            self._start, self._lines, self._held = now, 0, 0
        if self._lines >= LOG_BURST:
            self._held += 1
            return
        self._lines += 1
        log.warning("ferryman: rejected PROXY header from %s: %s", peer, why)


reject_log = _RejectLog()


def protocol_for(engine: Engine, lp: ListenerPlan, tls: ssl.SSLContext | None) -> asyncio.BaseProtocol:
    """The protocol a new connection of a listener bound without the loop's TLS starts with."""
    if not lp.proxy_protocol:
        return Downstream(engine, lp)
    return Acceptor(engine, lp, tls)


class Acceptor(asyncio.BufferedProtocol):
    def __init__(self, engine: Engine, lp: ListenerPlan, tls: ssl.SSLContext | None) -> None:
        self.engine = engine
        self.lp = lp
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.buf = bytearray()
        self.need = _V1_MIN
        self._chunk = bytearray()
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._src: tuple[str, int] | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "-"
        plan = self.engine.plan
        trusted = plan.reverse.trusted if plan.reverse is not None else None
        if trusted is None or not peer or not trusted.allows(str(peer[0])):
            self._done = True
            tr.abort()  # PROXY protocol listener: only the trusted balancer may connect
            return
        t = self.lp.tls_handshake if self.tls is not None else plan.timeouts.client_header
        self._timer = self.engine.clock.call_later(t, self._expired)

    # ------------------------------------------------------------ PROXY header
    def get_buffer(self, sizehint: int) -> bytearray:
        self._chunk = bytearray(max(self.need, 1))
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        if self._done:
            return
        self.buf += self._chunk[:nbytes]
        self.need -= nbytes
        if self.need > 0:
            return
        try:
            used, self._src = proxy_protocol.parse(bytes(self.buf))
        except proxy_protocol.NeedMore:
            self.need = self._more()
            return
        except ClientProtocolError as exc:
            reject_log(self.peer, exc.detail, self.engine.clock.time())
            self._close()
            return
        assert used == len(self.buf)  # exact reads: nothing past the header was taken
        assert self.transport is not None
        self.transport.pause_reading()  # the rest is for TLS or HTTP, read by their protocol
        if self.tls is not None:
            self._task = self.engine.loop.create_task(self._handshake())
        else:
            self._hand_over(self.transport, Downstream(self.engine, self.lp), plain=True)

    def _more(self) -> int:
        """How many bytes can be read without passing the end of the header."""
        b = self.buf
        if b.startswith(proxy_protocol.V2_SIG):
            if len(b) < 16:
                return 16 - len(b)
            return 16 + int.from_bytes(b[14:16], "big") - len(b)
        if len(b) < len(proxy_protocol.V2_SIG) and proxy_protocol.V2_SIG.startswith(bytes(b)):
            return len(proxy_protocol.V2_SIG) - len(b)
        return 1 if b.endswith(b"\r") else 2  # v1 ends with CRLF: 2 more at least

    # ------------------------------------------------------------ TLS
    async def _handshake(self) -> None:
        tr, tls = self.transport, self.tls
        assert tr is not None and tls is not None
        ds = Downstream(self.engine, self.lp)
        try:
            ssl_tr = await self.engine.loop.start_tls(
                tr, ds, tls, server_side=True, ssl_handshake_timeout=self.lp.tls_handshake
            )
        except OSError:  # handshake failed, timed out, or the peer left: nothing to answer
            self._close()
            return
        if self._done or ssl_tr is None:
            if ssl_tr is not None:
                ssl_tr.abort()
            return
        self._hand_over(ssl_tr, ds, plain=False)

    # ------------------------------------------------------------ endings
    def _hand_over(self, tr: asyncio.Transport, ds: Downstream, plain: bool) -> None:
        """The connection is the client Protocol's from here (start_tls already set it on TLS)."""
        self._done = True
        self._cancel_timer()
        if plain:
            tr.set_protocol(ds)
        ds.proxied = self._src
        ds.connection_made(tr)
        if plain and not ds.closed:
            tr.resume_reading()  # paused once the header was complete

    def _expired(self) -> None:
        self._timer = None
        self._close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self._done = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._cancel_timer()
