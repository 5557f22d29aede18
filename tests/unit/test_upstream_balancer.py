"""Load balancers: distribution, stickiness, fallbacks and tiers, driven with an explicit clock."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from ferryman.upstream.balancer import (
    POLICIES,
    Balancer,
    PeakEwma,
    ServerSpec,
    ServerState,
    make_balancer,
    make_states,
)


def specs(
    *weights: int, backup: Sequence[int] = (), max_conns: dict[int, int] | None = None
) -> list[ServerSpec]:
    caps = max_conns or {}
    return [
        ServerSpec(i, f"10.0.0.{i + 1}:8000", w, backup=i in backup, max_conns=caps.get(i, 0))
        for i, w in enumerate(weights)
    ]


def setup(
    policy: str,
    *weights: int,
    seed: int | None = 1,
    slow_start: float = 0.0,
    backup: Sequence[int] = (),
    max_conns: dict[int, int] | None = None,
) -> tuple[Balancer, list[ServerState]]:
    sp = specs(*weights, backup=backup, max_conns=max_conns)
    return make_balancer(policy, sp, slow_start=slow_start, seed=seed), make_states(sp)


def picks(
    bal: Balancer, states: list[ServerState], n: int, now: float = 0.0, key: bytes | None = None
) -> list[int]:
    out = []
    for _ in range(n):
        s = bal.pick(states, now, key)
        assert s is not None
        out.append(s.spec.index)
    return out


def keys(n: int = 10_000) -> list[bytes]:
    return [f"198.51.{i // 256}.{i % 256}".encode() for i in range(n)]


def owner_map(bal: Balancer, states: list[ServerState], ks: list[bytes]) -> dict[bytes, str]:
    out = {}
    for k in ks:
        s = bal.pick(states, 0.0, k)
        assert s is not None
        out[k] = s.spec.address
    return out


# -- round robin -----------------------------------------------------------------------


def test_round_robin_distribution_matches_weights_exactly() -> None:
    bal, states = setup("round_robin", 5, 3, 2, 1)
    assert Counter(picks(bal, states, 11 * 40)) == {0: 200, 1: 120, 2: 80, 3: 40}


def test_round_robin_interleaves_like_nginx_smooth_wrr() -> None:
    bal, states = setup("round_robin", 5, 1, 1)
    assert picks(bal, states, 14) == [0, 0, 1, 0, 2, 0, 0] * 2


def test_round_robin_equal_weights_rotate_and_are_deterministic() -> None:
    bal, states = setup("round_robin", 1, 1, 1)
    bal2, states2 = setup("round_robin", 1, 1, 1)
    assert picks(bal, states, 6) == [0, 1, 2, 0, 1, 2] == picks(bal2, states2, 6)


# -- least connections -----------------------------------------------------------------


def test_least_conn_prefers_idle_server() -> None:
    bal, states = setup("least_conn", 1, 1, 1)
    states[0].active, states[1].active, states[2].active = 3, 0, 2
    assert picks(bal, states, 3) == [1, 1, 1]


def test_least_conn_compares_active_relative_to_weight() -> None:
    bal, states = setup("least_conn", 3, 1)
    states[0].active, states[1].active = 2, 1  # 2/3 < 1/1
    assert picks(bal, states, 1) == [0]
    states[0].active = 4  # 4/3 > 1/1
    assert picks(bal, states, 1) == [1]
    bal, states = setup("least_conn", 2, 1, 1)
    for s in states:
        s.active = 1  # equal counts are not a tie: 1/2 beats 1/1
    assert picks(bal, states, 4) == [0, 0, 0, 0]


def test_least_conn_spreads_ties_by_round_robin_not_first() -> None:
    bal, states = setup("least_conn", 1, 1, 1)
    assert picks(bal, states, 6) == [0, 1, 2, 0, 1, 2]
    bal, states = setup("least_conn", 2, 1)  # tied at zero: weighted round robin among the tied
    assert Counter(picks(bal, states, 30)) == {0: 20, 1: 10}


def test_least_conn_fills_servers_evenly_with_on_start() -> None:
    bal, states = setup("least_conn", 1, 1, 1)
    for _ in range(9):
        s = bal.pick(states, 0.0)
        assert s is not None
        bal.on_start(s, 0.0)
    assert [s.active for s in states] == [3, 3, 3]


# -- power of two choices --------------------------------------------------------------


def test_random_two_is_deterministic_with_seed() -> None:
    a = picks(*setup("random_two", 1, 1, 1, 1, seed=7), 200)
    b = picks(*setup("random_two", 1, 1, 1, 1, seed=7), 200)
    c = picks(*setup("random_two", 1, 1, 1, 1, seed=8), 200)
    assert a == b
    assert a != c


def test_random_two_draws_in_proportion_to_weight_when_idle() -> None:
    bal, states = setup("random_two", 2, 1, 1, seed=3)
    got = Counter(picks(bal, states, 20_000))
    assert got[0] / 20_000 == pytest.approx(0.5, abs=0.03)
    assert got[1] / 20_000 == pytest.approx(0.25, abs=0.03)


def test_random_two_avoids_heavily_loaded_server_in_the_long_run() -> None:
    bal, states = setup("random_two", 1, 1, 1, 1, seed=5)
    states[0].active = 50  # stuck requests that never finish
    inflight: list[ServerState] = []
    got: Counter[int] = Counter()
    for _ in range(5_000):
        s = bal.pick(states, 0.0)
        assert s is not None
        bal.on_start(s, 0.0)
        inflight.append(s)
        got[s.spec.index] += 1
        if len(inflight) > 12:
            bal.on_done(inflight.pop(0), 0.0, 0.01, True)
    assert got[0] == 0  # never the lesser of two: every pair holds a less loaded server
    assert min(got[1], got[2], got[3]) > 1_400


# -- peak EWMA -------------------------------------------------------------------------


def simulate_ewma(
    bal: Balancer, states: list[ServerState], latency: Callable[[int, float], float], until: float
) -> list[tuple[float, int]]:
    """100 requests/s; each completes after latency(server, t); on_done at completion time."""
    inflight: list[tuple[float, float, int, int]] = []  # (finish, start, seq, server)
    log = []
    for step in range(int(until * 100)):
        now = step / 100
        while inflight and inflight[0][0] <= now:
            end, start, _, idx = heapq.heappop(inflight)
            bal.on_done(states[idx], end, end - start, True)
        s = bal.pick(states, now)
        assert s is not None
        bal.on_start(s, now)
        heapq.heappush(inflight, (now + latency(s.spec.index, now), now, step, s.spec.index))
        log.append((now, s.spec.index))
    return log


def share(log: list[tuple[float, int]], idx: int, start: float, end: float) -> float:
    window = [i for t, i in log if start <= t < end]
    return window.count(idx) / len(window)


def test_ewma_shifts_traffic_away_from_slow_server_and_back_when_it_recovers() -> None:
    bal, states = setup("ewma", 1, 1, 1, seed=11)

    def latency(idx: int, t: float) -> float:
        return 0.5 if idx == 1 and 60.0 <= t < 120.0 else 0.02

    log = simulate_ewma(bal, states, latency, 260.0)
    assert share(log, 1, 20, 60) > 0.25  # healthy: a fair share
    assert share(log, 1, 65, 120) < 0.03  # slow: only probes
    assert share(log, 1, 220, 260) > 0.25  # recovered: back to a fair share


def test_ewma_peak_sample_replaces_estimate_then_decays_with_time_constant() -> None:
    sp = specs(1)
    bal, s = PeakEwma(sp, decay=10.0), make_states(sp)[0]
    bal.on_start(s, 0.0)
    bal.on_done(s, 0.0, 0.01, True)
    assert s.ewma == 0.01
    bal.on_start(s, 1.0)
    bal.on_done(s, 1.0, 1.0, True)
    assert s.ewma == 1.0  # a peak is taken at once
    bal.on_start(s, 11.0)
    bal.on_done(s, 11.0, 0.01, True)
    w = math.exp(-1.0)
    assert s.ewma == pytest.approx(1.0 * w + 0.01 * (1 - w))
    assert bal.cost(s, 21.0) == pytest.approx(s.ewma * w)  # silence fades the cost pick sees
    assert s.active == 0


def test_ewma_tries_unmeasured_server_first() -> None:
    bal, states = setup("ewma", 1, 1)
    bal.on_start(states[0], 0.0)
    bal.on_done(states[0], 0.0, 0.05, True)
    assert picks(bal, states, 1, now=0.0) == [1]


def test_ewma_failure_counts_as_penalty_latency() -> None:
    bal, states = setup("ewma", 1, 1)
    bal.on_start(states[0], 0.0)
    bal.on_done(states[0], 0.0, 0.0005, False)  # connection refused: fast, but not good
    assert states[0].ewma >= 1.0
    bal.on_start(states[1], 0.0)
    bal.on_done(states[1], 0.0, None, True)  # no timing: no sample
    assert states[1].ewma_stamp is None


# -- consistent hashing ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ["ip_hash", "hash"])
def test_hash_same_key_same_server_across_picks_and_instances(policy: str) -> None:
    bal, states = setup(policy, 1, 1, 1, 1)
    bal2, states2 = setup(policy, 1, 1, 1, 1)
    ks = keys(2_000)
    first = owner_map(bal, states, ks)
    assert owner_map(bal, states, ks) == first == owner_map(bal2, states2, ks)
    assert len(set(first.values())) == 4


def test_hash_spreads_keys_in_proportion_to_weight() -> None:
    bal, states = setup("hash", 1, 1, 2)
    got = Counter(owner_map(bal, states, keys()).values())
    assert got["10.0.0.3:8000"] / 10_000 == pytest.approx(0.5, abs=0.06)
    assert got["10.0.0.1:8000"] / 10_000 == pytest.approx(0.25, abs=0.06)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_hash_removing_one_server_remaps_about_one_nth_and_others_stay_put(n: int) -> None:
    full = specs(*([1] * n))
    removed = full[n // 2].address
    rest = [ServerSpec(i, s.address) for i, s in enumerate(x for x in full if x.address != removed)]
    ks = keys()
    before = owner_map(make_balancer("hash", full), make_states(full), ks)
    after = owner_map(make_balancer("hash", rest), make_states(rest), ks)
    moved = [k for k in ks if before[k] != after[k]]
    assert len(moved) / len(ks) <= 1 / n + 0.05
    assert all(before[k] == removed for k in moved)  # keys of the remaining servers stay put
    assert len({after[k] for k in moved}) > 1  # orphans scatter, not all onto one neighbour


def test_hash_unhealthy_server_skipped_with_stable_fallback() -> None:
    sp = specs(1, 1, 1, 1, 1)
    bal, states = make_balancer("hash", sp), make_states(sp)
    ks = keys(5_000)
    before = owner_map(bal, states, ks)
    states[2].mark_down()
    during = owner_map(bal, states, ks)
    assert during == owner_map(bal, states, ks)  # the fallback is stable
    without = [ServerSpec(i, s.address) for i, s in enumerate(x for x in sp if x.index != 2)]
    assert during == owner_map(make_balancer("hash", without), make_states(without), ks)
    assert all(during[k] == before[k] for k in ks if before[k] != sp[2].address)
    states[2].mark_up(10.0)
    assert owner_map(bal, states, ks) == before  # keys return home on recovery


def test_hash_exclude_walks_to_same_candidate_as_a_down_server() -> None:
    bal, states = setup("hash", 1, 1, 1, 1)
    for k in keys(300):
        home = bal.pick(states, 0.0, k)
        assert home is not None
        retry = bal.pick(states, 0.0, k, frozenset({home.spec.index}))
        assert retry is not None and retry is not home
        home.mark_down()
        assert bal.pick(states, 0.0, k) is retry
        home.healthy = True


def test_hash_without_key_falls_back_to_round_robin() -> None:
    bal, states = setup("hash", 5, 1, 1)
    assert picks(bal, states, 7, key=None) == [0, 0, 1, 0, 2, 0, 0]


# -- rules every policy obeys ----------------------------------------------------------

ALL = pytest.mark.parametrize("policy", POLICIES)


def pick_any(
    bal: Balancer, states: list[ServerState], n: int, exclude: frozenset[int] = frozenset()
) -> list[int | None]:
    """n picks with distinct keys (so hash policies cover the ring too)."""
    out: list[int | None] = []
    for i in range(n):
        s = bal.pick(states, 0.0, f"k{i}".encode(), exclude)
        out.append(None if s is None else s.spec.index)
    return out


@ALL
def test_backup_used_only_when_all_primaries_unhealthy_and_traffic_returns(policy: str) -> None:
    bal, states = setup(policy, 1, 1, 1, backup=[2])
    assert 2 not in pick_any(bal, states, 100)
    states[0].mark_down()
    assert set(pick_any(bal, states, 100)) == {1}
    states[1].mark_down()
    assert set(pick_any(bal, states, 100)) == {2}
    states[1].mark_up(5.0)
    assert set(pick_any(bal, states, 100)) == {1}


@ALL
def test_backup_used_when_primaries_excluded_or_full(policy: str) -> None:
    bal, states = setup(policy, 1, 1, 1, backup=[2], max_conns={0: 1})
    assert set(pick_any(bal, states, 50, exclude=frozenset({1}))) == {0}
    states[0].active = 1
    assert set(pick_any(bal, states, 50, exclude=frozenset({1}))) == {2}


@ALL
def test_max_conns_respected(policy: str) -> None:
    bal, states = setup(policy, 1, 1, max_conns={0: 2, 1: 3})
    for i in range(5):
        s = bal.pick(states, 0.0, f"key{i % 2}".encode())
        assert s is not None
        bal.on_start(s, 0.0)
        assert s.active <= (s.spec.max_conns or 99)
    assert [s.active for s in states] == [2, 3]
    assert bal.pick(states, 0.0, b"key0") is None
    bal.on_done(states[0], 1.0, 0.01, True)
    assert pick_any(bal, states, 3) == [0, 0, 0]


@ALL
def test_exclude_honoured(policy: str) -> None:
    bal, states = setup(policy, 3, 2, 1)
    assert set(pick_any(bal, states, 100, exclude=frozenset({0, 1}))) == {2}
    assert set(pick_any(bal, states, 10, exclude=frozenset({0, 1, 2}))) == {None}


@ALL
def test_nothing_eligible_returns_none(policy: str) -> None:
    empty = make_balancer(policy, [], seed=1)
    assert empty.pick([], 0.0, b"k") is None
    assert empty.pick([], 0.0) is None
    bal, states = setup(policy, 1, 1, backup=[1])
    for s in states:
        s.mark_down()
    assert set(pick_any(bal, states, 5)) == {None}


@ALL
def test_on_done_never_drives_active_negative(policy: str) -> None:
    bal, states = setup(policy, 1)
    bal.on_start(states[0], 0.0)
    bal.on_done(states[0], 1.0, 0.1, True)
    bal.on_done(states[0], 1.0, 0.1, True)
    assert states[0].active == 0


# -- slow start ------------------------------------------------------------------------


def test_effective_weight_ramps_from_ten_percent_after_recovery_only() -> None:
    s = ServerState(ServerSpec(0, "a:1", weight=4))
    assert s.effective_weight(0.0, 30.0) == 4.0  # not slow-started at boot
    s.mark_down()
    s.mark_up(100.0, 30.0)
    assert s.effective_weight(100.0, 30.0) == pytest.approx(0.4)
    assert s.effective_weight(115.0, 30.0) == pytest.approx(4 * 0.55)
    assert s.effective_weight(130.0, 30.0) == 4.0
    s.mark_up(131.0, 30.0)  # already up: no new ramp
    assert s.effective_weight(131.0, 30.0) == 4.0
    assert s.effective_weight(110.0, 0.0) == 4.0  # slow start disabled


def test_round_robin_slow_start_gives_recovering_server_few_picks_then_full_share() -> None:
    bal, states = setup("round_robin", 1, 1, 1, slow_start=10.0)
    states[1].mark_down()
    assert 1 not in picks(bal, states, 30, now=50.0)
    states[1].mark_up(100.0, 10.0)
    early = Counter(picks(bal, states, 300, now=100.0))
    assert 5 <= early[1] <= 20  # ~0.1 / 2.1 of the picks
    middle = Counter(picks(bal, states, 300, now=105.0))
    assert early[1] < middle[1] < 100
    late = Counter(picks(bal, states, 300, now=110.0))
    assert all(abs(late[i] - 100) <= 1 for i in range(3))


# -- construction ----------------------------------------------------------------------


def test_make_balancer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown balance policy"):
        make_balancer("fastest", specs(1))
    with pytest.raises(ValueError, match="index"):
        make_balancer("round_robin", [ServerSpec(1, "a:1")])
    with pytest.raises(ValueError, match="unique"):
        make_balancer("hash", [ServerSpec(0, "a:1"), ServerSpec(1, "a:1")])
    with pytest.raises(ValueError, match="weight"):
        ServerSpec(0, "a:1", weight=0)


# -- reload: a new Plan's balancer keeps the rotation for the servers that stay --------


def _one_per_reload(policy: str, *weights: int, n: int, carry: bool) -> list[int]:
    """``n`` picks, each by a balancer built anew (as by a reload) before it."""
    sp = specs(*weights)
    states = make_states(sp)
    bal = make_balancer(policy, sp)
    out = []
    for _ in range(n):
        new = make_balancer(policy, sp)
        if carry:
            new.adopt(bal, {i: i for i in range(len(sp))})
        bal = new
        out.extend(picks(bal, states, 1))
    return out


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "hash"])
def test_a_reload_before_every_pick_keeps_the_rotation(policy: str) -> None:
    assert _one_per_reload(policy, 1, 1, 1, n=6, carry=False) == [0] * 6  # what a fresh start does
    assert _one_per_reload(policy, 1, 1, 1, n=6, carry=True) == [0, 1, 2, 0, 1, 2]
    assert _one_per_reload(policy, 5, 1, 1, n=7, carry=True) == picks(*setup(policy, 5, 1, 1), 7)


def test_the_rotation_follows_servers_by_the_map_and_new_ones_start_at_zero() -> None:
    old, old_states = setup("round_robin", 1, 1, 1)
    assert picks(old, old_states, 2) == [0, 1]  # 10.0.0.3 is next
    # The new Plan: 10.0.0.3 first, 10.0.0.1 dropped, 10.0.0.2 second, one new server.
    sp = [ServerSpec(0, "10.0.0.3:8000"), ServerSpec(1, "10.0.0.2:8000"), ServerSpec(2, "10.0.0.9:8000")]
    new = make_balancer("round_robin", sp)
    new.adopt(old, {2: 0, 1: 1})
    states = make_states(sp)
    assert picks(new, states, 2) == [0, 2]  # 10.0.0.3's turn (not 10.0.0.2's), then the newcomer
    assert Counter(picks(new, states, 300)) == {0: 100, 1: 100, 2: 100}  # and the shares hold


@pytest.mark.parametrize("old_policy", POLICIES)
@pytest.mark.parametrize("new_policy", POLICIES)
def test_adopting_across_a_policy_change_keeps_picking(old_policy: str, new_policy: str) -> None:
    old, states = setup(old_policy, 2, 1)
    picks(old, states, 3)
    new = make_balancer(new_policy, specs(2, 1), seed=1)
    new.adopt(old, {0: 0, 1: 1})
    assert Counter(picks(new, states, 300)) == Counter(picks(make_balancer(new_policy, specs(2, 1), seed=1),
                                                            states, 300))
