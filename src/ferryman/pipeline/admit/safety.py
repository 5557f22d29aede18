"""SSRF guard on the dialled address (pure): which destinations a forward proxy refuses.

Refused unless a rule allows them by network (``networks``, matched on the dialled
address):

  =====================  ==========================================  ===============
  what                   networks                                    reason
  =====================  ==========================================  ===============
  loopback               127.0.0.0/8, ::1/128                        loopback
  private (RFC 1918)     10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16   private
  unique-local           fc00::/7                                    unique-local
  link-local             169.254.0.0/16 (incl. 169.254.169.254,      link-local
                         cloud metadata), fe80::/10
  "this" network         0.0.0.0/8, ::/128 (connecting to them       this-network
                         reaches the proxy's own host)
  =====================  ==========================================  ===============

IPv6 forms that carry an IPv4 address are judged by that address: IPv4-mapped
(``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``), NAT64 (``64:ff9b::/96``)
and 6to4 (``2002::/16``).

Refused always, whatever the rules: the proxy's own listeners and admin API, under
every spelling (a wildcard listener is reached through any local address).

Laptop mode: when every network in ``forward.clients`` is loopback (the built-in
default), only the proxy's own user can reach it, so loopback and private
destinations are allowed; `laptop_note` says so for ``ferryman check``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Reason = Literal[
    "loopback", "private", "unique-local", "link-local", "this-network", "self", "not-an-address"
]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_REFUSED: tuple[tuple[str, Reason], ...] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("fc00::/7", "unique-local"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "this-network"),
    ("::/128", "this-network"),
)
_REFUSED = tuple((ipaddress.ip_network(n), r) for n, r in DEFAULT_REFUSED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")
_LOOPBACK_CLIENTS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("::ffff:127.0.0.0/104"),
)


def parse_ip(text: str) -> IPAddress | None:
    """An address in its strict form (``[v6]`` and ``%zone`` allowed), or None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        addr = ipaddress.IPv6Address(text.partition("%")[0])
    return addr


def unmapped_ip(text: str) -> IPAddress | None:
    """``text`` as a strict IP literal (no brackets, no zone), an IPv4-mapped IPv6
    address as the IPv4 address it carries; None for anything else."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def embedded_ipv4(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), or
    the address itself."""
    if isinstance(addr, ipaddress.IPv4Address):
        return addr
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _COMPAT and int(addr) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    return addr


def classify(address: str | IPAddress) -> Reason | None:
    """Why the default table refuses this address, or None when it does not."""
    addr = parse_ip(address) if isinstance(address, str) else address
    if addr is None:
        return "not-an-address"
    addr = embedded_ipv4(addr)
    for net, reason in _REFUSED:
        if addr.version == net.version and addr in net:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class SsrfVerdict:
    allowed: bool
    reason: Reason | None = None  # why it is refused (or would be, when allowed by a rule)
    always: bool = False  # refused whatever the rules (the proxy itself)


ALLOWED = SsrfVerdict(True)


def _is_this_network(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv4Address):
        return addr.packed[0] == 0
    return addr.is_unspecified


def _is_loopback_only(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    nets = list(networks)
    return bool(nets) and all(
        any(n.version == lo.version and n.subnet_of(lo) for lo in _LOOPBACK_CLIENTS)  # type: ignore[arg-type]
        for n in nets
    )


@dataclass(frozen=True, slots=True)
class SsrfGuard:
    """Compiled once per Plan from the clients, the listeners and the host's addresses."""

    laptop: bool
    endpoints: frozenset[tuple[IPAddress, int]]  # the proxy's own (address, port) pairs
    wildcard_ports: frozenset[int]  # ports listened on 0.0.0.0 / :: (any local address)
    local_addresses: frozenset[IPAddress]  # this host's addresses (gathered at start-up)

    @classmethod
    def compile(
        cls,
        clients: Sequence[str],
        own: Sequence[tuple[str, int]],
        local_addresses: Sequence[str] = (),
    ) -> SsrfGuard:
        """``clients``: forward.clients networks; ``own``: (host, port) of every listener
        and the admin API; ``local_addresses``: the host's interface addresses."""
        nets = [ipaddress.ip_network(c, strict=False) for c in clients]
        endpoints: set[tuple[IPAddress, int]] = set()
        wildcard: set[int] = set()
        for host, port in own:
            addr = parse_ip(host) if host else None
            if addr is None or addr.is_unspecified or host in ("", "*"):
                wildcard.add(port)
            else:
                endpoints.add((embedded_ipv4(addr), port))
        local = {embedded_ipv4(a) for a in (parse_ip(x) for x in local_addresses) if a is not None}
        return cls(_is_loopback_only(nets), frozenset(endpoints), frozenset(wildcard), frozenset(local))

    def is_self(self, addr: IPAddress, port: int) -> bool:
        """Whether dialling ``addr:port`` would reach one of the proxy's own sockets."""
        addr = embedded_ipv4(addr)
        if (addr, port) in self.endpoints:
            return True
        this_host = _is_this_network(addr)  # 0.0.0.0 and :: are answered by this host
        if not (this_host or addr.is_loopback or addr in self.local_addresses):
            return False
        if port in self.wildcard_ports:
            return True
        return this_host and any(
            p == port and (a.is_loopback or a in self.local_addresses) for a, p in self.endpoints
        )

    def check(self, address: str | IPAddress, port: int, allowed_by_network: bool = False) -> SsrfVerdict:
        """The verdict on dialling ``address:port`` (the address DNS gave, or a literal)."""
        addr = parse_ip(address) if isinstance(address, str) else address
        if addr is None:
            return SsrfVerdict(False, "not-an-address", True)
        if self.is_self(addr, port):
            return SsrfVerdict(False, "self", True)
        reason = classify(addr)
        if reason is None:
            return ALLOWED
        if self.laptop or allowed_by_network:
            return SsrfVerdict(True, reason)
        return SsrfVerdict(False, reason)

    def laptop_note(self) -> str | None:
        """For ``ferryman check``: what the clients setting means for private destinations."""
        if self.laptop:
            return None
        return (
            "forward.clients holds non-loopback networks: destinations in loopback, private "
            "(RFC 1918), unique-local, link-local and 0.0.0.0/8 are refused unless a rule "
            "allows them by network"
        )
