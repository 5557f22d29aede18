"""Load balancing for the reverse proxy (pure): which upstream server takes this request.

The engine owns one ``ServerState`` per server (shared with health checking) and asks a
``Balancer`` built once per Plan.  ``now`` is passed in and randomness comes from a
``random.Random`` the balancer holds (seeded in tests), so every decision replays in a unit test.

Rules every policy obeys
------------------------
================  ===========================================================================
rule              meaning
================  ===========================================================================
eligible          ``healthy``, index not in ``exclude`` (servers a retry already tried) and
                  ``active < max_conns`` when ``max_conns`` is set (0 = unlimited)
backup tier       backups are considered only when no primary is eligible (down, excluded or
                  full); traffic returns to the primaries as soon as one is eligible again
nothing eligible  ``pick()`` returns ``None``; the engine answers 503 ``NoHealthyUpstream``
in flight         ``on_start()`` adds one to ``active``, ``on_done()`` takes it off; the engine
                  calls each exactly once per attempt (retries are new attempts), through
                  the group's ``Lease``, which releases once however often it is asked;
                  a reload carries ``active`` over (``carry``) and old leases release
                  into the new state, so a server's count is never split
reload            ``adopt`` keeps smooth round robin's ``current`` scores for the servers
                  that stay (``moved``: old index -> new, matched by address by the group)
slow start        a server that comes back (``mark_up``) weighs 10% -> 100% of its weight,
                  linearly over ``slow_start`` seconds; hash policies ignore it (a key's
                  home must not drift while the weight ramps)
identity          ``index`` is the position in the server list; ``address`` is the hash
                  identity, so it must be unique within an upstream
================  ===========================================================================

Policies
--------
============  ===============================================================================
policy        choice among the eligible servers of the tier
============  ===============================================================================
round_robin   nginx smooth weighted round robin: each pick adds every server's weight to
              its ``current`` score, takes the highest, subtracts the total from it.
              Deterministic; weights 5,1,1 give ``a a b a c a a`` (interleaved, not bursts)
least_conn    lowest ``active / weight``; ties are broken by smooth round robin among the
              tied servers, so idle servers share the load instead of the first one taking all
random_two    power of two choices: two distinct servers sampled in proportion to weight,
              the one with lower ``active / weight`` wins
ewma          peak-EWMA (Finagle, Linkerd): cost = latency estimate * (active + 1) / weight,
              chosen by power of two choices, see ``PeakEwma``
ip_hash/hash  consistent hash ring over ``key`` (client IP, or a header / cookie / URI
              value); ineligible home -> next ring point; ``key is None`` -> round_robin
============  ===============================================================================

Why a ring and not Maglev: when a server leaves (config or health) only its keys move,
every other key stays put, and its keys scatter over the rest by weight; Maglev is more
even but reshuffles a few percent of other servers' keys on every change.  Walking to the
next ring point makes the fallback for a down server equal to a ring built without it, so
it is stable too.  Lookup is a C bisect over ``160 * sum(weights)`` points.
"""

from __future__ import annotations

import math
import random
import struct
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Protocol

POLICIES = ("round_robin", "least_conn", "random_two", "ewma", "ip_hash", "hash")

SLOW_START_FLOOR = 0.1  # share of its weight a server gets the moment it comes back
RING_POINTS_PER_WEIGHT = 160  # as ketama / nginx ``hash ... consistent``
EWMA_DECAY = 10.0  # seconds: time constant of the latency estimate
EWMA_DEFAULT_RTT = 0.001  # estimate for a server never measured: low, so it is tried soon
EWMA_FAIL_PENALTY = 1.0  # a failed attempt counts as at least this latency

