"""Backend health: active rise/fall, passive outlier ejection, the combined view."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.upstream.health import (
    ActiveHealth,
    Ejection,
    Health,
    OutlierDetector,
    PoolHealth,
    Transition,
)

# -- active checks ---------------------------------------------------------------------


def test_starts_up_and_goes_down_after_fall_consecutive_failures() -> None:
    h = ActiveHealth(rise=2, fall=3)
    assert h.is_up and h.since == 0.0
    assert h.observe(False, 1.0) is None
    assert h.observe(False, 2.0) is None
    assert h.observe(False, 3.0) == Transition(Health.UP, Health.DOWN, 3.0, 3)
    assert h.state is Health.DOWN and not h.is_up and h.since == 3.0
    assert h.observe(False, 4.0) is None  # already down: no second transition


def test_comes_back_after_rise_consecutive_successes() -> None:
    h = ActiveHealth(rise=2, fall=1)
    assert h.observe(False, 1.0) == Transition(Health.UP, Health.DOWN, 1.0, 1)
    assert h.observe(True, 2.0) is None
    assert h.observe(True, 3.0) == Transition(Health.DOWN, Health.UP, 3.0, 2)
    assert h.is_up and h.since == 3.0


def test_streak_resets_on_the_opposite_result() -> None:
    h = ActiveHealth(rise=3, fall=3)
    for t, ok in enumerate([False, False, True, False, False, True]):
        assert h.observe(ok, float(t)) is None
    assert h.is_up
    for t in range(3):
        h.observe(False, 10.0 + t)
    assert h.state is Health.DOWN
    for t, ok in enumerate([True, True, False, True, True]):
        assert h.observe(ok, 20.0 + t) is None
    assert h.state is Health.DOWN
    assert h.observe(True, 30.0) is not None


def test_flapping_server_changes_state_only_at_thresholds() -> None:
    h = ActiveHealth(rise=2, fall=2)
    changes = [h.observe(ok, float(t)) for t, ok in enumerate([True, False] * 20)]
    assert all(c is None for c in changes)
    assert h.is_up
    pattern = [False, False, True, True] * 3  # the slowest flap that still flips
    changes = [h.observe(ok, 100.0 + t) for t, ok in enumerate(pattern)]
    states = [c.new for c in changes if c is not None]
    assert states == [Health.DOWN, Health.UP] * 3


def test_start_down_needs_rise_successes() -> None:
    h = ActiveHealth(rise=2, fall=5, start_up=False, now=7.0)
    assert h.state is Health.DOWN and h.since == 7.0
    assert h.observe(True, 8.0) is None
    assert h.observe(True, 9.0) == Transition(Health.DOWN, Health.UP, 9.0, 2)


def test_rise_one_fall_one() -> None:
    h = ActiveHealth(rise=1, fall=1)
    assert h.observe(True, 0.0) is None
    assert h.observe(False, 1.0) is not None
    assert h.observe(True, 2.0) is not None


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_active_rejects_nonpositive_thresholds(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        ActiveHealth(rise, fall)


# -- outlier detection: threshold and window -------------------------------------------


def detector(size: int = 10, **kw: float | bool) -> OutlierDetector:
    args: dict[str, float | bool] = {
        "failures": 3,
        "window": 10.0,
        "base_ejection": 30.0,
        "max_ejection_share": 0.5,
    }
    args.update(kw)
    return OutlierDetector(size, **args)  # type: ignore[arg-type]


def test_ejects_after_n_failures_within_window() -> None:
    d = detector()
    assert d.record(0, False, 0.0) is None
    assert d.record(0, False, 1.0) is None
    e = d.record(0, False, 2.0)
    assert e == Ejection(index=0, at=2.0, until=32.0, times=1)
    assert not d.is_available(0, 2.0)
    assert d.ejection(0, 10.0) == e
    assert d.is_available(1, 2.0)
    assert d.ejected_count(2.0) == 1


def test_old_failures_fall_out_of_the_window() -> None:
    d = detector()
    d.record(0, False, 0.0)
    d.record(0, False, 5.0)
    assert d.record(0, False, 10.5) is None  # the first is 10.5 s old: outside
    assert d.record(0, False, 14.0) is not None  # 5.0, 10.5, 14.0: within 10 s


def test_failure_exactly_at_window_edge_counts() -> None:
    d = detector()
    d.record(0, False, 0.0)
    d.record(0, False, 5.0)
    assert d.record(0, False, 10.0) is not None


def test_success_resets_the_count_by_default() -> None:
    d = detector()
    d.record(0, False, 0.0)
    d.record(0, False, 1.0)
    d.record(0, True, 1.5)
    assert d.record(0, False, 2.0) is None
    assert d.record(0, False, 3.0) is None
    assert d.record(0, False, 4.0) is not None


def test_non_consecutive_mode_counts_failures_across_successes() -> None:
    d = detector(consecutive=False)
    d.record(0, False, 0.0)
    d.record(0, True, 0.5)
    d.record(0, False, 1.0)
    d.record(0, True, 1.5)
    assert d.record(0, False, 2.0) is not None


def test_servers_are_counted_separately() -> None:
    d = detector()
    for t in range(2):
        d.record(0, False, float(t))
        d.record(1, False, float(t))
    assert d.record(2, False, 2.0) is None
    assert d.record(1, False, 2.0) is not None
    assert d.is_available(0, 2.0)


# -- outlier detection: duration growth and decay --------------------------------------


def eject(d: OutlierDetector, index: int, now: float) -> Ejection:
    e: Ejection | None = None
    for _ in range(d.failures):
        e = d.record(index, False, now)
    assert e is not None
    return e


def test_ejection_duration_grows_with_each_ejection_and_is_capped() -> None:
    d = detector(base_ejection=10.0, max_ejection=35.0)
    durations = []
    now = 0.0
    for _ in range(5):
        e = eject(d, 0, now)
        durations.append(e.until - e.at)
        assert d.expired(e.until - 0.001) == []
        assert d.expired(e.until) == [0]
        now = e.until + 1.0  # straight back to failing
    assert durations == [10.0, 20.0, 30.0, 35.0, 35.0]


def test_ejection_count_decays_while_healthy() -> None:
    d = detector(base_ejection=10.0)
    e1 = eject(d, 0, 0.0)
    d.expired(e1.until)
    e2 = eject(d, 0, e1.until + 1.0)
    assert e2.times == 2
    d.expired(e2.until)
    # 25 s back in the pool: two base periods forgiven, so 2 - 2 + 1.
    e3 = eject(d, 0, e2.until + 25.0)
    assert e3.times == 1 and e3.until - e3.at == 10.0


def test_results_while_ejected_are_ignored() -> None:
    d = detector()
    e = eject(d, 0, 0.0)
    for t in range(10):
        assert d.record(0, False, 1.0 + t) is None
        d.record(0, True, 1.5 + t)
    assert d.ejection(0, 20.0) == e  # not extended
    assert d.expired(e.until) == [0]
    # History was cleared on return: it takes a full new run of failures.
    assert d.record(0, False, e.until + 1) is None
    assert d.record(0, False, e.until + 2) is None
    assert d.record(0, False, e.until + 3) is not None


# -- outlier detection: the share cap --------------------------------------------------


def test_share_cap_limits_simultaneous_ejections() -> None:
    d = detector(size=10, max_ejection_share=0.5)
    assert d.cap == 5
    ejected = [i for i in range(10) if _fail(d, i, 0.0) is not None]
    assert ejected == [0, 1, 2, 3, 4]
    assert d.ejected_count(0.0) == 5
    assert [i for i in range(10) if d.is_available(i, 0.0)] == [5, 6, 7, 8, 9]


def test_capped_server_is_ejected_once_room_frees() -> None:
    d = detector(size=10, max_ejection_share=0.5)
    for i in range(6):
        _fail(d, i, 0.0)
    assert d.is_available(5, 0.0)  # held back by the cap
    assert d.expired(30.0) == [0, 1, 2, 3, 4]
    # Room now, but its capped failures at 0.0 are out of the 10 s window.
    assert d.record(5, False, 30.0) is None
    assert d.record(5, False, 31.0) is None
    assert d.record(5, False, 32.0) is not None
    assert not d.is_available(5, 32.0)


def test_capped_server_ejected_on_next_failure_within_window() -> None:
    d = detector(size=4, max_ejection_share=0.25, base_ejection=5.0)
    assert d.cap == 1
    eject(d, 0, 0.0)
    assert _fail(d, 1, 1.0) is None
    assert d.expired(5.0) == [0]
    assert d.record(1, False, 6.0) is not None  # failures at 1.0 x2 and 6.0: within 10 s


@pytest.mark.parametrize(
    ("size", "share", "cap"),
    [
        (10, 0.5, 5),
        (10, 0.3, 3),
        (3, 0.5, 1),
        (2, 0.1, 1),
        (5, 0.1, 1),
        (1, 1.0, 1),
        (1, 0.5, 0),
        (10, 0.0, 0),
    ],
)
def test_cap_rounding(size: int, share: float, cap: int) -> None:
    assert detector(size=size, max_ejection_share=share).cap == cap


def test_pool_of_one_with_partial_share_is_never_ejected() -> None:
    d = detector(size=1, max_ejection_share=0.5)
    for t in range(20):
        assert d.record(0, False, float(t) / 10) is None
    assert d.is_available(0, 2.0)


def test_zero_share_disables_ejection() -> None:
    d = detector(size=10, max_ejection_share=0.0)
    assert _fail(d, 0, 0.0) is None


@pytest.mark.parametrize(
    "kw",
    [
        {"failures": 0},
        {"window": 0.0},
        {"base_ejection": 0.0},
        {"max_ejection_share": 1.5},
        {"max_ejection_share": -0.1},
        {"base_ejection": 30.0, "max_ejection": 10.0},
    ],
)
def test_outlier_rejects_bad_parameters(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        detector(**kw)


# -- return after expiry ---------------------------------------------------------------


def test_expired_reports_each_return_once_in_order() -> None:
    d = detector(size=4, max_ejection_share=1.0, base_ejection=10.0)
    eject(d, 2, 0.0)
    eject(d, 0, 5.0)
    assert d.expired(9.0) == []
    assert d.expired(10.0) == [2]
    assert d.expired(15.0) == [0]
    assert d.expired(100.0) == []
    assert all(d.is_available(i, 100.0) for i in range(4))


def test_available_at_until_even_before_expired_is_called() -> None:
    d = detector(base_ejection=10.0)
    eject(d, 0, 0.0)
    assert not d.is_available(0, 9.999)
    assert d.is_available(0, 10.0)
    assert d.ejected_count(10.0) == 0


def test_return_noticed_by_record_is_still_reported() -> None:
    d = detector(base_ejection=10.0)
    eject(d, 0, 0.0)
    assert d.record(0, True, 12.0) is None  # the first result after the ejection ended
    assert d.expired(13.0) == [0]
    assert d.expired(14.0) == []


def test_return_then_reejection_before_expired_is_not_reported() -> None:
    d = detector(base_ejection=10.0)
    eject(d, 0, 0.0)
    e = eject(d, 0, 11.0)
    assert e.times == 2
    assert d.expired(12.0) == []
    assert d.expired(e.until) == [0]


# -- reload: a new detector adopts a server's state ------------------------------------


def test_adopted_ejection_keeps_its_expiry_at_the_new_index() -> None:
    old = detector(size=3, base_ejection=10.0)
    e = eject(old, 2, 5.0)
    new = detector(size=3, base_ejection=10.0)
    new.adopt(0, old, 2)  # the server moved from index 2 to 0
    assert new.ejection(0, 6.0) == Ejection(0, e.at, e.until, e.times)
    assert not new.is_available(0, 14.9) and new.ejected_count(14.9) == 1
    assert new.expired(14.9) == []
    assert new.expired(15.0) == [0]  # back exactly when it would have been without a reload
    assert new.is_available(0, 15.0)


def test_adopted_failures_count_toward_the_next_ejection() -> None:
    old = detector(failures=3, window=10.0)
    old.record(1, False, 1.0)
    old.record(1, False, 2.0)
    new = detector(failures=3, window=10.0)
    new.adopt(1, old, 1)
    assert new.record(1, False, 3.0) is not None  # the third failure, the first after the reload


def test_adopted_failures_fit_a_lower_threshold() -> None:
    old = detector(failures=5)
    for t in (1.0, 2.0, 3.0, 4.0):
        old.record(0, False, t)
    new = detector(failures=2)
    new.adopt(0, old, 0)
    assert new.record(0, False, 5.0) is not None  # the newest failures kept, at most 2


def test_adopted_ejection_count_still_lengthens_the_next_one() -> None:
    old = detector(base_ejection=10.0, max_ejection=100.0)
    eject(old, 0, 0.0)
    new = detector(base_ejection=10.0, max_ejection=100.0)
    new.adopt(0, old, 0)
    assert new.expired(10.0) == [0]
    assert eject(new, 0, 11.0).times == 2  # not forgiven by the reload


def test_a_return_not_yet_reported_is_reported_by_the_new_detector() -> None:
    old = detector(base_ejection=10.0)
    eject(old, 4, 0.0)
    old.record(4, True, 12.0)  # the return, noticed by record, not yet by expired
    new = detector(base_ejection=10.0)
    new.adopt(1, old, 4)
    assert new.expired(13.0) == [1]
    assert new.expired(14.0) == []


# -- combined view ---------------------------------------------------------------------


def test_pool_health_combines_active_and_passive() -> None:
    active = [ActiveHealth(1, 1) for _ in range(4)]
    outlier = detector(size=4, max_ejection_share=0.5, base_ejection=10.0)
    pool = PoolHealth(4, active, outlier)
    active[1].observe(False, 0.0)
    eject(outlier, 2, 0.0)
    assert pool.available(1.0) == [0, 3]
    assert not pool.is_available(1, 1.0) and not pool.is_available(2, 1.0)
    assert pool.available(10.0) == [0, 2, 3]
    active[1].observe(True, 11.0)
    assert pool.available(11.0) == [0, 1, 2, 3]


def test_pool_health_with_either_part_missing() -> None:
    assert PoolHealth(3).available(0.0) == [0, 1, 2]
    active = [ActiveHealth(1, 1), ActiveHealth(1, 1)]
    active[0].observe(False, 0.0)
    assert PoolHealth(2, active=active).available(0.0) == [1]
    outlier = detector(size=2, max_ejection_share=0.5)
    eject(outlier, 1, 0.0)
    assert PoolHealth(2, outlier=outlier).available(1.0) == [0]


def test_pool_health_sizes_must_agree() -> None:
    with pytest.raises(ValueError):
        PoolHealth(3, active=[ActiveHealth(1, 1)])
    with pytest.raises(ValueError):
        PoolHealth(3, outlier=detector(size=4))


def _fail(d: OutlierDetector, index: int, now: float) -> Ejection | None:
    e = None
    for _ in range(d.failures):
        e = d.record(index, False, now)
    return e
