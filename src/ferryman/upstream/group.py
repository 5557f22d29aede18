"""One upstream group at run time: its servers' state, balancer, health and retry budget.

The pure parts decide (balancer.py picks, health.py counts and ejects); this
class only wires them to the engine and keeps the mutable state that must
outlive a single request.  A server is offered to the balancer when its
active check says UP *and* passive detection has not ejected it.

In-flight accounting: ``acquire`` picks a server and hands out a `Lease` with
the server's in-flight count raised; the exchange owns the lease, and the
slot comes back (and the outcome is recorded) when the lease is released.
A lease releases exactly once, whichever paths reach it and in any order (a
timeout and then the error response, a retry replacing it, the client
leaving), so ``active`` always equals the number of unreleased leases.

Queue (HAProxy ``timeout queue`` / ``maxqueue``): when every healthy server
is at its ``max_conns``, a request waits as a `Waiter`, at most
``queue_max`` of them.  Each freed slot goes to the waiters in arrival order
(FIFO): the first one the balancer can place gets a lease through its
``on_grant`` callback, called from inside the release.  The caller bounds
the wait (``queue_timeout``) and cancels its waiter when it gives up.

Reload (``adopt``): the new Plan's group takes over, for each server that stays
(same address), everything that must not reset: the active-check verdict, the
passive state (an ejection and its expiry, failures so far), the in-flight
count, the latency estimate and slow start.  The old group is retired: its
staying servers point to their successors (``moved``), so a lease taken before
the reload releases into the new group (counted once, its outcome recorded
there, its slot offered to the new group's queue), and its waiters move to
the new group's queue in their order.  ``max_conns`` therefore holds across a
reload, and ``/status`` counts requests started on either Plan.  Each reload
points the older groups still alive straight at the newest (``_shorten``), so a
lease held across many reloads keeps its own group alive, not all of them.

The upstream itself keeps its retry budget (``tokens``: a reload during an outage
does not hand out a fresh burst of retries; a retry asked of the retired group
spends the new group's tokens, ``successor``) and its balancer's rotation
(``Balancer.adopt``, by address).  A server the new Plan drops while requests on
it are in flight is remembered (``retired``, by address) for as long as it has
leases out: if a later reload brings it back, the returning server takes over
their count and they release into it (``take_back``), so ``max_conns`` holds even
then.  ``retired`` is rebuilt at each reload from the servers that still have
leases out, so it never holds more than the requests in flight.  Nothing of this
is on the per-request path: acquire and release are as without reloads.
"""

from __future__ import annotations

import ssl
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie

from ferryman.http1.events import RequestHead
from ferryman.upstream.balancer import ServerSpec, ServerState, make_balancer
from ferryman.upstream.health import ActiveHealth, OutlierDetector

_BUDGET_CAP = 10.0  # retries allowed in a burst before the ratio limits them


@dataclass(frozen=True, slots=True)
class ServerPlan:
    index: int
    url: str
    scheme: str
    host: str
    port: int
    weight: int
    backup: bool
    max_conns: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        h = f"[{self.host}]" if ":" in self.host else self.host
        return (h if self.port == default else f"{h}:{self.port}").encode("ascii")


@dataclass(frozen=True, slots=True)
class HealthPlan:
    path: str
    interval: float
    timeout: float
    expect_status: frozenset[int]
    rise: int
    fall: int


@dataclass(frozen=True, slots=True)
class PassivePlan:
    failures: int
    window: float
    ejection: float
    max_ejected_share: float


@dataclass(frozen=True, slots=True)
class UpstreamPlan:
    name: str
    balance: str
    hash_header: bytes | None
    hash_cookie: bytes | None
    hash_uri: bool
    servers: tuple[ServerPlan, ...]
    health: HealthPlan | None
    passive: PassivePlan
    slow_start: float
    retries: int
    retry_budget: float
    tls_verify: bool
    tls_ca_file: str | None
    tls_sni: str | None
    send_proxy: str | None = None
    queue_max: int = 1000  # requests waiting for a server under max_conns (0: no queue)
    queue_timeout: float = 5.0


