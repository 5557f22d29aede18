"""Plain values (parsed YAML) -> rule conditions, with an error per bad field path.

Runs once per Plan (it reads domains files); `rules.compile_rules` is the entry point.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ferryman.pipeline.admit.acl import IPNetwork
from ferryman.pipeline.admit.conditions import (
    DAYS,
    Authenticated,
    Clients,
    Condition,
    Destination,
    Groups,
    Header,
    IndexedError,
    Methods,
    Path,
    PortRange,
    Ports,
    TimeWindow,
    Users,
    split_entries,
)
from ferryman.pipeline.admit.domainset import DomainSet, DomainSetError

Action = Literal["allow", "deny", "auth"]
ACTIONS: tuple[Action, ...] = ("allow", "deny", "auth")
CONDITION_KEYS = frozenset(
    {
        "clients", "users", "groups", "authenticated", "domains", "domain_regex", "domains_file",
        "networks", "ports", "methods", "path_prefix", "path_regex", "time", "headers",
    }
)
_EMPTY_IS_ABSENT = frozenset({"ports", "methods", "networks"})
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (method, field name)
_PORTS = re.compile(r"(\d{1,5})(?:\s*-\s*(\d{1,5}))?")

Compiled = tuple[Action, tuple[Condition, ...], Destination | None, str | None, str | None]


class RuleError(ValueError):
    """Rules that cannot be compiled; ``errors`` holds one ``field.path: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def compile_rule(
    spec: Any,
    path: str,
    base_dir: str,
    files: dict[str, DomainSet],
    load_domains: Callable[[str], DomainSet],
    errors: list[str],
) -> Compiled | None:
    if not isinstance(spec, Mapping):
        errors.append(f"{path}: expected a mapping such as {{deny: {{domains: [example.com]}}}}")
        return None
    # A key whose value is None is absent (the normalised config writes every key).
    spec = {k: v for k, v in spec.items() if v is not None}
    actions = [a for a in ACTIONS if a in spec]
    for key in spec:
        if key not in ACTIONS and key not in ("name", "message"):
            errors.append(f"{path}.{key}: unknown setting")
    if len(actions) != 1:
        errors.append(f"{path}: a rule needs exactly one of 'allow', 'deny' or 'auth'")
        return None
    action = actions[0]
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        errors.append(f"{path}.name: expected a non-empty string")
        name = None
    message = spec.get("message")
    if message is not None:
        if action != "deny":
            errors.append(f"{path}.message: only a deny rule shows a message")
        elif not isinstance(message, str) or any(c in message for c in "\r\n\x00"):
            errors.append(f"{path}.message: expected a one-line string")
            message = None
    body = spec[action]
    cpath = f"{path}.{action}"
    if not isinstance(body, Mapping):
        errors.append(f"{cpath}: expected a mapping of conditions ({{}} matches every request)")
        return None
    # A key whose value is None is absent; so is an empty ports, methods or networks list,
    # as it always was in the older rules ("ports: []" meant any port).
    body = {k: v for k, v in body.items() if v is not None and not (v == [] and k in _EMPTY_IS_ABSENT)}
    c = _Compiler(cpath, base_dir, files, load_domains, errors)
    for key in body:
        if key not in CONDITION_KEYS:
            errors.append(f"{cpath}.{key}: unknown condition")
    conds, dest = c.conditions(body)
    return action, conds, dest, name, message


