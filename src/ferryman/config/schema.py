"""The YAML file's shape, as frozen pydantic models.

Unknown keys are errors (``extra='forbid'``): a typo in a proxy's config must
never silently fall back to a default.  Durations accept ``"10s"``, ``"500ms"``,
``"2m"`` or a number of seconds; sizes accept ``"32KiB"``, ``"10MB"`` or bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ferryman.config.forward_control_schema import ProxyAuthCfg, RuleCfg
from ferryman.config.hostport import split_hostport, split_proxy_url
from ferryman.config.reverse_schema import ListenerTlsCfg, ReverseCfg, RouteCfg, UpstreamCfg
from ferryman.config.units import Duration, Networks, Size, UpgradeProtocols
from ferryman.pipeline.admit.anonymity import DEFAULT_IDENTIFYING


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listener(_Model):
    name: str | None = None
    listen: str = "127.0.0.1:3128"
    mode: Literal["forward", "reverse"] = "forward"
    backlog: int = Field(default=1024, ge=1)
    tls: ListenerTlsCfg | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header from reverse.trusted_proxies

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        split_hostport(v)
        return v


class Forward(_Model):
    clients: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    connect_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=lambda: [443])
    # The ACL language (issue 12): ordered rules, first match wins; see
    # `pipeline/admit/rules.py`.  A superset of the older allow/deny rules.
    rules: list[RuleCfg] = Field(default_factory=list)
    default: Literal["allow", "deny"] = "allow"  # when no rule matches
    auth: ProxyAuthCfg | None = None
    parent: str | None = None
    via: bool = True
    anonymity: Literal["transparent", "anonymous", "elite"] = "anonymous"
    identifying_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_IDENTIFYING))
    log_query: bool = False  # keep query strings in the access log of forward requests
    direct: list[str] = Field(default_factory=list)  # PAC: domains reached without the proxy
    direct_networks: Networks = Field(default_factory=list)  # PAC: networks reached directly
    pac_resolve: bool = False  # PAC: browsers resolve names to test direct_networks
    upgrade_protocols: UpgradeProtocols = Field(default_factory=lambda: ["websocket"])

    @field_validator("parent")
    @classmethod
    def _check_parent(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("http://"):
            raise ValueError("parent must be an http:// URL such as http://10.0.0.1:3128")
        split_proxy_url(v, 3128)  # http://[user:password@]host[:port]
        return v


class Timeouts(_Model):
    client_header: Duration = 10.0
    tls_handshake: Duration = 10.0  # PROXY header (if any) and TLS handshake, from accept
    client_idle: Duration = 60.0
    client_body: Duration = 60.0
    upstream_connect: Duration = 5.0
    upstream_header: Duration = 60.0
    upstream_idle: Duration = 60.0
    tunnel_idle: Duration = 300.0
    shutdown_grace: Duration = 10.0


class Limits(_Model):
    max_header_size: Size = 32 * 1024
    max_url_length: Size = 8 * 1024
    max_headers: int = Field(default=100, ge=1)
    max_body_size: Size = 0  # 0 means unlimited


class Pool(_Model):
    max_idle_per_origin: int = Field(default=128, ge=0)
    # Idle upstream connections in total; auto: a quarter of the descriptor limit (at least 8).
    max_idle: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    idle_timeout: Duration = 30.0


class Dns(_Model):
    ttl: Duration = 30.0
    negative_ttl: Duration = 5.0


class AccessLog(_Model):
    enabled: bool = True
    path: str = "-"
    format: Literal["combined", "json"] = "combined"


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class TargetedCacheControl(_Model):
    """RFC 9213 targeted cache control: which targeted fields the cache honours."""

    own_field: str | None = "Ferryman-Cache-Control"  # first on the target list; never passed on
    cdn_cache_control: bool = True  # honour CDN-Cache-Control (after own_field)
    pass_cdn_cache_control: bool = True  # pass CDN-Cache-Control on to clients (RFC 9213 3)
    forward: bool = False  # honour them in forward mode too (reverse mode always does)

    @field_validator("own_field")
    @classmethod
    def _check_field(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or not set(v) <= _TOKEN:
            raise ValueError(f"{v!r} is not a header field name")
        if v.lower() in ("cache-control", "cdn-cache-control", "expires", "age"):
            raise ValueError(f"{v} cannot be ferryman's own targeted field")
        return v


_STORE_DEFAULTS: dict[str, dict[str, int]] = {
    "disk": {"max_size": 10 * 1024**3, "max_object_size": 4 * 1024**3},  # fits real update files
}


class Cache(_Model):
    store: Literal["memory", "disk", "redis"] = "memory"
    path: str | None = None  # directory, for store: disk
    # Defaults depend on the store (see _STORE_DEFAULTS): a disk cache holds whole update files.
    max_size: Size = 256 * 1024 * 1024
    max_object_size: Size = 64 * 1024 * 1024  # inclusive: an object of exactly this size is stored
    forward: bool = True  # cache forward-proxy responses (by target URL)
    purge_clients: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    range_fill: bool = True  # a Range miss fetches the whole object once in the background
    coalesce: bool = True  # concurrent misses for one URL share one upstream fetch
    max_entries: int = Field(default=1_000_000, ge=1)  # entries a store (memory, disk) keeps at most
    max_variants: int = Field(default=32, ge=1)  # Vary variants per URL; past it the LRU one goes
    heuristic_max: Duration = 86400.0  # cap of heuristic freshness: 10% of Date - Last-Modified
    targeted: TargetedCacheControl = Field(default_factory=TargetedCacheControl)

    @model_validator(mode="before")
    @classmethod
    def _store_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = _STORE_DEFAULTS.get(str(data.get("store", "memory")), {})
            data = {**defaults, **data}
        return data

    @model_validator(mode="after")
    def _store_needs(self) -> Cache:
        if self.store == "disk" and not self.path:
            raise ValueError("store: disk needs path (a directory)")
        return self


class Shared(_Model):
    redis: str | None = None  # redis://host:port/db


class Admin(_Model):
    listen: str = "127.0.0.1:9900"
    allow_remote: bool = False  # the admin API can reload and purge: loopback unless said otherwise
    # Host header values (names or addresses, no port) answered besides loopback ones
    # (localhost, *.localhost, 127.0.0.0/8, ::1) and the listen address: DNS rebinding guard.
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            name = h.strip().lower().removesuffix(".")
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
            if not name or ".." in name or "/" in name or " " in name or "*" in name:
                raise ValueError(f"{h!r} is not a host name or address")
            out.append(name)
        return out

    @model_validator(mode="after")
    def _loopback(self) -> Admin:
        host, _ = split_hostport(self.listen)
        if not self.allow_remote and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith(
            "127."
        ):
            raise ValueError("admin.listen must be a loopback address unless admin.allow_remote is true")
        return self


def _redis_url(url: str | None) -> bool:
    """A URL redis-py can open: redis://HOST[:PORT][/DB], rediss:// (TLS) or unix://PATH."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return bool(parts.path)
        return parts.scheme in ("redis", "rediss") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, or out of range
        return False