_NO_EXCLUDE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One configured server, as compiled from the Plan (immutable)."""

    index: int  # position in the upstream's server list
    address: str  # "host:port", also the hash identity
    weight: int = 1  # >= 1
    backup: bool = False
    max_conns: int = 0  # 0 = unlimited

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"server {self.address}: weight must be >= 1, got {self.weight}")
        if self.max_conns < 0:
            raise ValueError(f"server {self.address}: max_conns must be >= 0, got {self.max_conns}")


class ServerState:
    """Runtime state of one server, shared by the balancer and health checking.  Mutable on
    purpose: it changes on every request, and a frozen copy per request would cost more
    than the pick.  Written only via ``on_start``/``on_done`` and by the health code."""

    __slots__ = ("spec", "healthy", "active", "ewma", "ewma_stamp", "slow_start_begin", "slow_start_until")

    def __init__(self, spec: ServerSpec, healthy: bool = True) -> None:
        self.spec = spec
        self.healthy = healthy
        self.active = 0  # attempts in flight
        self.ewma = 0.0  # peak-EWMA latency estimate, seconds, as of ewma_stamp
        self.ewma_stamp: float | None = None  # time of the last sample; None = never measured
        # A server is not slow-started at boot (nginx does the same): only a recovery ramps.
        self.slow_start_begin = -math.inf
        self.slow_start_until = -math.inf

    def mark_up(self, now: float, slow_start: float = 0.0) -> None:
        """Health code calls this when the server recovers (setting ``healthy`` alone skips
        slow start).  A restarted process is a new server: its old latency is forgotten."""
        if self.healthy:
            return
        self.healthy = True
        self.ewma_stamp = None
        if slow_start > 0.0:
            self.slow_start_begin = now
            self.slow_start_until = now + slow_start

    def mark_down(self) -> None:
        self.healthy = False

    def carry(self, prev: ServerState) -> None:
        """A reload keeps the server: take over its verdict, in-flight count, latency
        estimate and slow start from the state the old Plan's group had (the spec is this
        Plan's).  Leases taken before the reload then release into this state."""
        self.healthy = prev.healthy
        self.active = prev.active
        self.ewma = prev.ewma
        self.ewma_stamp = prev.ewma_stamp
        self.slow_start_begin = prev.slow_start_begin
        self.slow_start_until = prev.slow_start_until

    def effective_weight(self, now: float, slow_start: float) -> float:
        """Weight ramped linearly from 10% to 100% over ``slow_start`` after ``mark_up``,
        so a cold server (empty caches, JIT, pools) is not handed its full share at once."""
        weight = self.spec.weight
        if slow_start <= 0.0 or now >= self.slow_start_until:
            return float(weight)
        progress = min(max((now - self.slow_start_begin) / slow_start, 0.0), 1.0)
        return weight * (SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * progress)


class Balancer(Protocol):
    def pick(
        self,
        servers: Sequence[ServerState],
        now: float,
        key: bytes | None = None,
        exclude: frozenset[int] = frozenset(),
    ) -> ServerState | None: ...

    def on_start(self, s: ServerState, now: float) -> None: ...

    def on_done(self, s: ServerState, now: float, latency: float | None, ok: bool) -> None: ...

    def adopt(self, old: Balancer, moved: Mapping[int, int]) -> None: ...


_Specs = Sequence[ServerSpec]
_States = Sequence[ServerState]
_Excl = frozenset[int]


def make_states(servers: _Specs) -> list[ServerState]:
    """One fresh (healthy, idle, unmeasured) state per spec, in index order."""
    return [ServerState(spec) for spec in servers]


def _usable(s: ServerState, exclude: _Excl) -> bool:
    spec = s.spec
    return s.healthy and spec.index not in exclude and (spec.max_conns == 0 or s.active < spec.max_conns)


def _eligible(s: ServerState, backup: bool, exclude: _Excl) -> bool:
    return s.spec.backup == backup and _usable(s, exclude)


