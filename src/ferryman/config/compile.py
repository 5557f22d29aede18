"""Validated config (a plain dict) -> immutable runtime `Plan`.

Everything a request needs is precomputed here (ACL sets, header bytes,
timeouts as floats) so the hot path only reads attributes.

This module deliberately takes the *normalised dict* that `load.py` produces
(`Config.model_dump(mode="json")`) and never imports pydantic: the serving
process validates through a short-lived child process (`config/validate.py`)
and so never pays pydantic's ~15 MiB of resident memory.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from typing import Any

from ferryman.config.compile_forward_control import compile_forward_control
from ferryman.config.compile_reverse import cache_rules, compile_reverse, compile_tls
from ferryman.config.hostport import split_hostport, split_proxy_url
from ferryman.observe.access_log import AccessLogPlan
from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.admit.domainset import DomainSet, DomainSetError, normalise_entry
from ferryman.pipeline.plan import CachePlan, DnsPlan, LimitsPlan, ListenerPlan, Plan, PoolPlan, TimeoutsPlan
from ferryman.pipeline.route.plan import ForwardPlan


def _read_domains_file(path: str, base_dir: str, field: str) -> list[str]:
    """The entries of a domains file: one per line, ``#`` starts a comment anywhere on a line
    (``example.com  # ads``); a line that is still not a domain entry is an error naming the
    file and its line number."""
    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    try:
        with open(full, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {full}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{field}: {full} is not UTF-8 text") from None
    entries: list[str] = []
    bad: list[str] = []
    for n, line in enumerate(lines, 1):
        try:
            entry = normalise_entry(line)
        except ValueError as exc:
            bad.append(f"{full} line {n}: {exc}")
            continue
        if entry is not None:
            entries.append(entry)
    if bad:
        more = f" (and {len(bad) - 3} more lines)" if len(bad) > 3 else ""
        raise ValueError(f"{field}: " + "; ".join(bad[:3]) + more)
    return entries


def _load_domains(path: str) -> DomainSet:
    """A domains file for the rules; on error, the message names every bad line (up to
    three) the way ``ferryman check`` always has."""
    try:
        return DomainSet.from_file(path)
    except DomainSetError as exc:
        try:
            _read_domains_file(path, "/", "")
        except ValueError as detail:
            raise _DomainsFileError(path, 0, str(detail).removeprefix(": ")) from None
        raise exc


class _DomainsFileError(DomainSetError):
    def __str__(self) -> str:
        return self.message


def _pac_proxy(listeners: list[ListenerPlan]) -> tuple[str, int]:
    """The ``PROXY host:port`` of the PAC file when its request has no Host (otherwise
    the Host is named, pipeline/admit/pac_file.py): the first forward listener (by this
    machine's name when it listens on every address)."""
    lst = next((x for x in listeners if x.mode == "forward"), listeners[0])
    host = lst.host
    if host in ("", "0.0.0.0", "::", "*"):
        host = socket.gethostname()
    return host, lst.port


def _admin_hosts(admin: Mapping[str, Any] | None) -> frozenset[str]:
    if not admin:
        return frozenset()
    host, _ = split_hostport(admin["listen"])
    hosts = set(admin.get("allowed_hosts") or ())
    if host not in ("", "0.0.0.0", "::", "*"):
        hosts.add(host.strip("[]").lower())  # the address it listens on, as in http://10.0.0.5:9900/
    return frozenset(hosts)


def compile_config(data: Mapping[str, Any], source: str = "<built-in>") -> Plan:
    """Build a Plan from a dict that already passed `load.validate` (normalised)."""
    base_dir = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else os.getcwd()
    fwd_cfg = data["forward"]
    listeners = []
    for i, lst in enumerate(data["listeners"]):
        host, port = split_hostport(lst["listen"])
        name = lst.get("name") or f"listeners[{i}]"
        listeners.append(
            ListenerPlan(
                name, host, port, lst["mode"], lst["backlog"], compile_tls(lst.get("tls")),
                bool(lst.get("proxy_protocol")), float(data["timeouts"]["tls_handshake"]),
            )
        )

    parent = parent_auth = None
    if fwd_cfg.get("parent"):
        p_host, p_port, parent_auth = split_proxy_url(fwd_cfg["parent"], 3128)
        parent = (p_host, p_port)

    via = None
    if fwd_cfg["via"]:
        via = f"1.1 {socket.gethostname()}:{listeners[0].port} (ferryman)".encode("latin-1")

    control = compile_forward_control(
        fwd_cfg, base_dir=base_dir, clients=fwd_cfg["clients"], own=(), proxy=_pac_proxy(listeners),
        source=source, load_domains=_load_domains,
    )
    fwd = ForwardPlan(
        clients=ClientAcl(tuple(ipaddress.ip_network(n, strict=False) for n in fwd_cfg["clients"])),
        control=control,
        connect_ports=frozenset(fwd_cfg["connect_ports"]),
        parent=parent,
        parent_auth=parent_auth,
        via=via,
        cache_rules=(
            cache_rules(data, {}, forward=True) if (data.get("cache") and data["cache"]["forward"]) else None
        ),
        upgrades=frozenset(p.encode("ascii") for p in fwd_cfg["upgrade_protocols"]),
    )
    cache = None
    if data.get("cache"):
        c = data["cache"]
        path = c.get("path")
        if path and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        cache = CachePlan(
            c["store"], path, c["max_size"], c["max_object_size"], c["forward"],
            tuple(c["purge_clients"]), c["range_fill"], c["coalesce"],
            (data.get("shared") or {}).get("redis"),
            max_entries=c["max_entries"], max_variants=c["max_variants"],
        )
    return Plan(
        source=source,
        listeners=tuple(listeners),
        forward=fwd,
        timeouts=TimeoutsPlan(**data["timeouts"]),
        limits=LimitsPlan(**data["limits"]),
        pool=PoolPlan(
            data["pool"]["max_idle_per_origin"],
            data["pool"]["idle_timeout"],
            None if data["pool"].get("max_idle", "auto") == "auto" else int(data["pool"]["max_idle"]),
        ),
        dns=DnsPlan(**data["dns"]),
        access_log=AccessLogPlan(**data["access_log"]),
        reverse=compile_reverse(data, listeners[0].port),
        admin=split_hostport(data["admin"]["listen"]) if data.get("admin") else None,
        admin_hosts=_admin_hosts(data.get("admin")),
        cache=cache,
        workers=(os.cpu_count() or 1) if data.get("workers") == "auto" else int(data.get("workers") or 1),
    )


def build_plan(path: str | None) -> Plan:
    """Load, validate and compile in this process (imports pydantic); raises `ConfigError`."""
    from ferryman.config.load import load_file, normalise

    if path is None:
        from ferryman.config.schema import Config

        return compile_config(normalise(Config()), "<built-in>")
    return compile_config(normalise(load_file(path)), path)