class Config(_Model):
    admin: Admin | None = None
    cache: Cache | None = None
    shared: Shared = Field(default_factory=Shared)
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = 1
    listeners: list[Listener] = Field(default_factory=lambda: [Listener()])
    forward: Forward = Field(default_factory=Forward)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: Limits = Field(default_factory=Limits)
    pool: Pool = Field(default_factory=Pool)
    dns: Dns = Field(default_factory=Dns)
    access_log: AccessLog = Field(default_factory=AccessLog)
    routes: list[RouteCfg] = Field(default_factory=list)
    upstreams: dict[str, UpstreamCfg] = Field(default_factory=dict)
    reverse: ReverseCfg = Field(default_factory=ReverseCfg)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems = []
        for i, route in enumerate(self.routes):
            if route.upstream is not None and route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                problems.append(f"routes[{i}].upstream: unknown upstream {route.upstream!r} (known: {known})")
        if any(lst.mode == "reverse" for lst in self.listeners) and not self.routes:
            problems.append("routes: a reverse listener needs at least one route")
        if self.cache is not None and self.cache.store == "redis" and not _redis_url(self.shared.redis):
            problems.append("cache.store: redis needs shared.redis (a redis:// URL)")
        for i, lst in enumerate(self.listeners):
            if lst.proxy_protocol and not self.reverse.trusted_proxies:
                problems.append(
                    f"listeners[{i}].proxy_protocol: needs reverse.trusted_proxies (who may send it)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Config:
        seen: dict[tuple[str, int], int] = {}
        for i, lst in enumerate(self.listeners):
            addr = split_hostport(lst.listen)
            if addr in seen:
                raise ValueError(
                    f"listeners[{i}] and listeners[{seen[addr]}] both listen on {lst.listen}"
                )
            seen[addr] = i
        if not self.listeners:
            raise ValueError("at least one listener is needed")
        return self