class _Base:
    """Tier handling and in-flight counting shared by every policy.

    ``servers`` passed to ``pick`` must be the states of the specs the balancer was
    built with, in index order (``servers[i].spec.index == i``).
    """

    __slots__ = ("slow_start", "_has_backup")

    def __init__(self, servers: _Specs, slow_start: float) -> None:
        self.slow_start = slow_start
        self._has_backup = any(spec.backup for spec in servers)

    def pick(
        self,
        servers: _States,
        now: float,
        key: bytes | None = None,
        exclude: _Excl = _NO_EXCLUDE,
    ) -> ServerState | None:
        chosen = self._choose(servers, now, False, exclude)
        if chosen is None and self._has_backup:
            chosen = self._choose(servers, now, True, exclude)
        return chosen

    def _choose(self, servers: _States, now: float, backup: bool, exclude: _Excl) -> ServerState | None:
        raise NotImplementedError

    def on_start(self, s: ServerState, now: float) -> None:
        s.active += 1

    def on_done(self, s: ServerState, now: float, latency: float | None, ok: bool) -> None:
        if s.active > 0:
            s.active -= 1

    def adopt(self, old: Balancer, moved: Mapping[int, int]) -> None:
        """A reload: random and hash picks have no rotation to keep (see ``ServerState.carry``)."""


def _smooth(
    current: list[float],
    servers: _States,
    now: float,
    slow_start: float,
    backup: bool,
    exclude: _Excl,
    cap: tuple[int, float] | None = None,
) -> ServerState | None:
    """One step of nginx smooth weighted round robin over the eligible servers of the
    tier; with ``cap = (active, weight)`` only servers whose ratio is not above it."""
    best: ServerState | None = None
    best_score = 0.0
    total = 0.0
    for s in servers:
        spec = s.spec  # _eligible and effective_weight, inline (once per server and pick)
        if spec.backup != backup or not s.healthy or spec.index in exclude:
            continue
        if spec.max_conns != 0 and s.active >= spec.max_conns:
            continue
        if slow_start <= 0.0 or now >= s.slow_start_until:
            w = float(spec.weight)
        else:
            w = s.effective_weight(now, slow_start)
        if cap is not None and s.active * cap[1] > cap[0] * w:
            continue
        i = s.spec.index
        score = current[i] + w
        current[i] = score
        total += w
        if best is None or score > best_score:
            best, best_score = s, score
    if best is not None:
        current[best.spec.index] -= total
    return best


class RoundRobin(_Base):
    """nginx smooth weighted round robin (see the policy table)."""

    __slots__ = ("_current",)

    def __init__(self, servers: _Specs, slow_start: float = 0.0) -> None:
        super().__init__(servers, slow_start)
        self._current = [0.0] * len(servers)

    def _choose(self, servers: _States, now: float, backup: bool, exclude: _Excl) -> ServerState | None:
        return _smooth(self._current, servers, now, self.slow_start, backup, exclude)

    def adopt(self, old: Balancer, moved: Mapping[int, int]) -> None:
        """Keep each staying server's score (a new one starts at 0; the sum need not be 0:
        adding the same amount to every score changes no pick)."""
        prev = old._fallback if isinstance(old, ConsistentHash) else old
        if isinstance(prev, RoundRobin):
            for o, n in moved.items():
                self._current[n] = prev._current[o]


class LeastConn(RoundRobin):
    """Fewest in flight per unit of weight; smooth round robin among the tied (as nginx),
    so with every server idle the load still spreads by weight."""

    __slots__ = ()

    def _choose(self, servers: _States, now: float, backup: bool, exclude: _Excl) -> ServerState | None:
        # The lowest active/weight, compared by cross-multiplying (no division).
        best: tuple[int, float] | None = None
        for s in servers:
            if _eligible(s, backup, exclude):
                w = s.effective_weight(now, self.slow_start)
                if best is None or s.active * best[1] < best[0] * w:
                    best = (s.active, w)
        if best is None:
            return None
        return _smooth(self._current, servers, now, self.slow_start, backup, exclude, best)


