"""The upstream side of a fill whose client left (`Cache.continue_without_client`).

Other clients follow the fill, so the upstream response is read to its end for
them and for the store: this handler takes the client relay's place on the
upstream connection.  It keeps the server's in-flight slot until the fill ends
(the client's log line must not give it back while the server is still sending),
and gives it back once, with the server's verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ferryman.conn.exchange import Exchange
from ferryman.errors import FerrymanError
from ferryman.http1.events import ResponseHead
from ferryman.upstream.connection import UpstreamConnection


class FillSink(Protocol):
    """What the orphan fill feeds: the cache (conn/cache_flow.py `Cache`)."""

    now: Callable[[], float]

    def on_response_body(self, ex: Exchange, data: bytes, conn: UpstreamConnection | None = None) -> None: ...

    def complete(self, ex: Exchange) -> None: ...

    def on_abort(self, ex: Exchange, why: str = "") -> None: ...


class OrphanFill:
    """Upstream handler for a fill whose client is gone: the body goes to the store and followers."""

    held: bytes | None = None  # no client: nothing is ever held back for one

    def __init__(self, cache: FillSink, ex: Exchange, conn: UpstreamConnection) -> None:
        self.cache = cache
        self.ex = ex
        self.conn = conn
        self.lease, ex.up.lease = ex.up.lease, None

    def flush(self) -> None:
        return None

    def _release(self, ok: bool) -> None:
        if self.lease is not None:
            self.lease.release(self.cache.now(), ok)

    def on_response_head(self, head: ResponseHead) -> None:
        self.upstream_failed(FerrymanError("unexpected second response head"), True)

    def on_response_body(self, data: bytes) -> None:
        self.cache.on_response_body(self.ex, data, self.conn)

    def on_response_end(self) -> None:
        self.cache.complete(self.ex)
        self._release(True)
        self.conn.close()

    def on_upgrade(self, conn: object, rest: bytes) -> None:
        self.upstream_failed(FerrymanError("unexpected upgrade"), True)

    def upstream_failed(self, exc: FerrymanError, got_bytes: bool) -> None:
        self._release(False)
        self.cache.on_abort(self.ex, f"upstream failed: {exc.detail}")
        self.conn.close()

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass
