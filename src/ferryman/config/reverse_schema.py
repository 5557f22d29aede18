"""The reverse proxy's part of the YAML file: routes, upstreams, TLS, forwarded headers.

Kept apart from `schema.py` so each stays readable; `Config` joins them and
checks the cross-references (a route naming an unknown upstream is an error
that names the route's field path).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ferryman.config.hostport import split_hostport
from ferryman.config.units import Duration, Networks, UpgradeProtocols


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteMatchCfg(_Model):
    host: list[str] | None = None
    path_prefix: str | None = None
    path_exact: str | None = None
    path_regex: str | None = None
    methods: list[str] = Field(default_factory=list)
    headers: dict[str, str | None] = Field(default_factory=dict)
    case_sensitive: bool = True  # false: /ADMIN matches path_prefix /admin
    ignore_matrix_params: bool = False  # true: /admin;jsessionid=1 matches /admin (servlet backends)

    @field_validator("host", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("path_prefix", "path_exact")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("a path must start with '/'")
        return v

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v


class RewriteCfg(_Model):
    strip_prefix: str | None = None
    replace_prefix: str | None = None


class RedirectCfg(_Model):
    to: str  # may use {scheme} {host} {uri} {path}
    status: Literal[301, 302, 303, 307, 308] = 301


class RespondCfg(_Model):
    status: int = Field(default=200, ge=200, le=599)
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


class RouteCacheCfg(_Model):
    enabled: bool = True
    default_ttls: dict[int, Duration] = Field(default_factory=dict)  # status -> TTL if the origin gives none
    ignore_origin: bool = False  # cache by default_ttls even against no-cache/private/no-store
    store_set_cookie: bool = False  # store Set-Cookie responses without explicit freshness too


class RouteCfg(_Model):
    name: str | None = None
    match: RouteMatchCfg = Field(default_factory=RouteMatchCfg)
    upstream: str | None = None
    redirect: RedirectCfg | None = None
    respond: RespondCfg | None = None
    rewrite: RewriteCfg | None = None
    host_header: str = "preserve"  # preserve | upstream | any literal value
    cache: RouteCacheCfg | None = None
    upgrade_protocols: UpgradeProtocols = Field(default_factory=lambda: ["websocket"])

    @model_validator(mode="after")
    def _one_action(self) -> RouteCfg:
        n = sum(x is not None for x in (self.upstream, self.redirect, self.respond))
        if n != 1:
            raise ValueError("a route needs exactly one of 'upstream', 'redirect' or 'respond'")
        return self


class ServerCfg(_Model):
    url: str
    weight: int = Field(default=1, ge=1, le=1000)
    backup: bool = False
    max_conns: int = Field(default=0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("server url must be http://HOST:PORT or https://HOST:PORT")
        split_hostport(rest.rstrip("/"), 443 if scheme == "https" else 80)
        return v


class HealthCfg(_Model):
    path: str = "/"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)


class PassiveCfg(_Model):
    failures: int = Field(default=5, ge=1)
    window: Duration = 10.0
    ejection: Duration = 30.0
    max_ejected_share: float = Field(default=0.5, ge=0.0, le=1.0)


class RetryCfg(_Model):
    count: int = Field(default=2, ge=0, le=10)
    budget: float = Field(default=0.2, ge=0.0, le=1.0)


class QueueCfg(_Model):
    """HAProxy's ``timeout queue`` and ``maxqueue``: requests wait here while every healthy
    server is at its max_conns.  ``max: 0`` turns queueing off (503 at once)."""

    max: int = Field(default=1000, ge=0)
    timeout: Duration = 5.0


class HashKeyCfg(_Model):
    header: str | None = None
    cookie: str | None = None
    uri: bool = False


class UpstreamTlsCfg(_Model):
    verify: bool = True
    ca_file: str | None = None
    sni: str | None = None


class UpstreamCfg(_Model):
    balance: Literal["round_robin", "least_conn", "random_two", "ewma", "ip_hash", "hash"] = "round_robin"
    hash_key: HashKeyCfg | None = None
    servers: list[ServerCfg]
    health: HealthCfg | None = None
    passive: PassiveCfg = Field(default_factory=PassiveCfg)
    slow_start: Duration | None = None
    retries: RetryCfg = Field(default_factory=RetryCfg)
    queue: QueueCfg = Field(default_factory=QueueCfg)
    tls: UpstreamTlsCfg = Field(default_factory=UpstreamTlsCfg)
    send_proxy_protocol: Literal["v1", "v2"] | None = None

    @model_validator(mode="after")
    def _check(self) -> UpstreamCfg:
        if not self.servers:
            raise ValueError("an upstream needs at least one server")
        if self.balance == "hash" and self.hash_key is None:
            raise ValueError("balance 'hash' needs hash_key (header, cookie or uri)")
        return self


class ReverseCfg(_Model):
    trusted_proxies: Networks = Field(default_factory=list)
    forwarded_headers: bool = True
    via: bool = False
    merge_slashes: bool = True  # //a///b -> /a/b, matched and forwarded
    escaped_slashes: Literal["reject", "keep", "decode"] = "reject"  # %2F / %5C in a path
    forwarded_from: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"  # a trusted peer's hop chain
    x_real_ip: bool = False  # set X-Real-IP to the real client (else: kept from trusted peers only)


class CertCfg(_Model):
    cert: str
    key: str


class ListenerTlsCfg(_Model):
    certificates: list[CertCfg]
    min_version: Literal["1.2", "1.3"] = "1.2"
