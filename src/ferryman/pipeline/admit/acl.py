"""Which client addresses may use the proxy at all (pure): ``forward.clients``,
``reverse.trusted_proxies``, ``cache.purge_clients``.

The destination rules live in `rules.py` (the ACL language) and their phases in
`access.py`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ferryman.pipeline.admit.safety import unmapped_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        addr = unmapped_ip(ip)
        return addr is not None and any(addr in n for n in self.networks)
