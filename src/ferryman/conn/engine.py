"""State shared by every connection of one process: the Plan, pool, resolver, log.

Connections read `engine.plan` once per request, so a reload (which swaps the
reference) never changes the rules under a request already in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import resource
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import Protocol

from ferryman.conn.auth import AuthRuntime
from ferryman.conn.cache_flow import Cache
from ferryman.conn.cache_front import FillRelease, purge_acl
from ferryman.conn.clock import Clock, LoopClock, Timer
from ferryman.conn.phases import Env, compile_phases
from ferryman.conn.queueing import lease_for_fill
from ferryman.conn.state import deadlines
from ferryman.http1.events import RequestHead
from ferryman.observe.access_log import AccessLog
from ferryman.observe.usage import UserUsage
from ferryman.pipeline.admit.control import AuthPlan
from ferryman.pipeline.admit.safety import unmapped_ip
from ferryman.pipeline.cache.memory import MemoryStore
from ferryman.pipeline.cache.store import Store
from ferryman.pipeline.plan import CachePlan, Plan, PoolPlan
from ferryman.pipeline.stage import Phases, Proxy
from ferryman.upstream import dial
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.dial import Resolver, open_connection
from ferryman.upstream.group import Lease, UpstreamGroup
from ferryman.upstream.health_check import run_checks
from ferryman.upstream.pool import Pool, auto_max_total


class Connection(Protocol):
    """A client connection, as the engine and the shutdown see it."""

    def drain(self) -> None: ...

    def force_close(self) -> None: ...


def _local_addresses() -> set[str]:
    addrs = {"0.0.0.0", "::"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addrs.add(str(info[4][0]))
    except OSError:
        pass
    return addrs


def _own_ports(plan: Plan) -> set[int]:
    """Ports ferryman listens on: the proxy listeners and the admin API."""
    ports = {lp.port for lp in plan.listeners}
    if plan.admin is not None:
        ports.add(plan.admin[1])
    return ports


def _own_hosts(plan: Plan) -> set[str]:
    """Addresses the listeners are bound to by name in the config (IP literals only)."""
    hosts = [lp.host for lp in plan.listeners] + ([plan.admin[0]] if plan.admin is not None else [])
    out = set()
    for h in hosts:
        try:
            out.add(str(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            continue
    return out


def _no_lease(ok: bool | None) -> None:
    """The release of a fill that holds no server slot (forward: the origin or a parent)."""


def auth_plan(plan: Plan) -> AuthPlan | None:
    """The Plan's proxy users (``forward.auth``), if any."""
    return plan.forward.control.auth


def descriptor_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def idle_cap(pc: PoolPlan) -> int:
    """Idle upstream connections allowed in total: the configured number, or derived from
    the descriptor limit (read once per Plan, never per request)."""
    return pc.max_idle if pc.max_idle is not None else auto_max_total(descriptor_limit())