class _Compiler:
    def __init__(
        self,
        path: str,
        base_dir: str,
        files: dict[str, DomainSet],
        load_domains: Callable[[str], DomainSet],
        errors: list[str],
    ) -> None:
        self.path = path
        self.base_dir = base_dir
        self.files = files
        self.load_domains = load_domains
        self.errors = errors

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.path}.{key}: {msg}")

    def strings(self, body: Mapping[str, Any], key: str) -> list[str] | None:
        v = body.get(key)
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(key, "expected a list of strings")
            return None
        if not v:
            self.err(key, "an empty list never matches; remove the condition instead")
            return None
        return v

    def conditions(self, body: Mapping[str, Any]) -> tuple[tuple[Condition, ...], Destination | None]:
        conds: list[Condition] = []
        # Cheap checks first: a rule stops at its first failing condition.
        if (v := body.get("authenticated")) is not None:
            if isinstance(v, bool):
                conds.append(Authenticated(v))
            else:
                self.err("authenticated", "expected true or false")
        if (names := self.strings(body, "users")) is not None:
            conds.append(Users(frozenset(names)))
        if (names := self.strings(body, "groups")) is not None:
            conds.append(Groups(frozenset(names)))
        if "ports" in body:
            p = self.ports(body["ports"])
            if p is not None:
                conds.append(p)
        if (methods := self.strings(body, "methods")) is not None:
            bad = [m for m in methods if not _TOKEN.fullmatch(m)]
            if bad:
                self.err("methods", f"not a method: {bad[0]!r}")
            conds.append(Methods(frozenset(m.upper() for m in methods)))
        if (nets := self.networks(body, "clients")) is not None:
            conds.append(Clients(nets))
        path_cond = self.path_condition(body)
        if path_cond is not None:
            conds.append(path_cond)
        if "headers" in body:
            conds.extend(self.headers(body["headers"]))
        if "time" in body:
            tw = self.time(body["time"])
            if tw is not None:
                conds.append(tw)
        return tuple(conds), self.destination(body)

    def ports(self, v: Any) -> Ports | PortRange | None:
        items = v if isinstance(v, list) else [v]
        ranges: list[tuple[int, int]] = []
        for j, item in enumerate(items):
            lo = hi = None
            if isinstance(item, int) and not isinstance(item, bool):
                lo = hi = item
            elif isinstance(item, str) and (m := _PORTS.fullmatch(item.strip())):
                lo = int(m.group(1))
                hi = int(m.group(2)) if m.group(2) else lo
            if lo is None or hi is None or not (1 <= lo <= hi <= 65535):
                self.err(f"ports[{j}]", f"expected a port (1-65535) or a range like 8000-8999, got {item!r}")
                return None
            ranges.append((lo, hi))
        if not ranges:
            self.err("ports", "an empty list never matches; remove the condition instead")
            return None
        if all(lo == hi for lo, hi in ranges):
            return Ports(frozenset(lo for lo, _ in ranges))
        return PortRange(tuple(ranges))

    def networks(self, body: Mapping[str, Any], key: str) -> tuple[IPNetwork, ...] | None:
        items = self.strings(body, key)
        if items is None:
            return None
        out = []
        for j, n in enumerate(items):
            try:
                out.append(ipaddress.ip_network(n.strip(), strict=False))
            except ValueError:
                self.err(f"{key}[{j}]", f"{n!r} is not an IP network such as 10.0.0.0/8 or ::1/128")
        return tuple(out)

    def regexes(self, body: Mapping[str, Any], key: str, flags: int = 0) -> tuple[re.Pattern[str], ...]:
        out = []
        for j, rx in enumerate(self.strings(body, key) or ()):
            try:
                out.append(re.compile(rx, flags))
            except re.error as exc:
                self.err(f"{key}[{j}]", f"invalid regular expression {rx!r}: {exc}")
        return tuple(out)

    def path_condition(self, body: Mapping[str, Any]) -> Path | None:
        prefixes = self.strings(body, "path_prefix")
        for j, p in enumerate(prefixes or ()):
            if not p.startswith("/"):
                self.err(f"path_prefix[{j}]", f"a path starts with '/', got {p!r}")
        regexes = self.regexes(body, "path_regex")
        if not prefixes and not regexes:
            return None
        return Path(tuple(prefixes or ()), regexes)

    def headers(self, v: Any) -> list[Header]:
        if not isinstance(v, Mapping) or not v:
            self.err("headers", "expected a mapping of field name to true, false or a regular expression")
            return []
        out = []
        for name, spec in v.items():
            key = f"headers.{name}"
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                self.err(key, "not a header field name")
                continue
            lname = name.lower().encode("ascii")
            if isinstance(spec, bool):
                out.append(Header(lname, spec))
            elif isinstance(spec, str):
                try:
                    out.append(Header(lname, True, re.compile(spec)))
                except re.error as exc:
                    self.err(key, f"invalid regular expression {spec!r}: {exc}")
            else:
                self.err(key, "expected true (present), false (absent) or a regular expression")
        return out

    def time(self, v: Any) -> TimeWindow | None:
        if not isinstance(v, Mapping):
            self.err("time", "expected {from: HH:MM, to: HH:MM, days: [mon, ...], tz: Area/City}")
            return None
        ok = True
        for key in v:
            if key not in ("from", "to", "days", "tz"):
                self.err(f"time.{key}", "unknown setting")
                ok = False
        start = self.clock(v, "from", "00:00")
        end = self.clock(v, "to", "24:00")
        if start is None or end is None:
            return None
        if start == end:
            self.err("time", "'from' and 'to' are the same time: the window is empty")
            return None
        days = frozenset(range(7))
        if "days" in v:
            raw = v["days"]
            items = raw if isinstance(raw, list) else [raw]
            picked = set()
            for j, d in enumerate(items):
                if isinstance(d, str) and d.strip().lower()[:3] in DAYS and len(d.strip()) >= 3:
                    picked.add(DAYS.index(d.strip().lower()[:3]))
                else:
                    self.err(f"time.days[{j}]", f"expected a day such as mon or tuesday, got {d!r}")
                    ok = False
            days = frozenset(picked)
            if not items:
                self.err("time.days", "an empty list of days never matches")
                ok = False
        tz = None
        if v.get("tz") is not None:
            name = v["tz"]
            try:
                if not isinstance(name, str):
                    raise ValueError
                tz = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                self.err("time.tz", f"unknown time zone {name!r} (use a name such as Europe/Paris or UTC)")
                ok = False
        if not ok:
            return None
        return TimeWindow(start, end, days, tz, f"{v.get('from', '00:00')}-{v.get('to', '24:00')}")

    def clock(self, v: Mapping[str, Any], key: str, default: str) -> int | None:
        s = v.get(key, default)
        if key == "to" and s == "24:00":
            return 24 * 60
        m = _TIME.fullmatch(s) if isinstance(s, str) else None
        if m is None:
            self.err(f"time.{key}", f"expected a time of day HH:MM (00:00 to 23:59), got {s!r}")
            return None
        return int(m.group(1)) * 60 + int(m.group(2))

    def destination(self, body: Mapping[str, Any]) -> Destination | None:
        never = body.get("domains") == []  # an explicit empty list: no name matches (as it always did)
        entries = None if never else self.strings(body, "domains")
        exact: frozenset[str] = frozenset()
        suffixes: frozenset[str] = frozenset()
        if entries is not None:
            try:
                exact, suffixes = split_entries(entries)
            except IndexedError as exc:
                self.err(f"domains[{exc.index}]", str(exc))
        regexes = self.regexes(body, "domain_regex", re.IGNORECASE)
        files: list[tuple[str, DomainSet]] = []
        raw_files = body.get("domains_file")
        names = raw_files if isinstance(raw_files, list) else [raw_files] if raw_files is not None else []
        for j, f in enumerate(names):
            key = "domains_file" if not isinstance(raw_files, list) else f"domains_file[{j}]"
            if not isinstance(f, str) or not f:
                self.err(key, "expected a file name")
                continue
            full = f if os.path.isabs(f) else os.path.join(self.base_dir, f)
            full = os.path.normpath(full)
            if full not in self.files:
                try:
                    self.files[full] = self.load_domains(full)
                except DomainSetError as exc:
                    self.err(key, str(exc))  # names the file, and the line when there is one
                    continue
            files.append((full, self.files[full]))
        networks = self.networks(body, "networks") or ()
        if not exact and not suffixes and not regexes and not files and not networks:
            if never:
                return Destination(files=(("(empty domains list)", DomainSet()),))
            return None
        return Destination(exact, suffixes, regexes, tuple(files), networks)