class RandomTwo(_Base):
    """Power of two choices: two distinct servers drawn by weight, the less loaded wins.

    O(n) without building a list: one pass for the total weight, one walk per draw.
    """

    __slots__ = ("_rng",)

    def __init__(self, servers: _Specs, slow_start: float = 0.0, seed: int | None = None) -> None:
        super().__init__(servers, slow_start)
        self._rng = random.Random(seed)

    def _draw_weight(self, s: ServerState, now: float) -> float:
        return s.effective_weight(now, self.slow_start)

    def _prefer(self, a: ServerState, b: ServerState, now: float) -> ServerState:
        wa, wb = a.effective_weight(now, self.slow_start), b.effective_weight(now, self.slow_start)
        return a if a.active * wb <= b.active * wa else b

    def _draw(
        self, servers: _States, now: float, backup: bool, exclude: _Excl, r: float, skip: ServerState | None
    ) -> ServerState | None:
        last: ServerState | None = None
        for s in servers:
            if s is skip or not _eligible(s, backup, exclude):
                continue
            last = s
            r -= self._draw_weight(s, now)
            if r < 0.0:
                return s
        return last  # only reached through float rounding at the top end

    def _choose(self, servers: _States, now: float, backup: bool, exclude: _Excl) -> ServerState | None:
        total = 0.0
        count = 0
        only: ServerState | None = None
        for s in servers:
            if _eligible(s, backup, exclude):
                total += self._draw_weight(s, now)
                count += 1
                only = s
        if count <= 1:
            return only
        a = self._draw(servers, now, backup, exclude, self._rng.random() * total, None)
        if a is None:  # unreachable: count >= 2
            return None
        r = self._rng.random() * (total - self._draw_weight(a, now))
        b = self._draw(servers, now, backup, exclude, r, a)
        return a if b is None else self._prefer(a, b, now)


class PeakEwma(RandomTwo):
    """Peak-EWMA (Finagle's and Linkerd/tower's ``PeakEwma``).

    A sample above the estimate replaces it at once (a server turning slow is avoided on
    the next pick, not ``decay`` seconds later); a lower one is blended in with weight
    ``1 - exp(-dt / decay)``, so the estimate forgets at a fixed rate whatever the request
    rate.  A failure counts as at least ``fail_penalty``: failing fast must not look fast.
    The cost ``pick`` sees fades toward zero with silence (as Finagle and tower decay on
    read, but never written back), so a server avoided for being slow is retried in time
    and fast samples bring it back; a server never measured costs ``default_rtt``.

    Picking is power of two choices (uniform draw: weight is already in the cost), as
    Linkerd does, not the minimum over all: each worker process balances on its own view,
    and the minimum would send them all to the same server in the same instant.
    """

    __slots__ = ("decay", "default_rtt", "fail_penalty")

    def __init__(
        self,
        servers: _Specs,
        slow_start: float = 0.0,
        seed: int | None = None,
        *,
        decay: float = EWMA_DECAY,
        default_rtt: float = EWMA_DEFAULT_RTT,
        fail_penalty: float = EWMA_FAIL_PENALTY,
    ) -> None:
        super().__init__(servers, slow_start, seed)
        if decay <= 0.0:
            raise ValueError("ewma decay must be > 0")
        self.decay = decay
        self.default_rtt = default_rtt
        self.fail_penalty = fail_penalty

    def cost(self, s: ServerState, now: float) -> float:
        stamp = s.ewma_stamp
        if stamp is None:
            estimate = self.default_rtt
        else:
            estimate = s.ewma * math.exp(-max(now - stamp, 0.0) / self.decay)
        return estimate * (s.active + 1) / s.effective_weight(now, self.slow_start)

    def _draw_weight(self, s: ServerState, now: float) -> float:
        return 1.0

    def _prefer(self, a: ServerState, b: ServerState, now: float) -> ServerState:
        return a if self.cost(a, now) <= self.cost(b, now) else b

    def observe(self, s: ServerState, now: float, sample: float) -> None:
        stamp = s.ewma_stamp
        if stamp is None or sample > s.ewma:
            s.ewma = sample
        else:
            w = math.exp(-max(now - stamp, 0.0) / self.decay)
            s.ewma = s.ewma * w + sample * (1.0 - w)
        s.ewma_stamp = now

    def on_done(self, s: ServerState, now: float, latency: float | None, ok: bool) -> None:
        super().on_done(s, now, latency, ok)
        sample = latency if ok else max(latency or 0.0, self.fail_penalty)
        if sample is not None:
            self.observe(s, now, sample)