class UpstreamServer:
    __slots__ = ("plan", "state", "key", "active", "ejected", "ssl", "tls_name", "moved")

    def __init__(self, plan: ServerPlan, ssl_ctx: ssl.SSLContext | None, tls_name: str | None) -> None:
        self.plan = plan
        self.state = ServerState(
            ServerSpec(plan.index, plan.address, plan.weight, plan.backup, plan.max_conns)
        )
        self.key = (plan.scheme, plan.host, plan.port)
        self.active: ActiveHealth | None = None
        self.ejected = False
        self.ssl = ssl_ctx
        self.tls_name = tls_name
        # After a reload that kept this server: its group and state under the new Plan.
        self.moved: tuple[UpstreamGroup, UpstreamServer] | None = None


class Lease:
    """One attempt's hold on one server's in-flight slot (see the module docstring)."""

    __slots__ = ("group", "server", "t_sent", "_held")

    def __init__(self, group: UpstreamGroup, server: UpstreamServer) -> None:
        self.group = group
        self.server = server
        self.t_sent = 0.0  # when the request went out (0: not sent): latency is measured from it
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self, now: float, ok: bool | None) -> None:
        """Give the slot back and record the outcome; every later call does nothing.

        ``ok``: True the server answered, False it failed (counts toward passive
        ejection), None no verdict on the server (the client left, or erred).
        """
        if not self._held:
            return
        self._held = False
        latency = now - self.t_sent if self.t_sent and ok is not None else None
        group, server = self.group, self.server
        while server.moved is not None:  # reloaded meanwhile: the server's current state
            group, server = server.moved
        group._finished(server, now, latency, ok)


class Waiter:
    """A request waiting for a slot (see the module docstring); ``live`` until granted or cancelled."""

    __slots__ = ("group", "client_ip", "head", "exclude", "on_grant", "live")

    def __init__(
        self, group: UpstreamGroup, client_ip: str, head: RequestHead, exclude: frozenset[int],
        on_grant: Callable[[Lease], None],
    ) -> None:
        self.group = group  # whose queue it is in (a reload moves it)
        self.client_ip = client_ip
        self.head = head
        self.exclude = exclude
        self.on_grant = on_grant
        self.live = True


