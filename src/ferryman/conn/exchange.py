"""Per-request state, from the request head to the log line."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ferryman.config.compile import Plan
from ferryman.http1.events import Framing, RequestHead, ResponseHead
from ferryman.pipeline.stage import Proxy

if TYPE_CHECKING:
    from ferryman.conn.cache_flow import CacheState
    from ferryman.conn.queueing import Queued
    from ferryman.upstream.connection import UpstreamConnection
    from ferryman.upstream.group import Lease, UpstreamGroup

# how the response body is written to the client
OUT_NONE, OUT_RAW, OUT_CHUNK = 0, 1, 2


class Exchange:
    __slots__ = (
        "head", "plan", "t0", "key", "conn", "reused", "attempts", "decision", "req_bytes",
        "body_buf", "body_buffered", "body_sent", "req_done", "resp", "out_mode", "status",
        "bytes_in", "bytes_out", "t_connect", "t_first", "keep_alive", "task", "head_sent",
        "upstream_label", "error", "logged", "group", "lease", "queued", "tried", "route",
        "cache", "cache_takeover", "cache_result", "client_ip",
    )

    def __init__(self, head: RequestHead, now: float, client_ip: str = "-") -> None:
        self.head = head
        # The client: the peer, or behind trusted proxies the address they name
        # (pipeline/route/forwarded.py); for ip_hash, ACLs and the log.
        self.client_ip = client_ip
        self.plan: Plan | None = None
        self.t0 = now
        self.key: tuple[str, str, int] | None = None
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.attempts = 0
        self.decision: Proxy | None = None
        self.req_bytes = b""
        self.body_buf: list[bytes] = []
        self.body_buffered = 0
        self.body_sent = False  # some body bytes went to an upstream: no retry after that
        self.req_done = head.framing is Framing.NONE or head.content_length == 0
        self.resp: ResponseHead | None = None
        self.out_mode = OUT_NONE
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_connect: float | None = None
        self.t_first: float | None = None
        self.keep_alive = head.keep_alive
        self.task: asyncio.Task[None] | None = None
        self.head_sent = False
        self.upstream_label = ""
        self.error = ""
        self.logged = False
        self.group: UpstreamGroup | None = None
        # The current attempt's hold on its server: released exactly once (by the lease
        # itself), kept afterwards so a retry knows which server it left.
        self.lease: Lease | None = None
        self.queued: Queued | None = None  # waiting for a slot (every server at max_conns)
        self.tried: frozenset[int] = frozenset()
        self.route = ""
        self.cache: CacheState | None = None
        self.cache_takeover = False  # the cache answers; the upstream exchange only validates
        self.cache_result = ""  # for the access log: hit, miss, stale, revalidated, collapsed...
