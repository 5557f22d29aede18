"""Schema -> immutable runtime `Plan`.

Everything a request needs is precomputed here (ACL sets, header bytes,
timeouts as floats) so the hot path only reads attributes.  Building a Plan may
read files (domain lists), so reload runs it off the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from ferryman.config.load import load_file
from ferryman.config.schema import Config, Limits, Timeouts, split_hostport
from ferryman.errors import ConfigError
from ferryman.pipeline.admit.acl import ClientAcl, DestinationAcl, DomainSet, Matcher, Rule


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    name: str
    host: str
    port: int
    mode: str
    backlog: int


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    clients: ClientAcl
    acl: DestinationAcl
    connect_ports: frozenset[int]
    parent: tuple[str, int] | None
    via: bytes | None  # the Via received-by token, or None when Via is off


@dataclass(frozen=True, slots=True)
class Plan:
    source: str
    config: Config
    listeners: tuple[ListenerPlan, ...]
    forward: ForwardPlan
    timeouts: Timeouts
    limits: Limits


def _read_domains_file(path: str, base_dir: str, field: str) -> list[str]:
    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    try:
        with open(full, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {full}: {exc.strerror or exc}") from None


def compile_config(cfg: Config, source: str = "<built-in>") -> Plan:
    base_dir = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else os.getcwd()
    errors: list[str] = []
    rules: list[Rule] = []
    for i, r in enumerate(cfg.forward.rules):
        match = r.allow if r.allow is not None else r.deny
        assert match is not None
        action = "allow" if r.allow is not None else "deny"
        entries = list(match.domains)
        if match.domains_file:
            try:
                entries += _read_domains_file(
                    match.domains_file, base_dir, f"forward.rules[{i}].{action}.domains_file"
                )
            except ValueError as exc:
                errors.append(str(exc))
        domains = DomainSet.build(entries) if (match.domains or match.domains_file) else None
        matcher = Matcher(
            domains=domains,
            networks=tuple(ipaddress.ip_network(n, strict=False) for n in match.networks),
            ports=frozenset(match.ports),
            methods=frozenset(m.upper() for m in match.methods),
        )
        rules.append(Rule(name=r.name or f"forward.rules[{i}]", allow=r.allow is not None, matcher=matcher))
    if errors:
        raise ConfigError(source, errors)

    listeners = []
    for i, lst in enumerate(cfg.listeners):
        host, port = split_hostport(lst.listen)
        listeners.append(ListenerPlan(lst.name or f"listeners[{i}]", host, port, lst.mode, lst.backlog))

    parent = None
    if cfg.forward.parent:
        parent = split_hostport(cfg.forward.parent[len("http://") :].rstrip("/"), 3128)

    via = None
    if cfg.forward.via:
        via = f"1.1 {socket.gethostname()}:{listeners[0].port} (ferryman)".encode("latin-1")

    fwd = ForwardPlan(
        clients=ClientAcl(tuple(ipaddress.ip_network(n, strict=False) for n in cfg.forward.clients)),
        acl=DestinationAcl(tuple(rules)),
        connect_ports=frozenset(cfg.forward.connect_ports),
        parent=parent,
        via=via,
    )
    return Plan(
        source=source,
        config=cfg,
        listeners=tuple(listeners),
        forward=fwd,
        timeouts=cfg.timeouts,
        limits=cfg.limits,
    )


def build_plan(path: str | None) -> Plan:
    """Load, validate and compile; raises `ConfigError` naming file and field."""
    if path is None:
        return compile_config(Config(), "<built-in>")
    return compile_config(load_file(path), path)
