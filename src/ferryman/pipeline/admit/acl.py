"""Access control for the forward proxy (pure).

Rules are compiled once per Plan into sets, so a request costs a handful of
set lookups whatever the list size: a host ``a.b.example.com`` is checked
against the exact set once and against the suffix set once per label.

Domain syntax (as Squid's ``dstdomain``):
  ``example.com``    that host only
  ``*.example.com``  any subdomain, not the domain itself
  ``.example.com``   the domain and every subdomain

A ``networks`` condition is decided on an address, never on how the host was
spelled: for an IP literal the router's canonical parse (`Target.ip`), for a
name the address DNS gave and that is then dialled.  Before DNS, evaluation
stops at the first rule that needs the address (`NeedsAddress`); the dialler
resumes there for each resolved address (`AddressCheck`) and dials only those
the rules allow, so no second lookup can answer differently (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ferryman.errors import Forbidden

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
A = TypeVar("A", bound=tuple[int, tuple[Any, ...]])  # a resolved (family, sockaddr)


@dataclass(frozen=True, slots=True)
class DomainSet:
    exact: frozenset[str]
    suffixes: frozenset[str]  # entries for "*.x" and ".x" (stored without the dot)
    with_self: frozenset[str]  # ".x" entries also match "x" itself; kept in exact too

    @classmethod
    def build(cls, entries: Iterable[str]) -> DomainSet:
        exact: set[str] = set()
        suffixes: set[str] = set()
        for raw in entries:
            e = raw.strip().lower().rstrip(".")
            if not e or e.startswith("#"):
                continue
            if e.startswith("*."):
                suffixes.add(e[2:])
            elif e.startswith("."):
                suffixes.add(e[1:])
                exact.add(e[1:])
            else:
                exact.add(e)
        return cls(frozenset(exact), frozenset(suffixes), frozenset())

    def __len__(self) -> int:
        return len(self.exact) + len(self.suffixes)

    def matches(self, host: str) -> bool:
        if host in self.exact:
            return True
        if not self.suffixes:
            return False
        i = host.find(".")
        while i != -1:
            if host[i + 1 :] in self.suffixes:
                return True
            i = host.find(".", i + 1)
        return False


@dataclass(frozen=True, slots=True)
class Matcher:
    """Ports and methods must hold when given; domains and networks are alternatives
    (a destination matches if it is in either); an empty matcher matches every request."""

    domains: DomainSet | None
    networks: tuple[IPNetwork, ...]
    ports: frozenset[int]
    methods: frozenset[str]

    def decide(self, method: str, host: str, port: int, addr: IPAddress | None) -> bool | None:
        """Whether the rule matches; None when only the address (not known yet) can tell.

        ``addr`` is the destination address: the literal's for an IP host, the resolved
        one for a name (None before DNS).
        """
        if self.ports and port not in self.ports:
            return False
        if self.methods and method not in self.methods:
            return False
        if self.domains is not None and self.domains.matches(host):
            return True
        if self.networks:
            if addr is None:
                return None
            return in_networks(addr, self.networks)
        return self.domains is None


def in_networks(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    allow: bool
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str  # the rule that decided, for the 403 page and the log


DEFAULT_ALLOW = Verdict(True, "default")


@dataclass(frozen=True, slots=True)
class NeedsAddress:
    """Rule ``start`` (and so the verdict) depends on the address the name resolves to."""

    start: int


@dataclass(frozen=True, slots=True)
class DestinationAcl:
    """Ordered rules; the first that matches decides; none matching allows."""

    rules: tuple[Rule, ...]

    def check(
        self, method: str, host: str, port: int, addr: IPAddress | None = None, start: int = 0
    ) -> Verdict | NeedsAddress:
        """The verdict, or `NeedsAddress` when ``addr`` is None and the address could change it.

        Rules that need the address are passed over while looking for the first rule that
        surely matches; if none of them would decide otherwise (``[deny networks, deny
        domains]`` for a denied name), the verdict stands without DNS.
        """
        rules = self.rules
        pending = -1
        may_allow = may_deny = False  # what the rules waiting for the address could decide
        verdict = DEFAULT_ALLOW
        for i in range(start, len(rules)):
            rule = rules[i]
            hit = rule.matcher.decide(method, host, port, addr)
            if hit is None:
                if pending < 0:
                    pending = i
                if rule.allow:
                    may_allow = True
                else:
                    may_deny = True
            elif hit:
                verdict = Verdict(rule.allow, rule.name)
                break
        if pending >= 0 and (may_deny if verdict.allowed else may_allow):
            return NeedsAddress(pending)
        return verdict

    def check_name_only(self, method: str, host: str, port: int) -> Verdict:
        """The verdict when no address will ever be known (a parent proxy resolves the name):
        networks conditions cannot match a name."""
        for rule in self.rules:
            if rule.matcher.decide(method, host, port, None):
                return Verdict(rule.allow, rule.name)
        return DEFAULT_ALLOW


@dataclass(frozen=True, slots=True)
class AddressCheck:
    """The rest of a destination check, run by the dialler on each resolved address."""

    acl: DestinationAcl
    method: str
    host: str
    port: int
    start: int

    def verdict(self, ip: str) -> Verdict:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return Verdict(False, "unparseable address")
        v = self.acl.check(self.method, self.host, self.port, addr, self.start)
        assert isinstance(v, Verdict)  # an address was given
        return v

    def admit(self, addrs: list[A]) -> list[A]:
        """The resolved ``(family, sockaddr)`` entries the rules allow, in order; raise
        `Forbidden` (naming the first denying rule) when they allow none."""
        allowed: list[A] = []
        denied: Verdict | None = None
        for a in addrs:
            v = self.verdict(str(a[1][0]))
            if v.allowed:
                allowed.append(a)
            elif denied is None:
                denied = v
        if not allowed:
            rule = denied.rule if denied is not None else "no address"
            raise Forbidden(f"access to {self.host} denied (rule: {rule})")
        return allowed


@dataclass(frozen=True, slots=True)
class ClientAcl:
    """Which client addresses may use the proxy at all (never an open relay by default).

    Checked once per accepted connection, so IPv4 networks are kept as integer
    (network, mask) pairs: `ipaddress` parsing costs tens of microseconds.
    """

    networks: tuple[IPNetwork, ...]
    _v4: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        v4 = tuple(
            (int(n.network_address), int(n.netmask))
            for n in self.networks
            if isinstance(n, ipaddress.IPv4Network)
        )
        object.__setattr__(self, "_v4", v4)

    def allows(self, ip: str) -> bool:
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        if "." in ip:
            try:
                n = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
            except OSError:
                return False
            return any(n & mask == net for net, mask in self._v4)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self.networks)
