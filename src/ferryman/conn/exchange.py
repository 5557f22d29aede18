"""Per-request state at the connection edge, in three parts (DESIGN 2.10):

- `RequestContext` (pipeline/context.py): the facts about the request, which
  the phases read and fill;
- `Attempt`: the upstream side: server lease, connection, retries, timings;
  a retry starts a new attempt on the same object;
- `Exchange`: the I/O handles and the response being written, holding the other two.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from ferryman.conn.state import Deadlines
from ferryman.http1 import outgoing
from ferryman.http1.events import F_NONE, ResponseHead
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.stage import Phases

if TYPE_CHECKING:
    from ferryman.conn.cache_front import CacheState
    from ferryman.upstream.connection import UpstreamConnection
    from ferryman.upstream.group import Lease, UpstreamGroup



class Waiting(Protocol):
    """A request waiting for a server slot (conn/queueing.py `Queued`)."""

    def cancel(self) -> None: ...


_NONE_TRIED: frozenset[int] = frozenset()


class Attempt:
    """The upstream side of one exchange: which server, which connection, how many tries."""

    __slots__ = (
        "key", "conn", "reused", "attempts", "group", "lease", "queued", "tried", "label",
        "t_connect", "head_sent", "body_sent", "stale", "fresh",
    )

    def __init__(self) -> None:
        self.key: tuple[str, str, int] | None = None
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.attempts = 0
        self.group: UpstreamGroup | None = None
        # The current attempt's hold on its server: released exactly once (by the lease
        # itself), kept afterwards so a retry knows which server it left.
        self.lease: Lease | None = None
        self.queued: Waiting | None = None  # waiting for a slot (every server at max_conns)
        self.tried: frozenset[int] = _NONE_TRIED
        self.label = ""  # host:port, for the log
        self.t_connect: float | None = None
        self.head_sent = False
        self.body_sent = False  # some body bytes went to an upstream: no retry after that
        # Re-sends after a pooled connection turned out dead: not the server's failure, so
        # they do not count against the upstream's retries; the re-send dials afresh
        # (``fresh``), since the pool's other idle sockets to that server are likely dead too.
        self.stale = 0
        self.fresh = False

    def release(self, now: float, ok: bool | None) -> None:
        """Hand the server slot back (``ok``: the server's verdict, None for none); the
        lease makes a second call a no-op."""
        lease = self.lease
        if lease is not None:
            lease.release(now, ok)


class Exchange:
    __slots__ = (
        "ctx", "up", "phases", "deadlines", "t0", "req_bytes", "body_buf", "body_buffered", "req_done",
        "resp", "out_mode", "status", "bytes_in", "bytes_out", "t_first", "keep_alive", "task", "error",
        "logged", "cache", "cache_takeover", "cache_result", "cache_field",
    )

    def __init__(self, ctx: RequestContext, now: float) -> None:
        head = ctx.head
        self.ctx = ctx
        self.up = Attempt()
        self.phases: Phases | None = None  # the phases of the Plan it started on
        self.deadlines: Deadlines | None = None  # and its deadlines per connection state
        self.t0 = now
        self.req_bytes = b""
        self.body_buf: list[bytes] = []
        self.body_buffered = 0
        self.req_done = head.framing is F_NONE or head.content_length == 0
        self.resp: ResponseHead | None = None
        self.out_mode = outgoing.NONE  # how the answer's body is framed (http1/outgoing.py)
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_first: float | None = None
        self.keep_alive = head.keep_alive
        self.task: asyncio.Task[None] | None = None
        self.error = ""
        self.logged = False
        self.cache: CacheState | None = None
        self.cache_takeover = False  # the cache answers; the upstream exchange only validates
        self.cache_result = ""  # for the access log: hit, miss, stale, revalidated, collapsed...
        self.cache_field = b""  # the Cache-Status line of an answer the cache let pass (passes.py)