class Engine:
    def __init__(self, plan: Plan, clock: Clock | None = None) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.clock: Clock = clock if clock is not None else LoopClock(self.loop)
        pc = plan.pool
        self.pool: Pool[UpstreamConnection] = Pool(pc.max_idle_per_origin, pc.idle_timeout, idle_cap(pc))
        dial.set_exhaustion_relief(self.relieve_descriptors)
        self.fd_limit = descriptor_limit()
        self.fd_reserve = max(32, self.fd_limit // 16)
        # Below this many descriptors counted (see `accepting`), none is probed for.
        self._probe_from = self.fd_limit - self.fd_reserve - max(1024, self.fd_limit // 8)
        self._fd_probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.on_descriptors_low: Callable[[], None] | None = None  # the lifecycle pauses accepting
        self.resolver = Resolver(plan.dns.ttl, plan.dns.negative_ttl)
        self.log = AccessLog(plan.access_log)
        self.connections: set[Connection] = set()
        self.draining = False
        self._all_closed: asyncio.Future[None] | None = None  # set by `wait_closed`
        self.local_addrs = _local_addresses() | _own_hosts(plan)
        self.local_ports = _own_ports(plan)
        self._tls: ssl.SSLContext | None = None
        self.groups: dict[str, UpstreamGroup] = {}
        self._dropped: dict[str, UpstreamGroup] = {}  # upstreams a reload removed, with leases out
        self.cache: Cache | None = None
        self._cache_plan: CachePlan | None = None
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._build_groups(plan)
        self._tick: Timer | None = self.clock.call_later(1.0, self._on_tick)
        self.auth = AuthRuntime(self.loop, self.clock)  # proxy users, credential cache, failure limiter
        self.usage = UserUsage()  # requests and bytes per proxy user, for /status
        self._phases_plan: Plan | None = None
        self._fwd_phases = self._rev_phases = Phases(())
        self.auth.adopt(auth_plan(plan))
        self._compile_phases()

    # ------------------------------------------------------------- phases
    def _env(self) -> Env:
        return Env(
            # partial(getattr, ...): the current log (a reload may replace it), read per
            # request without a Python frame
            self.cache is not None, self.is_self, partial(getattr, self, "log"), self.auth, self.usage,
            self.clock.time,
        )

    def _compile_phases(self) -> None:
        """Compile both listener modes' phases for the current Plan (and cache), and the
        client connection's deadlines per state."""
        plan, env = self.plan, self._env()
        self._fwd_phases = compile_phases(plan, "forward", env)
        self._rev_phases = compile_phases(plan, "reverse", env)
        self.deadlines = deadlines(plan.timeouts)
        self._phases_plan = plan
        # What a request starts on, read in one go (conn/decide.py): the Plan, the forward
        # and reverse phases compiled for it, and its deadlines per connection state.
        self.compiled = (plan, self._fwd_phases, self._rev_phases, self.deadlines)

    def phases(self, plan: Plan, reverse: bool) -> Phases:
        """The phases of a listener mode under ``plan`` (compiled once per Plan)."""
        if plan is self._phases_plan:
            return self._rev_phases if reverse else self._fwd_phases
        return compile_phases(plan, "reverse" if reverse else "forward", self._env())  # an old Plan

    def _build_groups(self, plan: Plan) -> None:
        """New groups for a new Plan; a server that stays keeps its health, passive state
        and in-flight count, and its old group's leases and waiters move over (``adopt``).
        An upstream the new Plan drops is kept aside while requests on it are in flight:
        if a later Plan brings it back, its servers take over their counts (``take_back``)."""
        now = self.clock.time()
        old = self.groups
        groups: dict[str, UpstreamGroup] = {}
        upstreams = plan.reverse.upstreams if plan.reverse is not None else {}
        for name, up in upstreams.items():
            g = UpstreamGroup(up, now)
            if name in old:
                g.adopt(old[name], now)
            elif name in self._dropped:
                g.take_back(self._dropped[name])
            groups[name] = g
        self._dropped = {
            name: g for name, g in (*self._dropped.items(), *old.items())
            if name not in groups and g.in_flight()
        }
        for task in self._checks.values():
            task.cancel()
        self._checks = {
            name: self.loop.create_task(run_checks(g)) for name, g in groups.items() if g.plan.health
        }
        self.groups = groups

    async def open_cache(self, plan: Plan) -> None:
        """(Re)build the cache when its settings change; a store that cannot open is left out."""
        cp = plan.cache
        if cp == self._cache_plan:
            return
        old = self.cache
        self._cache_plan = cp
        self.cache = None
        if old is not None:
            await old.store.close()
        if cp is None:
            self._compile_phases()
            return
        store: Store
        if cp.store == "disk":
            from ferryman.pipeline.cache.disk import DiskStore  # only processes that use it pay for it

            assert cp.path is not None
            disk = DiskStore(cp.path, cp.max_size, cp.max_object_size, max_entries=cp.max_entries,
                             max_variants=cp.max_variants)
            await disk.open()
            store = disk
        elif cp.store == "redis":
            from ferryman.pipeline.cache.redis_store import RedisStore  # redis-py only where it is used

            assert cp.redis is not None
            store = RedisStore(cp.redis, cp.max_object_size, max_variants=cp.max_variants)
        else:
            store = MemoryStore(cp.max_size, cp.max_object_size, max_entries=cp.max_entries,
                                max_variants=cp.max_variants)
        self.cache = Cache(
            store, cp.max_object_size, purge_acl(list(cp.purge_clients)), cp.coalesce, cp.range_fill,
            max_entries=cp.max_entries, max_variants=cp.max_variants,
            dial=self.dial_fill, now=self.clock.time, resolver=self.resolver,
        )
        self._compile_phases()

    async def dial_fill(
        self, d: Proxy, client_ip: str, req: RequestHead, factory: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> tuple[asyncio.BaseProtocol, bytes, FillRelease] | None:
        """Connect a background fill (conn/background_fill.py) to the request's next hop: a
        server of its upstream, holding a `Lease` on it like any request (taken before
        dialling, waiting in the upstream's queue when every server is full), or the forward
        next hop after the destination rules on the address.  Returns the connection, the
        Host to send and the lease's release; None when no server is up or freed a slot in
        time, or the address is ferryman itself."""
        lease: Lease | None = None
        if d.group is not None:
            group = self.groups.get(d.group)
            lease = await lease_for_fill(group, client_ip, req, self.clock) if group else None
            if lease is None:
                return None
            server = lease.server
            host, port, ssl_ctx, sni = server.plan.host, server.plan.port, server.ssl, server.tls_name
            authority = server.plan.authority if d.host_from_server else d.host
        else:
            assert d.next_hop is not None
            _, host, port = d.next_hop
            ssl_ctx = self.tls_context if d.tls_name else None
            sni, authority = d.tls_name, d.host
        try:
            addrs = await self.resolver.resolve(host, port)
            if d.address_check is not None:
                addrs = d.address_check.admit(addrs)
            if d.group is None and any(self.is_self(str(a[1][0]), port) for a in addrs):
                return None
            _, proto = await open_connection(addrs, factory, timeout, ssl_ctx, sni)
        except BaseException as exc:
            if lease is not None:  # not reached counts against the server; cancelled does not
                lease.release(self.clock.time(), None if isinstance(exc, asyncio.CancelledError) else False)
            raise
        if lease is None:
            return proto, authority, _no_lease
        lease.t_sent = self.clock.time()  # the fill writes its request at once
        held, clock = lease, self.clock
        return proto, authority, lambda ok: held.release(clock.time(), ok)

    async def purge(self, uri: str, prefix: bool) -> int:
        if self.cache is None:
            return 0
        return await self.cache.purge(uri, prefix)

    def cache_status(self) -> dict[str, object] | None:
        return None if self.cache is None else self.cache.status()

    def apply(self, plan: Plan) -> None:
        """Adopt a new Plan: later requests use it, requests in flight keep theirs."""
        old = self.plan
        if plan.access_log != old.access_log:
            new_log = AccessLog(plan.access_log)  # may raise OSError: reload refused
            self.log.close()
            self.log = new_log
        self._build_groups(plan)
        self.plan = plan
        pc = plan.pool
        self.pool.max_idle = pc.max_idle_per_origin
        self.pool.idle_timeout = pc.idle_timeout
        self.pool.max_total = idle_cap(pc)
        for conn in self.pool.trim():
            conn.close()
        self.resolver.ttl = plan.dns.ttl
        self.resolver.negative_ttl = plan.dns.negative_ttl
        self.local_ports = _own_ports(plan)
        self.local_addrs |= _own_hosts(plan)
        self.auth.adopt(auth_plan(plan))
        self._compile_phases()

    def park(self, key: tuple[str, str, int], conn: UpstreamConnection) -> None:
        """A connection whose exchange ended cleanly: idle in the pool, or closed.  Parking
        may push out the least recently used idle connection (the total cap)."""
        conn.detach()
        out = self.pool.park(key, conn, self.clock.time())
        if out is not None:
            out.close()

    def descriptors_low(self) -> bool:
        """Fewer than ``fd_reserve`` descriptors left?  The kernel always hands out the lowest
        free number, so a free one at ``fd_limit - fd_reserve`` or above means every one below
        is taken.  Two syscalls: cheap enough to ask at each accept."""
        try:
            fd = os.dup(self._fd_probe)
        except OSError:
            return True
        os.close(fd)
        return fd >= self.fd_limit - self.fd_reserve

    def accepting(self) -> None:
        """A client was just accepted: near the descriptor limit, close idle upstream
        connections; with none left to close, have the listeners pause (clients then wait in
        the accept queue instead of being accepted and dropped).

        Far from the limit the probe is skipped: every client connection holds at most three
        descriptors (itself, its upstream, a cache file), the pool at most ``max_total`` idle
        ones, and all the rest (listeners, logs, fills, Redis, DNS) is given ``_fd_slack``."""
        if 3 * len(self.connections) + self.pool.max_total < self._probe_from:
            return
        if self.descriptors_low() and not self.relieve_descriptors(self.fd_reserve):
            if self.on_descriptors_low is not None:
                self.on_descriptors_low()

    def relieve_descriptors(self, most: int = 8) -> int:
        """Out of descriptors: abort up to ``most`` idle connections, least recently used
        first (their descriptors are free once the loop turns); how many were closed."""
        n = 0
        while n < most:
            conn = self.pool.evict_lru()
            if conn is None:
                break
            conn.abort()
            n += 1
        return n

    @property
    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def is_self(self, ip: str, port: int) -> bool:
        """Would connecting to ip:port reach one of our own listeners or the admin API (a loop)?"""
        if port not in self.local_ports:
            return False
        if ip in self.local_addrs:
            return True
        addr = unmapped_ip(ip)
        if addr is None:
            return False
        if addr.version == 4 and ":" in ip and str(addr) in self.local_addrs:
            return True  # ::ffff:127.0.0.1 reaches 127.0.0.1
        return addr.is_loopback or addr.is_unspecified

    def _on_tick(self) -> None:
        now = self.clock.time()
        for conn in self.pool.sweep(now):
            conn.close()
        self.resolver.prune(self.loop.time())  # the resolver's own cache times
        for g in self.groups.values():
            g.tick(now)
        self.auth.tick()
        self._tick = self.clock.call_later(1.0, self._on_tick)

    # ------------------------------------------------------------- connections
    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)

    def closed(self, conn: Connection) -> None:
        """A client connection ended; the last one to end wakes a draining shutdown."""
        self.connections.discard(conn)
        done = self._all_closed
        if done is not None and not self.connections and not done.done():
            done.set_result(None)

    async def wait_closed(self, grace: float) -> None:
        """Until every client connection has ended, or ``grace`` seconds (of the clock)."""
        if not self.connections:
            return
        done = self._all_closed = self.loop.create_future()

        def expire() -> None:
            if not done.done():
                done.set_result(None)

        timer = self.clock.call_later(grace, expire)
        try:
            await done
        finally:
            timer.cancel()
            self._all_closed = None

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for task in self._checks.values():
            task.cancel()
        self.auth.close()
        for conn in self.pool.drain():
            conn.close()
        self.log.close()
        if self._fd_probe >= 0:
            os.close(self._fd_probe)
            self._fd_probe = -1
