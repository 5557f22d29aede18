"""The Plan: the immutable runtime values compiled from the config, one per (re)load.

A room owns the Plan types it reads (DESIGN.md section 1), and a type read by
several rooms lives in the lowest of them.  Every request starts on one Plan
and carries it in its context (``pipeline/``), so the root `Plan` lives here,
with the parts read on the connection's edge and in the phases (listeners and
their TLS, timeouts, limits, pool and DNS settings, the cache store).  The parts
a lower room reads live there: `ForwardPlan` and `ReversePlan` in
``pipeline/route/plan.py``, `UpstreamPlan` in ``upstream/group.py``, `AccessLogPlan`
in ``observe/access_log.py``.
``config/compile.py`` imports them all to build them; nothing here imports config/.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferryman.observe.access_log import AccessLogPlan
from ferryman.pipeline.route.plan import ForwardPlan, ReversePlan


@dataclass(frozen=True, slots=True)
class CertPlan:
    cert: str
    key: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TlsPlan:
    certificates: tuple[CertPlan, ...]
    min_version: str


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    name: str
    host: str
    port: int
    mode: str
    backlog: int
    tls: TlsPlan | None = None
    proxy_protocol: bool = False
    tls_handshake: float = 10.0  # timeouts.tls_handshake: the TLS server is built with it


@dataclass(frozen=True, slots=True)
class TimeoutsPlan:
    client_header: float
    tls_handshake: float
    client_idle: float
    client_body: float
    upstream_connect: float
    upstream_header: float
    upstream_idle: float
    tunnel_idle: float
    shutdown_grace: float


@dataclass(frozen=True, slots=True)
class LimitsPlan:
    max_header_size: int
    max_url_length: int
    max_headers: int
    max_body_size: int


@dataclass(frozen=True, slots=True)
class PoolPlan:
    max_idle_per_origin: int
    idle_timeout: float
    max_idle: int | None = None  # None: derived from the descriptor limit (`Engine`)


@dataclass(frozen=True, slots=True)
class DnsPlan:
    ttl: float
    negative_ttl: float


@dataclass(frozen=True, slots=True)
class CachePlan:
    store: str
    path: str | None
    max_size: int
    max_object_size: int
    forward: bool
    purge_clients: tuple[str, ...]
    range_fill: bool
    coalesce: bool
    redis: str | None
    max_entries: int = 1_000_000
    max_variants: int = 32


@dataclass(frozen=True, slots=True)
class Plan:
    source: str
    listeners: tuple[ListenerPlan, ...]
    forward: ForwardPlan
    timeouts: TimeoutsPlan
    limits: LimitsPlan
    pool: PoolPlan
    dns: DnsPlan
    access_log: AccessLogPlan
    reverse: ReversePlan | None = None
    workers: int = 1
    admin: tuple[str, int] | None = None
    cache: CachePlan | None = None
    admin_hosts: frozenset[str] = frozenset()  # Host values the admin API answers (besides loopback)

    def via_for(self, reverse: bool) -> bytes | None:
        """The Via received-by token for a reverse or forward listener's messages (None: off)."""
        return self.reverse.via if reverse and self.reverse else self.forward.via