def _hash64(data: bytes) -> int:
    """Stable 64-bit hash (never ``hash()``: it is salted per process, and every worker
    and every instance must send a key to the same server)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class _Ring:
    """Sorted ring points and the server index owning each (one ring per tier)."""

    __slots__ = ("points", "owners", "everyone")

    def __init__(self, specs: _Specs) -> None:
        pairs: list[tuple[int, int]] = []
        for spec in specs:
            n = RING_POINTS_PER_WEIGHT * spec.weight
            # One 64-byte digest yields eight 64-bit points: 8x fewer hashes at build time.
            for block in range((n + 7) // 8):
                digest = blake2b(f"{spec.address}#{block}".encode(), digest_size=64).digest()
                for h in struct.unpack(">8Q", digest)[: n - 8 * block]:
                    pairs.append((h, spec.index))
        pairs.sort()  # ties (64-bit collisions) resolved by index: still deterministic
        self.points = [h for h, _ in pairs]
        self.owners = [i for _, i in pairs]
        self.everyone = sum(1 << spec.index for spec in specs)  # bit set of the ring's servers

    def walk(self, servers: _States, h: int, exclude: _Excl) -> ServerState | None:
        """First eligible server clockwise from ``h``; gives up once every server on the
        ring has been seen ineligible, so a dead tier costs at most one lap."""
        points, owners = self.points, self.owners
        n = len(points)
        i = bisect_left(points, h)
        rejected = 0  # bit set of servers already found ineligible
        for _ in range(n):
            if i == n:
                i = 0
            idx = owners[i]
            bit = 1 << idx
            if not rejected & bit:
                s = servers[idx]
                if _usable(s, exclude):
                    return s
                rejected |= bit
                if rejected == self.everyone:
                    return None
            i += 1
        return None


class ConsistentHash(_Base):
    """``ip_hash`` and ``hash``: consistent ring over ``key`` (see the module docstring).

    Both policies hash whatever bytes the engine passes (for ``ip_hash`` the whole
    client address, not nginx's /24: clients behind one NAT range still spread).
    """

    __slots__ = ("_primary", "_backup", "_fallback")

    def __init__(self, servers: _Specs, slow_start: float = 0.0) -> None:
        super().__init__(servers, slow_start)
        self._primary = _Ring([spec for spec in servers if not spec.backup])
        self._backup = _Ring([spec for spec in servers if spec.backup])
        self._fallback = RoundRobin(servers, slow_start)

    def pick(
        self,
        servers: _States,
        now: float,
        key: bytes | None = None,
        exclude: _Excl = _NO_EXCLUDE,
    ) -> ServerState | None:
        if key is None:
            return self._fallback.pick(servers, now, None, exclude)
        h = _hash64(key)
        chosen = self._primary.walk(servers, h, exclude)
        if chosen is None and self._has_backup:
            chosen = self._backup.walk(servers, h, exclude)
        return chosen

    def adopt(self, old: Balancer, moved: Mapping[int, int]) -> None:
        self._fallback.adopt(old, moved)  # the ring is the config's own: only key-less picks rotate


def make_balancer(
    policy: str, servers: _Specs, *, slow_start: float = 0.0, seed: int | None = None
) -> Balancer:
    """Build the balancer for one upstream; called once per Plan, never per request."""
    for position, spec in enumerate(servers):
        if spec.index != position:
            raise ValueError(f"server {spec.address}: index {spec.index} != position {position}")
    addresses = [spec.address for spec in servers]
    if len(set(addresses)) != len(addresses):
        raise ValueError("server addresses must be unique within an upstream (they are the hash identity)")
    if slow_start < 0.0:
        raise ValueError("slow_start must be >= 0")
    if policy in ("round_robin", "least_conn"):
        return (RoundRobin if policy == "round_robin" else LeastConn)(servers, slow_start)
    if policy in ("random_two", "ewma"):
        return (RandomTwo if policy == "random_two" else PeakEwma)(servers, slow_start, seed)
    if policy in ("ip_hash", "hash"):
        return ConsistentHash(servers, slow_start)
    raise ValueError(f"unknown balance policy {policy!r}; expected one of {', '.join(POLICIES)}")
