"""Reverse-proxy part of the Plan: route table, actions, upstream specs, TLS listeners."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ferryman.config.hostport import split_hostport
from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.cache.policy import Rules
from ferryman.pipeline.plan import CertPlan, TlsPlan
from ferryman.pipeline.route.paths import PathPolicy
from ferryman.pipeline.route.plan import ProxyAction, RedirectAction, RespondAction, ReversePlan
from ferryman.pipeline.route.table import Route, RouteMatch, RouteTable
from ferryman.upstream.group import HealthPlan, PassivePlan, ServerPlan, UpstreamPlan


def compile_tls(data: Mapping[str, Any] | None) -> TlsPlan | None:
    if not data:
        return None
    certs = tuple(
        CertPlan(c["cert"], c["key"], tuple(c.get("names") or ())) for c in data["certificates"]
    )
    return TlsPlan(certs, data["min_version"])


def _server(i: int, s: Mapping[str, Any]) -> ServerPlan:
    scheme, _, rest = s["url"].partition("://")
    host, port = split_hostport(rest.rstrip("/"), 443 if scheme == "https" else 80)
    return ServerPlan(i, s["url"], scheme, host.strip("[]"), port, s["weight"], s["backup"], s["max_conns"])


def _upstream(name: str, u: Mapping[str, Any]) -> UpstreamPlan:
    h = u.get("health")
    p = u["passive"]
    hk = u.get("hash_key") or {}
    return UpstreamPlan(
        name=name,
        balance=u["balance"],
        hash_header=hk["header"].lower().encode() if hk.get("header") else None,
        hash_cookie=hk["cookie"].encode() if hk.get("cookie") else None,
        hash_uri=bool(hk.get("uri")),
        servers=tuple(_server(i, s) for i, s in enumerate(u["servers"])),
        health=HealthPlan(
            h["path"], h["interval"], h["timeout"], frozenset(h["expect_status"]), h["rise"], h["fall"]
        ) if h else None,
        passive=PassivePlan(p["failures"], p["window"], p["ejection"], p["max_ejected_share"]),
        slow_start=float(u.get("slow_start") or 0.0),
        retries=u["retries"]["count"],
        retry_budget=u["retries"]["budget"],
        tls_verify=u["tls"]["verify"],
        tls_ca_file=u["tls"].get("ca_file"),
        tls_sni=u["tls"].get("sni"),
        send_proxy=u.get("send_proxy_protocol"),
        queue_max=u["queue"]["max"],
        queue_timeout=float(u["queue"]["timeout"]),
    )


def cache_rules(data: Mapping[str, Any], route_cache: Mapping[str, Any], forward: bool = False) -> Rules:
    """The cache policy of a route (or of forward traffic: ``forward``, an empty ``route_cache``)."""
    c = data.get("cache") or {}
    ttls = route_cache.get("default_ttls") or {}
    targets: tuple[bytes, ...] = ()
    hidden: frozenset[bytes] = frozenset()
    tcc = c.get("targeted") or {}
    if tcc and (not forward or tcc.get("forward")):  # RFC 9213: a CDN honours them; a forward proxy if told
        own = tcc.get("own_field")
        cdn = (b"cdn-cache-control",) if tcc.get("cdn_cache_control") else ()
        targets = ((own.lower().encode("ascii"),) if own else ()) + cdn
        hidden = frozenset(targets[:1] if own else ()) | (
            frozenset(cdn) if not tcc.get("pass_cdn_cache_control") else frozenset()
        )
    return Rules(
        default_ttls=MappingProxyType({int(k): float(v) for k, v in ttls.items()}),
        ignore_origin=bool(route_cache.get("ignore_origin")),
        store_set_cookie=bool(route_cache.get("store_set_cookie")),
        heuristic_max=float(c.get("heuristic_max", 86400.0)),
        targets=targets,
        hidden=hidden,
    )


def _action(r: Mapping[str, Any], data: Mapping[str, Any]) -> ProxyAction | RedirectAction | RespondAction:
    if r.get("upstream") is not None:
        rw = r.get("rewrite") or {}
        c = r.get("cache")
        rules = None
        if c and c["enabled"]:
            rules = cache_rules(data, c)
        return ProxyAction(
            r["upstream"], rw.get("strip_prefix"), rw.get("replace_prefix"), r["host_header"], rules,
            frozenset(p.encode("ascii") for p in r["upgrade_protocols"]),
        )
    if r.get("redirect") is not None:
        return RedirectAction(r["redirect"]["to"], r["redirect"]["status"])
    resp = r["respond"]
    return RespondAction(resp["status"], resp["body"].encode(), resp["content_type"].encode("latin-1"))


def compile_reverse(data: Mapping[str, Any], first_port: int) -> ReversePlan | None:
    if not data.get("routes"):
        return None
    routes = []
    for i, r in enumerate(data["routes"]):
        m = r["match"]
        match = RouteMatch(
            hosts=tuple(m.get("host") or ()),
            path_prefix=m.get("path_prefix"),
            path_exact=m.get("path_exact"),
            path_regex=m.get("path_regex"),
            methods=frozenset(x.upper() for x in m["methods"]),
            headers=tuple((k.lower(), v) for k, v in m["headers"].items()),
            case_sensitive=m.get("case_sensitive", True),
            ignore_matrix_params=m.get("ignore_matrix_params", False),
        )
        routes.append(Route(r.get("name") or f"routes[{i}]", match, _action(r, data)))
    rev = data["reverse"]
    trusted = rev["trusted_proxies"]
    via = None
    if rev["via"]:
        via = f"1.1 {socket.gethostname()}:{first_port} (ferryman)".encode("latin-1")
    return ReversePlan(
        table=RouteTable(routes),
        upstreams={name: _upstream(name, u) for name, u in data["upstreams"].items()},
        trusted=ClientAcl(tuple(ipaddress.ip_network(n, strict=False) for n in trusted)) if trusted else None,
        forwarded_headers=rev["forwarded_headers"],
        via=via,
        paths=PathPolicy(rev.get("merge_slashes", True), rev.get("escaped_slashes", "reject")),
        forwarded_from=rev.get("forwarded_from", "x-forwarded-for"),
        x_real_ip=bool(rev.get("x_real_ip")),
    )
