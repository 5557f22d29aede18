"""What the route phase decided for a request: send it on (`Proxy`) or tunnel it (`Connect`).

Values only; `pipeline/stage.py` puts them among the other decisions and
`conn/` carries them out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ferryman.http1.events import Headers
from ferryman.pipeline.admit.address import AddressCheck
from ferryman.pipeline.cache.policy import Rules
from ferryman.pipeline.route.router import Target


@dataclass(slots=True)
class Proxy:
    """Send the request to a next hop and relay the answer."""

    method: str
    target: bytes  # request-target for the next hop
    headers: Headers  # forwarded fields, without Host and without framing fields
    host: bytes  # Host for the next hop, unless `host_from_server`
    host_from_server: bool  # reverse routes with host_header: upstream
    next_hop: tuple[str, str, int] | None  # forward: (scheme, host, port) of origin or parent
    group: str | None  # reverse: the upstream group to pick a server from
    route: str  # route name for the log ("" in forward mode)
    upgrade: bool  # the client asked for a protocol upgrade (WebSocket)
    tls_name: str | None = None  # SNI / certificate name when the next hop speaks TLS
    cache_rules: Rules | None = None  # None: this request does not use the cache
    build: Callable[[], Headers] | None = None  # computes `headers` when first needed
    address_check: AddressCheck | None = None  # forward: rules still to run on the dialled address
    # reverse: the routed path and query (normal form, before a route rewrite) that the cache
    # keys on, when a rewrite made `target` differ from it; None: `target`
    routed: bytes | None = None

    def fields(self) -> Headers:
        """The forwarded header fields, built on first use: a cache hit never needs them."""
        if self.build is not None:
            self.headers = self.build()
            self.build = None
        return self.headers


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a CONNECT tunnel."""

    target: Target
    address_check: AddressCheck | None = None  # rules still to run on the dialled address
