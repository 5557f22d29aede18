"""The routers' part of the Plan (values only): forward admission and target settings, the
reverse route table and its actions.

``config/`` builds them once per Plan.  This module holds values and imports no phase, so
the request context can name its Plan without an import circle (``pipeline/plan.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.admit.control import ForwardControl
from ferryman.pipeline.cache.policy import Rules
from ferryman.pipeline.route.paths import DEFAULT_POLICY, PathPolicy
from ferryman.pipeline.route.table import RouteTable
from ferryman.upstream.group import UpstreamPlan


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    clients: ClientAcl
    control: ForwardControl  # rules, auth, SSRF guard, anonymity, PAC (issue 12)
    connect_ports: frozenset[int]
    parent: tuple[str, int] | None
    via: bytes | None  # the Via received-by token, or None when Via is off
    cache_rules: Rules | None = None  # set when a cache is configured with cache.forward
    upgrades: frozenset[bytes] = frozenset({b"websocket"})  # Upgrade protocols passed on
    # Proxy-Authorization for the parent, from its URL's userinfo (the clients' own
    # Proxy-Authorization is never forwarded: it is hop-by-hop)
    parent_auth: bytes | None = None


@dataclass(frozen=True, slots=True)
class ProxyAction:
    upstream: str
    strip_prefix: str | None
    replace_prefix: str | None
    host_header: str  # "preserve" | "upstream" | literal
    cache_rules: Rules | None = None
    upgrades: frozenset[bytes] = frozenset({b"websocket"})  # Upgrade protocols passed on


@dataclass(frozen=True, slots=True)
class RedirectAction:
    to: str
    status: int


@dataclass(frozen=True, slots=True)
class RespondAction:
    status: int
    body: bytes
    content_type: bytes


@dataclass(frozen=True, slots=True)
class ReversePlan:
    table: RouteTable[ProxyAction | RedirectAction | RespondAction]
    upstreams: Mapping[str, UpstreamPlan]
    trusted: ClientAcl | None
    forwarded_headers: bool
    via: bytes | None
    paths: PathPolicy = DEFAULT_POLICY
    forwarded_from: str = "x-forwarded-for"  # which incoming field a trusted peer's hop chain is read from
    x_real_ip: bool = False  # set X-Real-IP to the real client
