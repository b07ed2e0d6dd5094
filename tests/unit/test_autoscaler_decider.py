"""The KPA decider and the scale-to-zero timing, with the time moved by hand."""

from __future__ import annotations

import pytest

from ebb.autoscaler.collector import Observation
from ebb.autoscaler.decider import (
    Activity,
    Decider,
    TrailingMax,
    apply_scale_to_zero,
    excess_burst_capacity,
    initial_ebc,
)
from ebb.autoscaler.settings import AutoscalerSettings, revision_config
from ebb.common.goparse import INT32_MAX, INT64_MAX, INT64_MIN

A = "autoscaling.knative.dev/"


def cfg(annotations=None, cc=0, **settings):
    return revision_config(AutoscalerSettings(**settings), annotations or {}, cc)


# Target 10 at 70 % -> TargetValue 7; 6 s stable window, 1 s panic window (10 %, >= 1 s).
TARGET7 = {A + "target": "10", A + "window": "6s"}


def obs(stable, panic=None, rps=0.0):
    return Observation(stable=stable, panic=stable if panic is None else panic, rps=rps)


def decider(config, ready=0, now=0.0):
    return Decider(config, ready_instances=ready, now_s=now)


# ---------------------------------------------------------------------------------------
# One tick


@pytest.mark.parametrize(
    ("ready", "stable", "panic", "reachable", "desired", "panicking"),
    [
        (1, 0.0, 0.0, True, 0, False),  # no load
        (0, 7.0, 7.0, True, 1, False),  # ready 0 counts as 1
        (1, 7.0, 7.0, True, 1, False),
        (1, 7.7, 7.7, True, 2, True),  # dppc 2 / ready 1 >= 2.0 -> panic
        (3, 21.0, 21.0, True, 3, False),  # steady: ceil(21 / 7) = 3
        (3, 14.0, 14.0, True, 2, False),
        (3, 50.0, 50.0, True, 8, True),  # ceil(50 / 7) = 8; 8 / 3 >= 2
        (3, 21.0, 41.0, True, 6, True),  # dppc ceil(41 / 7) = 6, 6 / 3 >= 2: max(3, 6)
        (10, 21.0, 21.0, True, 5, False),  # max scale down: floor(10 / 2) = 5
        (10, 21.0, 21.0, False, 3, False),  # unreachable: no floor
    ],
)
def test_one_tick(ready, stable, panic, reachable, desired, panicking):
    d = decider(cfg(TARGET7), ready=min(ready, 1))
    decision = d.scale(100.0, obs(stable, panic), ready_instances=ready, reachable=reachable)
    assert (decision.desired, decision.panic) == (desired, panicking)
    assert (decision.stable_value, decision.panic_value) == (stable, panic)
    assert (d.desired, d.ebc) == (decision.desired, decision.ebc)


def test_scale_up_from_steady_load():
    # Load ramps 21 -> 28 -> 35 -> 42 (target 7) while instances come up: 3 -> 6, and
    # never twice the ready count, so no panic.
    d = decider(cfg(TARGET7), ready=1)
    ready, seen = 3, []
    for t, load in [(0, 21.0), (2, 28.0), (4, 35.0), (6, 42.0), (8, 42.0)]:
        decision = d.scale(t, obs(load), ready_instances=ready, reachable=True)
        seen.append((decision.desired, decision.panic))
        ready = decision.desired
    assert seen == [(3, False), (4, False), (5, False), (6, False), (6, False)]


@pytest.mark.parametrize(
    ("settings", "ready", "stable", "desired"),
    [
        ({"max_scale_up_rate": 2.0}, 2, 700.0, 4),  # ceil(2 x 2) = 4
        ({"max_scale_up_rate": 1.1}, 2, 700.0, 3),  # ceil(2.2) = 3: always room for one more
        ({"max_scale_up_rate": 1000.0}, 1, 7000.0, 1000),
        ({"max_scale_down_rate": 4.0}, 8, 0.0, 2),  # floor(8 / 4) = 2
        ({"max_scale_down_rate": 2.0}, 8, 0.0, 4),
        ({"max_scale_down_rate": 2.0}, 1, 0.0, 0),  # floor(1 / 2) = 0
    ],
)
def test_max_rates(settings, ready, stable, desired):
    d = decider(cfg(TARGET7, **settings), ready=1)
    decision = d.scale(0.0, obs(stable, 0.0), ready_instances=ready, reachable=True)
    assert decision.desired == desired


def test_panic_enter_extend_and_exit():
    d = decider(cfg(TARGET7), ready=1)  # stable window 6 s
    steps = [
        # (t, stable, panic, ready) -> (desired, panicking)
        ((0, 7.0, 20.0, 1), (3, True)),  # dppc 3 / 1 >= 2: panic, provision for 3
        ((2, 7.0, 7.0, 3), (3, True)),  # calm again, but panic holds: no scale down
        ((4, 7.0, 45.0, 3), (7, True)),  # over again: extends panic (since t=4), goes up
        ((8, 7.0, 7.0, 7), (7, True)),
        ((10, 7.0, 7.0, 7), (7, True)),  # 4 + 6 < 10 is false: still panicking
        ((11, 7.0, 7.0, 7), (3, False)),  # left panic: max(dspc 1, max down floor(7 / 2) = 3)
    ]
    for (t, stable, panic, ready), (desired, panicking) in steps:
        decision = d.scale(t, obs(stable, panic), ready_instances=ready, reachable=True)
        assert (decision.desired, decision.panic) == (desired, panicking), t
    assert not d.panicking


def test_panic_uses_the_stable_value_when_it_is_larger():
    d = decider(cfg(TARGET7), ready=1)
    decision = d.scale(0, obs(70.0, 14.0), ready_instances=1, reachable=True)
    # dppc = 2 -> 2 / 1 >= 2 panic; dspc = 10 is larger and wins.
    assert (decision.desired, decision.panic) == (10, True)


def test_threshold_from_annotation():
    d = decider(cfg({**TARGET7, A + "panic-threshold-percentage": "400"}), ready=1)
    assert not d.scale(0, obs(21.0), ready_instances=1, reachable=True).panic  # 3 / 1 < 4
    assert d.scale(2, obs(28.0), ready_instances=1, reachable=True).panic  # 4 / 1 >= 4


@pytest.mark.parametrize(
    ("stable", "ready", "reachable", "desired"),
    [
        (0.0, 1, True, 0),  # no load: activation-scale does not apply
        (1.0, 1, True, 3),  # any load: at least 3
        (7.0, 1, True, 3),
        (28.0, 4, True, 4),  # above it: the KPA's own number
        (0.0, 8, True, 4),  # max scale down still applies without load
    ],
)
def test_activation_scale(stable, ready, reachable, desired):
    d = decider(cfg({**TARGET7, A + "activation-scale": "3"}), ready=min(ready, 1))
    assert d.scale(0, obs(stable), ready_instances=ready, reachable=reachable).desired == desired


def test_activation_scale_raises_panic_desire_too():
    d = decider(cfg({**TARGET7, A + "activation-scale": "5"}), ready=1)
    decision = d.scale(0, obs(0.0, 14.0), ready_instances=1, reachable=True)
    assert (decision.desired, decision.panic) == (5, True)


def test_scale_down_delay_holds_the_trailing_max():
    d = decider(cfg({**TARGET7, A + "scale-down-delay": "10s"}), ready=1)
    # (t, load, ready, desired); the KPA alone would say 5, 2, 1, 1, 1, 0 (max down ready/2).
    steps = [
        (0, 35.0, 5, 5),
        (2, 7.0, 5, 5),
        (8, 7.0, 3, 5),
        (10, 7.0, 3, 2),
        (12, 7.0, 2, 1),
        (14, 0.0, 1, 1),
    ]
    for t, load, ready, desired in steps:
        decision = d.scale(t, obs(load), ready_instances=ready, reachable=True)
        assert decision.desired == desired, t


def test_scale_down_delay_only_when_reachable():
    d = decider(cfg({**TARGET7, A + "scale-down-delay": "10s"}), ready=1)
    assert d.scale(0, obs(35.0), ready_instances=5, reachable=False).desired == 5
    assert d.scale(2, obs(7.0), ready_instances=5, reachable=False).desired == 1


def test_scale_down_delay_from_cluster_setting_and_update():
    d = decider(cfg(TARGET7, scale_down_delay_s=10), ready=1)
    d.scale(0, obs(35.0), ready_instances=5, reachable=True)
    assert d.scale(2, obs(7.0), ready_instances=5, reachable=True).desired == 5
    d.update(cfg(TARGET7))  # delay removed
    assert d.scale(4, obs(7.0), ready_instances=5, reachable=True).desired == 2


def test_trailing_max():
    w = TrailingMax(10)
    for t, v in [(0, 5), (2, 3), (4, 4)]:
        w.record(t, v)
    assert w.current(4) == 5
    assert w.current(10) == 4  # the 5 at t=0 is out ((0, 10] excludes 0)
    assert w.current(14) == 0


@pytest.mark.parametrize(
    ("tbc", "ready", "panic", "ebc"),
    [
        (0.0, 3, 50.0, 0),
        (-1.0, 3, 50.0, -1),
        (211.0, 3, 50.0, 39),  # floor(3 x 100 - 211 - 50)
        (211.0, 3, 50.5, 38),
        (211.0, 0, 0.0, -211),  # uses the real ready count, not max(1, ready)
        (50.0, 1, 0.0, 50),
    ],
)
def test_excess_burst_capacity(tbc, ready, panic, ebc):
    config = cfg({A + "target-burst-capacity": str(tbc)})
    assert excess_burst_capacity(config, ready, panic) == ebc
    d = decider(config, ready=min(ready, 1))
    assert d.scale(0, obs(0.0, panic), ready_instances=ready, reachable=True).ebc == ebc


@pytest.mark.parametrize(
    ("annotations", "cc", "ebc"),
    [
        ({}, 0, -111),  # 1 x 100 - 211
        ({A + "target-burst-capacity": "0"}, 0, 0),
        ({A + "target-burst-capacity": "-1"}, 0, -1),
        ({A + "initial-scale": "3"}, 0, 89),  # 3 x 100 - 211
        ({}, 10, -201),  # total = CC = 10
        ({A + "target": "0.5", A + "target-burst-capacity": "1"}, 0, 0),  # int(-0.5) truncates to 0
    ],
)
def test_initial_status(annotations, cc, ebc):
    config = cfg(annotations, cc)
    assert initial_ebc(config) == ebc
    d = decider(config)
    assert (d.desired, d.ebc) == (-1, ebc)


def test_no_data_no_decision():
    d = decider(cfg(TARGET7))
    assert d.scale(0, None, ready_instances=0, reachable=True) is None
    assert (d.desired, d.ebc) == (-1, -201)  # initial: 1 x 10 - 211


def test_fresh_decider_with_several_ready_instances_starts_in_panic():
    d = decider(cfg(TARGET7), ready=3, now=0.0)
    assert d.panicking
    # No load after a restart: without panic it would drop to floor(3 / 2) = 1 at once.
    for t in (2, 4, 6):
        decision = d.scale(t, obs(0.0), ready_instances=3, reachable=True)
        assert (decision.desired, decision.panic) == (3, True), t
    decision = d.scale(8, obs(0.0), ready_instances=3, reachable=True)  # 0 + 6 < 8
    assert (decision.desired, decision.panic) == (1, False)


@pytest.mark.parametrize("ready", [0, 1])
def test_fresh_decider_with_at_most_one_ready_is_calm(ready):
    d = decider(cfg(TARGET7), ready=ready)
    assert not d.panicking
    assert d.scale(2, obs(0.0), ready_instances=ready, reachable=True).desired == 0


# ---------------------------------------------------------------------------------------
# Scale to zero


def run_scale_to_zero(steps, **kw):
    params = {"enable_scale_to_zero": True, "stable_window_s": 60, "grace_period_s": 30, **kw}
    activity, out = Activity(), []
    for t, desired in steps:
        result = apply_scale_to_zero(desired, t, activity, **params)
        activity = result.activity
        out.append((result.scale, result.activator_in_path))
    return out


def test_scale_to_zero_after_stable_window_then_grace():
    steps = [(0, 3), (100, 0), (110, 0), (129, 0), (130, 0), (140, 0)]
    assert run_scale_to_zero(steps) == [
        (3, False),
        (1, True),  # active for 100 >= 60 s: mark inactive, activator in the path, keep 1
        (1, True),
        (1, True),
        (0, True),  # inactive for 30 s grace: zero
        (0, True),
    ]


def test_recently_active_revision_keeps_one_for_the_stable_window():
    steps = [(0, 2), (10, 0), (59, 0), (60, 0), (89, 0), (90, 0)]
    assert run_scale_to_zero(steps) == [
        (2, False),
        (1, False),
        (1, False),
        (1, True),
        (1, True),
        (0, True),
    ]


def test_traffic_while_inactive_makes_it_active_again():
    steps = [(0, 1), (60, 0), (70, 1), (80, 0), (130, 0), (160, 0)]
    assert run_scale_to_zero(steps) == [
        (1, False),
        (1, True),
        (1, False),
        (1, False),
        (1, True),
        (0, True),
    ]


def test_first_decision_of_zero_starts_the_clock():
    steps = [(0, 0), (59, 0), (60, 0), (90, 0)]
    assert run_scale_to_zero(steps) == [(1, False), (1, False), (1, True), (0, True)]


def test_pod_retention_longer_than_grace():
    steps = [(0, 1), (60, 0), (90, 0), (104, 0), (105, 0)]
    assert run_scale_to_zero(steps, pod_retention_s=45) == [
        (1, False),
        (1, True),
        (1, True),
        (1, True),
        (0, True),
    ]


def test_scale_to_zero_disabled_keeps_one():
    steps = [(0, 1), (100, 0), (1000, 0)]
    assert run_scale_to_zero(steps, enable_scale_to_zero=False) == [
        (1, False),
        (1, False),
        (1, False),
    ]


def test_min_scale_above_zero_means_nothing_to_hold():
    steps = [(0, 1), (100, 0), (1000, 0)]
    assert run_scale_to_zero(steps, min_scale=1) == [(1, False), (0, False), (0, False)]


def test_unknown_desired_passes_through():
    result = apply_scale_to_zero(
        -1, 5.0, Activity(), enable_scale_to_zero=True, stable_window_s=60, grace_period_s=30
    )
    assert (result.scale, result.activity, result.activator_in_path) == (-1, Activity(), False)


# ---------------------------------------------------------------------------------------
# Numbers that fit the proto: desired scale is sent as an int32, EBC as an int64



@pytest.mark.parametrize(
    ("settings", "annotations", "ready", "stable", "panic", "desired"),
    [
        # A rate that lets any load through: ceil(1e300 / 7) is far past int32.
        ({"max_scale_up_rate": 1e300}, TARGET7, 1, 1e300, 1e300, INT32_MAX),
        ({"max_scale_up_rate": 1e300}, TARGET7, 1, 1e300, 0.0, INT32_MAX),  # stable alone
        ({"max_scale_up_rate": 1e300}, TARGET7, 1, 0.0, 1e300, INT32_MAX),  # panic alone
        ({"max_scale_up_rate": 1e300}, TARGET7, 5, 7.0 * INT32_MAX, 0.0, INT32_MAX),
        ({"max_scale_up_rate": 1e300}, TARGET7, 5, 7.0 * (INT32_MAX - 1), 0.0, INT32_MAX - 1),
        (
            {"max_scale_up_rate": 1e300},
            {**TARGET7, A + "scale-down-delay": "10s"},
            1,
            1e300,
            1e300,
            INT32_MAX,
        ),
        # At the default rate the rate itself bounds it: ceil(1000 x 1).
        ({}, TARGET7, 1, 1e300, 1e300, 1000),
        ({}, TARGET7, INT32_MAX, 1e300, 1e300, INT32_MAX),  # ceil(1000 x INT32_MAX) is not
    ],
)
def test_desired_scale_never_leaves_int32(settings, annotations, ready, stable, panic, desired):
    d = decider(cfg(annotations, **settings), ready=min(ready, 1))
    decision = d.scale(100.0, obs(stable, panic), ready_instances=ready, reachable=True)
    assert decision.desired == desired
    assert d.desired == desired
    # Later ticks keep it there, in panic (max_panic) and out of it.
    for now in (101.0, 200.0):
        assert 0 <= d.scale(now, obs(stable, panic), ready, True).desired <= INT32_MAX


@pytest.mark.parametrize(
    ("annotations", "ready", "panic", "ebc"),
    [
        ({}, 1, 1e300, INT64_MIN),  # floor(100 - 211 - 1e300)
        ({A + "target": "1e300"}, 1, 0.0, INT64_MAX),  # floor(1e300 - 211)
        ({A + "target-burst-capacity": "1e300"}, 1, 0.0, INT64_MIN),
        ({}, 1, 9.3e18, INT64_MIN),  # just past the bound
        ({}, 1, 9.2e18, -9_200_000_000_000_000_000),  # just within (111 lost to float)
    ],
)
def test_ebc_never_leaves_int64(annotations, ready, panic, ebc):
    config = cfg(annotations)
    assert excess_burst_capacity(config, ready, panic) == ebc
    d = decider(config, ready=ready)
    assert d.scale(0, obs(0.0, panic), ready_instances=ready, reachable=True).ebc == ebc


@pytest.mark.parametrize(
    ("annotations", "ebc"),
    [
        ({A + "target": "1e300"}, INT64_MAX),  # 1 x 1e300 - 211
        ({A + "target-burst-capacity": "1e300"}, INT64_MIN),
    ],
)
def test_initial_ebc_never_leaves_int64(annotations, ebc):
    assert initial_ebc(cfg(annotations)) == ebc
    assert decider(cfg(annotations)).ebc == ebc
