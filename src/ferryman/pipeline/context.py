"""The facts about one request, from its head to its log line (DESIGN 2.10).

Three kinds of state are kept apart:
  - the request context (here): who asked (client address, listener, identity),
    what they asked (the head), where it goes (route, target, the route's
    decision), and the Plan it started on, so a reload never changes the rules
    under a request in flight.  Phases read and fill it;
  - the upstream attempt (server lease, connection, retries, timings:
    `conn/exchange.py` `Attempt`), which a retry starts again;
  - the I/O handles (transports, tasks, buffers: `conn/exchange.py` `Exchange`).

`Client` holds what is known about the connection itself, shared by every
request on it; its ``memo`` lets a phase work a per-connection answer out once
per Plan (keyed by the phase itself, which is new for every Plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ferryman.http1.events import RequestHead
from ferryman.pipeline.admit.address import AddressCheck
from ferryman.pipeline.route.action import Proxy
from ferryman.pipeline.route.forwarded import Chain
from ferryman.pipeline.route.router import Target

if TYPE_CHECKING:
    from ferryman.pipeline.plan import ListenerPlan, Plan


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the client proved to be (empty until an auth phase fills it: issue 12)."""

    user: str = ""
    groups: frozenset[str] = frozenset()


ANONYMOUS = Identity()


class Client:
    """The client connection's facts, shared by its requests."""

    __slots__ = ("peer", "port", "listener", "tls", "memo")

    def __init__(self, listener: ListenerPlan, peer: str = "-", port: int = 0) -> None:
        self.listener = listener
        self.tls = listener.tls is not None
        self.peer = peer  # the TCP peer, or the client a PROXY header named
        self.port = port
        self.memo: dict[object, object] = {}  # phase -> its answer for this connection


class RequestContext:
    """One request's facts; the phases fill ``route``, ``target``, ``proxy``..."""

    __slots__ = (
        "client", "head", "plan", "client_ip", "identity", "route", "target", "proxy",
        "address_check", "by_network", "incoming",
    )

    def __init__(self, client: Client, head: RequestHead, plan: Plan) -> None:
        self.client = client
        self.head = head
        self.plan = plan  # the Plan this request started on
        # The client: the peer, or behind trusted proxies the address they name
        # (pipeline/route/forwarded.py); for ip_hash, ACLs and the log.
        self.client_ip = client.peer
        self.identity = ANONYMOUS
        self.route = ""  # route name, for the log ("" in forward mode)
        self.target: Target | None = None  # forward: the parsed destination
        self.proxy: Proxy | None = None  # the route's decision, when the request goes upstream
        self.address_check: AddressCheck | None = None  # what is left to judge on the address
        self.by_network = False  # the rules allowed the destination by its address (SSRF guard)
        self.incoming: Chain | None = None  # reverse: the hops a trusted peer reported


class Attempted(Protocol):
    """The upstream side of an exchange, as the log phases see it."""

    t_connect: float | None  # seconds to connect, when a new connection was dialled
    label: str  # host:port of the next hop ("" when none was reached)


class Outcome(Protocol):
    """How an exchange ended, as the log phases see it."""

    status: int
    bytes_in: int
    bytes_out: int
    t0: float
    t_first: float | None
    cache_result: str
    error: str

    @property
    def up(self) -> Attempted: ...