def _client_ssl(plan: UpstreamPlan) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=plan.tls_ca_file)
    if not plan.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UpstreamGroup:
    def __init__(self, plan: UpstreamPlan, now: float) -> None:
        self.plan = plan
        needs_tls = any(s.scheme == "https" for s in plan.servers)
        ctx = _client_ssl(plan) if needs_tls else None
        self.servers = [
            UpstreamServer(s, ctx if s.scheme == "https" else None, plan.tls_sni or s.host)
            for s in plan.servers
        ]
        self.states = [s.state for s in self.servers]
        self.balancer = make_balancer(
            plan.balance, [s.state.spec for s in self.servers], slow_start=plan.slow_start
        )
        p = plan.passive
        self.outlier = OutlierDetector(
            len(self.servers), p.failures, p.window, p.ejection, p.max_ejected_share
        )
        if plan.health is not None:
            for s in self.servers:
                s.active = ActiveHealth(plan.health.rise, plan.health.fall, now=now)
        self.tokens = _BUDGET_CAP
        self._waiting: deque[Waiter] = deque()
        self.queued = 0  # live waiters (cancelled ones may still sit in the deque)
        # Servers an earlier Plan had and this one lacks, by address, with leases out then.
        self.retired: dict[str, UpstreamServer] = {}
        self.successor: UpstreamGroup | None = None  # the next Plan's group, once reloaded
        self._older: list[weakref.ref[UpstreamGroup]] = []  # earlier Plans' groups still alive

    def adopt(self, old: UpstreamGroup, now: float) -> None:
        """Take over from the group of the previous Plan (see the module docstring)."""
        by_addr = {s.plan.address: s for s in old.servers}
        index: dict[int, int] = {}  # old index -> new index, for the servers that stay
        for s in self.servers:
            prev = by_addr.get(s.plan.address)
            if prev is None:
                continue
            index[prev.plan.index] = s.plan.index
            if s.active is not None and prev.active is not None:
                rise, fall = s.active.rise, s.active.fall  # this Plan's thresholds
                s.active = prev.active
                s.active.rise, s.active.fall = rise, fall
            s.ejected = prev.ejected
            self.outlier.adopt(s.plan.index, old.outlier, prev.plan.index)
            s.state.carry(prev.state)
            prev.moved = (self, s)
            self._refresh(s, now)  # active checks added or dropped by the new Plan
        self.balancer.adopt(old.balancer, index)
        self.tokens = min(old.tokens, _BUDGET_CAP)
        old.successor = self
        self.take_back(old)
        for waiter in old._waiting:
            if waiter.live:
                waiter.group = self
                waiter.exclude = frozenset(index[i] for i in waiter.exclude if i in index)
                self._waiting.append(waiter)
                self.queued += 1
        old._waiting = deque()
        old.queued = 0
        if self.queued:
            self.wake(now)  # the new Plan may have room (more servers, higher max_conns)

    def take_back(self, old: UpstreamGroup) -> None:
        """Servers with requests in flight that ``old`` (an earlier Plan's group of this
        upstream) had or remembered and that ``adopt`` did not carry over: one this Plan has
        again takes over their in-flight count, and their leases release into it; the others
        are remembered by address while leases on them are out."""
        mine = {s.plan.address: s for s in self.servers}
        retired: dict[str, UpstreamServer] = {}
        for prev in (*old.retired.values(), *old.servers):
            if prev.moved is not None or not prev.state.active:
                continue  # carried over by adopt, or nothing in flight
            addr = prev.plan.address
            back = mine.get(addr)
            if back is None:
                retired[addr] = prev
            else:
                back.state.active += prev.state.active
                prev.moved = (self, back)
        self.retired = retired
        self._shorten(old)

    def _shorten(self, old: UpstreamGroup) -> None:
        """Point the servers (``moved``) and groups (``successor``) of the earlier Plans still
        alive straight at their newest successors: a lease held across many reloads then keeps
        its own group alive, not every group since.  Weak references: a group that nothing
        holds any more (no lease, no waiter) drops out of the list."""
        older = [r for r in (*old._older, weakref.ref(old)) if r() is not None]
        for ref in older:
            g = ref()
            if g is None:
                continue
            for s in g.servers:
                m = s.moved
                if m is not None:
                    while m[1].moved is not None:
                        m = m[1].moved
                    s.moved = m
            n = g.successor
            if n is not None:
                while n.successor is not None:
                    n = n.successor
                g.successor = n
        self._older = older

    def in_flight(self) -> bool:
        """Any lease out on a server this group has or remembers (not carried over since)?"""
        return any(
            s.moved is None and s.state.active for s in (*self.retired.values(), *self.servers)
        )

    def translate(self, other: UpstreamGroup, tried: frozenset[int]) -> frozenset[int]:
        """``tried``, server positions in ``other`` (the group of an earlier Plan), as
        positions in this group, matched by address: a retry that began before a reload
        that reordered the servers excludes the servers it tried, not their places."""
        if other is self or not tried:
            return tried
        here = {s.plan.address: s.plan.index for s in self.servers}
        return frozenset(
            i for s in other.servers if s.plan.index in tried
            for i in (here.get(s.plan.address),) if i is not None
        )

    # -- per request -------------------------------------------------------
    def hash_key(self, client_ip: str, head: RequestHead) -> bytes | None:
        plan = self.plan
        if plan.balance == "ip_hash":
            return client_ip.encode()
        if plan.balance != "hash":
            return None
        if plan.hash_uri:
            return head.target
        if plan.hash_header is not None:
            for name, value in head.headers:
                if name.lower() == plan.hash_header:
                    return value
            return None
        if plan.hash_cookie is not None:
            want = plan.hash_cookie.decode("latin-1")
            for name, value in head.headers:
                if name.lower() == b"cookie":
                    jar: SimpleCookie = SimpleCookie()
                    try:
                        jar.load(value.decode("latin-1"))
                    except Exception:  # noqa: BLE001 - a malformed cookie just means no key
                        continue
                    if want in jar:
                        return jar[want].value.encode("latin-1")
        return None

    def pick(
        self, client_ip: str, head: RequestHead, now: float, exclude: frozenset[int]
    ) -> UpstreamServer | None:
        self.tokens = min(_BUDGET_CAP, self.tokens + self.plan.retry_budget)
        key = self.hash_key(client_ip, head) if self.plan.balance in ("ip_hash", "hash") else None
        st = self.balancer.pick(self.states, now, key, exclude)
        return None if st is None else self.servers[st.spec.index]

    def acquire(
        self, client_ip: str, head: RequestHead, now: float, exclude: frozenset[int]
    ) -> Lease | None:
        """Pick a server and take one of its in-flight slots; None when none is eligible."""
        server = self.pick(client_ip, head, now, exclude)
        if server is None:
            return None
        self.balancer.on_start(server.state, now)
        return Lease(self, server)

    def _finished(self, server: UpstreamServer, now: float, latency: float | None, ok: bool | None) -> None:
        """Only `Lease.release` calls this, once per lease."""
        self.balancer.on_done(server.state, now, latency, ok is not False)
        if ok is not None and self.outlier.record(server.plan.index, ok, now) is not None:
            server.ejected = True
            server.state.mark_down()
        if self.queued:
            self.wake(now)

    # -- queue -------------------------------------------------------------
    def saturated(self, exclude: frozenset[int]) -> bool:
        """After ``acquire`` found nothing: is that because the healthy servers are full
        (worth waiting for) rather than down or already tried?"""
        return any(s.state.healthy and s.plan.index not in exclude for s in self.servers)

    def enqueue(
        self, client_ip: str, head: RequestHead, exclude: frozenset[int], on_grant: Callable[[Lease], None]
    ) -> Waiter | None:
        """Wait for a slot; None when the queue is full (or off: ``queue_max`` 0)."""
        if self.queued >= self.plan.queue_max:
            return None
        waiter = Waiter(self, client_ip, head, exclude, on_grant)
        self._waiting.append(waiter)
        self.queued += 1
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """The waiter gave up (timeout, client gone); it is skipped when its turn comes.
        Asked of the group it first queued in, it leaves the queue it is in now."""
        if waiter.live:
            waiter.live = False
            g = waiter.group
            g.queued -= 1
            waiting = g._waiting
            if len(waiting) > 2 * g.queued + 16:  # drop the cancelled ones (amortised O(1))
                g._waiting = deque(w for w in waiting if w.live)

    def wake(self, now: float) -> None:
        """Hand free slots to the waiters, first come first served.  A waiter that cannot be
        placed only because of the servers it already tried does not block the ones behind."""
        waiting = self._waiting
        i = 0
        while i < len(waiting) and self.queued:
            waiter = waiting[i]
            if not waiter.live:
                del waiting[i]
                continue
            lease = self.acquire(waiter.client_ip, waiter.head, now, waiter.exclude)
            if lease is None:
                if not waiter.exclude:
                    break  # nothing free for anyone
                i += 1
                continue
            del waiting[i]
            waiter.live = False
            self.queued -= 1
            waiter.on_grant(lease)

    def may_retry(self, attempts: int) -> bool:
        """Retries are bounded per request and by the budget (a share of live traffic)."""
        g = self
        while g.successor is not None:  # a request from before a reload: the current tokens
            g = g.successor
        if attempts > self.plan.retries or g.tokens < 1.0:
            return False
        g.tokens -= 1.0
        return True

    # -- health ------------------------------------------------------------
    def observe_check(self, server: UpstreamServer, ok: bool, now: float) -> None:
        if server.active is None:
            return
        server.active.observe(ok, now)
        self._refresh(server, now)

    def tick(self, now: float) -> None:
        for index in self.outlier.expired(now):
            server = self.servers[index]
            server.ejected = False
            self._refresh(server, now)
        if self.queued:
            self.wake(now)  # a server back in the pool has free slots

    def _refresh(self, server: UpstreamServer, now: float) -> None:
        up = (server.active is None or server.active.is_up) and not server.ejected
        if up and not server.state.healthy:
            server.state.mark_up(now, self.plan.slow_start)
        elif not up and server.state.healthy:
            server.state.mark_down()
