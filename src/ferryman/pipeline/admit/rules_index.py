"""Runs of simple rules looked up at once (pure), so that a long list of blocklist
entries, port bans or method bans costs a few dictionary lookups, not a pass per rule.

A run is two or more consecutive allow/deny rules that each test exactly one fact
that can be a dictionary key: the destination name (exact or suffix entries, no
regex, file or network), the port (single ports), or the method.  `RunIndex.lookup`
answers the first rule of the run that matches, as the rules one by one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ferryman.pipeline.admit.conditions import HOST_MEMO, Condition, Destination, Facts, Methods, Ports

_NONE = NO_RULE = 1 << 62  # no rule of the run matches


class _RuleLike(Protocol):
    @property
    def action(self) -> str: ...
    @property
    def conditions(self) -> tuple[Condition, ...]: ...
    @property
    def destination(self) -> Destination | None: ...


@dataclass(frozen=True, slots=True)
class RunIndex:
    first: int  # index of the run's first rule
    last: int  # and of its last
    exact: dict[str, int]  # host -> first rule naming it
    suffix: dict[str, int]  # parent domain -> first rule covering its subdomains
    ports: dict[int, int]
    methods: dict[str, int]
    by_host: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # host -> best by name

    def lookup(self, ev: Facts) -> int:
        """The index of the first rule of the run that matches, or -1."""
        best = _NONE
        if self.exact or self.suffix:
            best = self.by_host.get(ev.host, -1)
            if best == -1:
                best = self.by_name(ev)
                if len(self.by_host) >= HOST_MEMO:
                    self.by_host.clear()
                self.by_host[ev.host] = best
        if self.ports:
            j = self.ports.get(ev.port, _NONE)
            if j < best:
                best = j
        if self.methods:
            j = self.methods.get(ev.method, _NONE)
            if j < best:
                best = j
        return -1 if best == _NONE else best

    def by_name(self, ev: Facts) -> int:
        """The first rule of the run matching the host by name, or NO_RULE."""
        best = self.exact.get(ev.host, _NONE)
        if self.suffix:
            parents = ev._parents
            if parents is None:
                parents = ev.parents()
            get = self.suffix.get
            for p in parents:
                j = get(p, _NONE)
                if j < best:
                    best = j
        return best


def indexable(rule: _RuleLike) -> bool:
    if rule.action not in ("allow", "deny"):
        return False
    d = rule.destination
    if d is not None:
        return (
            not rule.conditions and not d.regexes and not d.files and not d.networks
            and bool(d.exact or d.suffixes)
        )
    return len(rule.conditions) == 1 and isinstance(rule.conditions[0], Ports | Methods)


def build_run(rules: Sequence[_RuleLike], first: int) -> RunIndex:
    exact: dict[str, int] = {}
    suffix: dict[str, int] = {}
    ports: dict[int, int] = {}
    methods: dict[str, int] = {}
    for k, r in enumerate(rules):
        i = first + k
        d = r.destination
        if d is not None:
            for name in d.exact:
                exact.setdefault(name, i)
            for name in d.suffixes:
                suffix.setdefault(name, i)
        else:
            c = r.conditions[0]
            if isinstance(c, Ports):
                for p in c.ports:
                    ports.setdefault(p, i)
            elif isinstance(c, Methods):
                for m in c.methods:
                    methods.setdefault(m, i)
    return RunIndex(first, first + len(rules) - 1, exact, suffix, ports, methods)


def plan_runs(rules: Sequence[_RuleLike]) -> list[tuple[int, int]]:
    """(first, last) of each maximal run of two or more indexable rules."""
    runs = []
    i = 0
    n = len(rules)
    while i < n:
        if not indexable(rules[i]):
            i += 1
            continue
        j = i
        while j + 1 < n and indexable(rules[j + 1]):
            j += 1
        if j > i:
            runs.append((i, j))
        i = j + 1
    return runs
