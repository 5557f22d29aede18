"""Access control for the forward proxy (pure).

Rules are compiled once per Plan into sets, so a request costs a handful of
set lookups whatever the list size: a host ``a.b.example.com`` is checked
against the exact set once and against the suffix set once per label.

Domain syntax (as Squid's ``dstdomain``):
  ``example.com``    that host only
  ``*.example.com``  any subdomain, not the domain itself
  ``.example.com``   the domain and every subdomain
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    def matches(self, method: str, host: str, port: int) -> bool:
        if self.ports and port not in self.ports:
            return False
        if self.methods and method not in self.methods:
            return False
        if self.domains is not None and self.networks:
            return self.domains.matches(host) or _in_networks(host, self.networks)
        if self.domains is not None:
            return self.domains.matches(host)
        if self.networks:
            return _in_networks(host, self.networks)
        return True


def _in_networks(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
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
class DestinationAcl:
    """Ordered rules; the first that matches decides; none matching allows."""

    rules: tuple[Rule, ...]

    def check(self, method: str, host: str, port: int) -> Verdict:
        for rule in self.rules:
            if rule.matcher.matches(method, host, port):
                return Verdict(rule.allow, rule.name)
        return DEFAULT_ALLOW


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
