"""The forward proxy's ACL language: ordered rules, first match wins (pure).

A rule is one action and its conditions::

    - name: no-ads                  # optional; shown on the 403 page and in the log
      deny: {domains_file: ads.txt} # allow | deny | auth
      message: Ads are blocked here # optional, deny only

Conditions (all given ones must hold; an empty rule matches every request):
  clients         client networks (CIDR)
  users, groups   the authenticated user, or one of their groups
  authenticated   true / false
  domains, domain_regex, domains_file, networks
                  the destination: by name (entries as Squid's dstdomain, regexes
                  searched in the host, files of entries) or by the dialled address
                  (networks, matched after DNS); these forms are alternatives
  ports           numbers or ranges ("8000-8999")
  methods         request methods
  path_prefix, path_regex
                  the URL path (alternatives); never matches a CONNECT
  time            {from: "08:00", to: "18:00", days: [mon, ...], tz: Europe/Paris}
  headers         {Field: true | false | "regex"}: present, absent, some value matches

Actions: ``allow``; ``deny`` (403 naming the rule, with the optional message);
``auth``: a request that is not authenticated gets 407, an authenticated one goes
on to the next rule.  When no rule matches, the set's default action applies.

`compile_rules` builds a `RuleSet` once per Plan (errors name the field path);
`RuleSet.evaluate` costs no I/O: when a rule's outcome hangs on the dialled address
and it is not known yet, the decision is ``resolve``: resolve the host, then call
`evaluate` again with the address and ``start=decision.index``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ferryman.http1.events import Headers
from ferryman.pipeline.admit.conditions import (
    BY_NAME,
    BY_NETWORK,
    HOST_MEMO,
    NEEDS_ADDRESS,
    Authenticated,
    Condition,
    Destination,
    Facts,
    Groups,
    PortRange,
    Ports,
    Users,
)
from ferryman.pipeline.admit.domainset import DomainSet
from ferryman.pipeline.admit.rules_compile import Action, RuleError, compile_rule
from ferryman.pipeline.admit.rules_index import NO_RULE, build_run, plan_runs


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    conditions: tuple[Condition, ...]  # cheap ones first
    destination: Destination | None
    message: str | None = None
    path: str = ""  # field path, e.g. forward.rules[3]


@dataclass(frozen=True, slots=True)
class AclRequest:
    """The facts a rule may test, as the admit phase knows them."""

    client: str  # client IP
    method: str  # upper case
    host: str  # destination host name or IP literal, lower case
    port: int
    path: str | None = None  # URL path; None for CONNECT
    headers: Headers | None = None
    user: str | None = None  # None: not authenticated
    groups: frozenset[str] = frozenset()
    address: str | None = None  # the resolved destination address, once known


Verdict = Literal["allow", "deny", "auth", "resolve"]


@dataclass(frozen=True, slots=True)
class AclDecision:
    action: Verdict
    rule: str  # the rule's name, or "default"
    index: int  # the rule's position, -1 for the default
    message: str | None = None
    by_network: bool = False  # an allow that matched the destination by its address


@dataclass(frozen=True, slots=True)
class Shadowed:
    index: int
    by: int
    message: str


_EMPTY_HEADERS: Headers = []


# Per rule, what `evaluate` reads: its tests, its destination, whether it is an auth
# rule, its decisions (by name, by network) built once, and its index.  A run of rules
# looked up at once (`RunIndex`) is a step with no tests (None) and the run where the
# destination goes.
_Step = tuple[tuple[Any, ...] | None, Any, bool, AclDecision, AclDecision, int]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    default: Action = "allow"
    _steps: tuple[_Step, ...] = field(init=False, repr=False, compare=False)
    _fast: tuple[_Step, ...] = field(init=False, repr=False, compare=False)
    _decisions: tuple[AclDecision, ...] = field(init=False, repr=False, compare=False)
    # host -> the steps that may match a request to it (`_for_host`); bounded
    _by_host: dict[str, tuple[_Step, ...]] = field(init=False, repr=False, compare=False)
    _default: AclDecision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps: list[_Step] = []
        for i, r in enumerate(self.rules):
            tests = tuple(c.test for c in r.conditions)
            steps.append((
                tests, r.destination, r.action == "auth",
                AclDecision(r.action, r.name, i, r.message),
                AclDecision(r.action, r.name, i, r.message, True),
                i,
            ))
        fast: list[_Step] = []
        runs = dict(plan_runs(self.rules))
        i = 0
        while i < len(steps):
            if i in runs:
                run = build_run(self.rules[i : runs[i] + 1], i)
                fast.append((None, run, False, steps[i][3], steps[i][4], i))
                i = runs[i] + 1
            else:
                fast.append(steps[i])
                i += 1
        object.__setattr__(self, "_steps", tuple(steps))
        object.__setattr__(self, "_fast", tuple(fast))
        object.__setattr__(self, "_decisions", tuple(s[3] for s in steps))
        object.__setattr__(self, "_by_host", {})
        object.__setattr__(self, "_default", AclDecision(self.default, "default", -1))

    def evaluate(self, req: AclRequest, now: float, start: int = 0) -> AclDecision:
        """The decision of the first rule (from ``start``) that matches."""
        ev = Facts(
            req.client, req.method, req.host, req.port, req.path, req.headers or _EMPTY_HEADERS,
            req.user, req.groups, req.address, now,
        )
        return self.decide(ev, start)

    def decide(self, ev: Facts, start: int = 0) -> AclDecision:
        """`evaluate` on facts the caller built (the admit phase: no `AclRequest` per request)."""
        if start == 0:
            steps: Sequence[_Step] | None = self._by_host.get(ev.host)
            if steps is None:
                steps = self._for_host(ev)
        else:
            steps = self._steps[start:]
        for tests, dest, is_auth, decision, by_net, i in steps:
            if tests is None:  # a run of rules, looked up at once
                j: int = dest.lookup(ev)
                if j >= 0:
                    return self._decisions[j]
                continue
            for test in tests:
                if not test(ev):
                    break
            else:
                how = BY_NAME
                if dest is not None:
                    how = dest.match(ev)
                    if not how:
                        continue
                    if how == NEEDS_ADDRESS:
                        return AclDecision("resolve", decision.rule, i)
                if is_auth:
                    if ev.user is None:
                        return decision
                    continue
                return by_net if how == BY_NETWORK else decision
        return self._default

    def _for_host(self, ev: Facts) -> tuple[_Step, ...]:
        """The steps that may match a request to ``ev.host``: a rule whose destination
        cannot match this name (and has no networks) is left out, and a destination that
        matches it by name needs no test; a run naming other hosts only is left out."""
        out: list[_Step] = []
        for step in self._fast:
            tests, dest, is_auth, decision, by_net, i = step
            if tests is None:
                if dest.ports or dest.methods or dest.by_name(ev) != NO_RULE:
                    out.append(step)
            elif dest is None:
                out.append(step)
            elif dest.matches_name(ev):
                out.append((tests, None, is_auth, decision, by_net, i))  # matched by name
            elif dest.networks:
                out.append(step)
        steps = tuple(out)
        memo = self._by_host
        if len(memo) >= HOST_MEMO:
            memo.clear()
        memo[ev.host] = steps
        return steps

    @property
    def needs_auth(self) -> bool:
        """Whether some rule can ask for credentials or looks at the user."""
        return any(
            r.action == "auth" or any(isinstance(c, Users | Groups | Authenticated) for c in r.conditions)
            for r in self.rules
        )

    def shadowed(self) -> tuple[Shadowed, ...]:
        """Rules that can never match because an earlier allow or deny rule matches every
        request they would (the clear cases: an earlier rule whose conditions are each
        implied by the later rule's)."""
        out = []
        for j, later in enumerate(self.rules):
            for i in range(j):
                earlier = self.rules[i]
                if earlier.action != "auth" and _covers(earlier, later):
                    out.append(
                        Shadowed(
                            j, i,
                            f"{later.path} ({later.name}) can never match: {earlier.path} "
                            f"({earlier.name}) matches every request it would, and comes first",
                        )
                    )
                    break
        return tuple(out)


def _covers(a: Rule, b: Rule) -> bool:
    if a.destination is not None:
        if b.destination is None or not a.destination.covers(b.destination):
            return False
    for ca in a.conditions:
        if isinstance(ca, Authenticated) and ca.value and any(
            isinstance(cb, Users | Groups) for cb in b.conditions
        ):
            continue  # naming users or groups implies authenticated
        if not any(_kind(cb) is _kind(ca) and ca.covers(cb) for cb in b.conditions):  # type: ignore[arg-type]
            return False
    return True


def _kind(c: Condition) -> type:
    return PortRange if isinstance(c, Ports) else type(c)


def compile_rules(
    rules: Sequence[Mapping[str, Any]],
    base_dir: str = ".",
    path: str = "forward.rules",
    default: Action = "allow",
    load_domains: Callable[[str], DomainSet] = DomainSet.from_file,
) -> RuleSet:
    """Compile plain values (parsed YAML) into a `RuleSet`; raises `RuleError` listing
    every problem with its field path.  A domains file named by several rules is read
    once."""
    errors: list[str] = []
    files: dict[str, DomainSet] = {}
    out: list[Rule] = []
    if not isinstance(rules, Sequence) or isinstance(rules, str):
        raise RuleError([f"{path}: expected a list of rules"])
    for i, spec in enumerate(rules):
        rpath = f"{path}[{i}]"
        compiled = compile_rule(spec, rpath, base_dir, files, load_domains, errors)
        if compiled is not None:
            action, conds, dest, name, message = compiled
            out.append(Rule(name or rpath, action, conds, dest, message, rpath))
    if errors:
        raise RuleError(errors)
    return RuleSet(tuple(out), default)


__all__ = [
    "AclDecision", "AclRequest", "Action", "Rule", "RuleError", "RuleSet", "Shadowed",
    "compile_rules",
]
