"""The whole pure pipeline: registration, stats, ticks, pokes and scale to zero, on a fake clock."""

from __future__ import annotations

from ebb.autoscaler.collector import UNKNOWN_REVISION, StatValue
from ebb.autoscaler.multiscaler import MultiScaler, RevisionSpec
from ebb.autoscaler.settings import AutoscalerSettings

A = "autoscaling.knative.dev/"
KEY = ("default", "hello-00001")


def spec(ready=0, reachable=True, cc=0, **annotations):
    anns = {A + k.replace("_", "-"): v for k, v in annotations.items()}
    return RevisionSpec(KEY[0], KEY[1], anns, cc, reachable, ready)


def stat(concurrency, instance="i1"):
    return StatValue(
        instance=instance, namespace=KEY[0], name=KEY[1], average_concurrency=concurrency
    )


def scaler(**settings):
    return MultiScaler(AutoscalerSettings(**settings))


def test_registration_publishes_the_initial_status():
    ms = scaler()
    warnings, verdict = ms.register(spec(), now_s=0.0)
    assert warnings == ()
    assert (verdict.desired, verdict.ebc, verdict.panic) == (-1, -111, False)
    assert ms.latest() == [verdict]
    assert ms.latest("other") == []


def test_identical_registration_is_a_no_op_and_changes_update():
    ms = scaler()
    ms.register(spec(), 0.0)
    assert ms.register(spec(), 1.0) == ((), None)
    warnings, verdict = ms.register(spec(window="5s"), 2.0)
    assert verdict is None
    assert warnings == (
        "metadata.annotations.autoscaling.knative.dev/window: expected 6s <= 5s <= 1h0m0s",
    )
    assert ms.config(KEY).stable_window_s == 60  # the cluster default is used instead
    ms.register(spec(window="10s"), 3.0)
    assert ms.config(KEY).stable_window_s == 10


def test_scale_up_then_down_to_zero_with_grace():
    # Window 6 s, grace 10 s, target 10 x 0.7 = 7 per instance; TBC 0 so EBC is 0 unless
    # the revision is on its way to zero (then it is forced negative: activator in path).
    ms = scaler(stable_window_s=6, scale_to_zero_grace_period_s=10, target_burst_capacity=0)
    ms.register(spec(ready=1, target="10"), 0.0)
    history = []
    ready = 1
    for t in range(0, 41):
        load = 20.0 if t < 10 else 0.0
        ms.register(spec(ready=ready, target="10"), float(t))
        ms.record(t + 0.5, stat(load))
        if t % 2 == 0:
            verdict, _ = ms.decide(KEY, t + 0.9)
            history.append((t, verdict.desired, verdict.ebc < 0))
            ready = max(verdict.desired, 0)
    by_time = {t: (d, proxied) for t, d, proxied in history}
    assert by_time[0][0] == 3  # ceil(20 / 7) = 3
    assert by_time[8][0] == 3
    # Last load in second 9: the stable window (6 s) is clear of it from second 15 on; the
    # revision has been active for longer than that, so it is marked inactive (activator in
    # the path, still 1 instance) and drops to 0 after the 10 s grace.
    assert by_time[14] == (1, False)
    assert by_time[16] == (1, True)
    assert by_time[24] == (1, True)
    assert by_time[26] == (0, True)
    assert by_time[40] == (0, True)


def test_no_stats_no_decision():
    ms = scaler()
    ms.register(spec(ready=1), 0.0)
    assert ms.decide(KEY, 2.0) == (None, False)
    assert ms.decide(("x", "y"), 2.0) == (None, False)


def test_poke_when_load_arrives_at_zero():
    ms = scaler(stable_window_s=6)
    ms.register(spec(ready=0), 0.0)
    # Unknown desired and no instance: load pokes.
    assert ms.record(1.0, stat(1.0, "activator/a1")) == (None, True)
    verdict, changed = ms.decide(KEY, 1.0)
    assert (verdict.desired, changed) == (1, True)
    # Desired 1: no more pokes.
    assert ms.record(1.5, stat(1.0, "activator/a1")) == (None, False)
    # Zero-concurrency stats never poke.
    ms2 = scaler()
    ms2.register(spec(ready=0), 0.0)
    assert ms2.record(1.0, stat(0.0)) == (None, False)


def test_poke_after_the_kpa_said_zero():
    ms = scaler(stable_window_s=6)
    ms.register(spec(ready=1), 0.0)
    ms.record(0.0, stat(0.0))
    verdict, _ = ms.decide(KEY, 0.5)
    assert verdict.raw_desired == 0
    assert ms.record(1.0, stat(2.0)) == (None, True)


def test_unknown_revision_stats_are_dropped():
    ms = scaler()
    assert ms.record(0.0, stat(1.0)) == (UNKNOWN_REVISION, False)
    ms.register(spec(), 0.0)
    assert ms.unregister(KEY)
    assert not ms.unregister(KEY)
    assert ms.record(0.0, stat(1.0)) == (UNKNOWN_REVISION, False)
    assert ms.latest() == []


def test_unchanged_verdicts_are_not_reported_as_changed():
    ms = scaler(stable_window_s=6)
    ms.register(spec(ready=1, target="10"), 0.0)
    ms.record(0.0, stat(7.0))
    assert ms.decide(KEY, 0.5)[1] is True
    ms.record(1.0, stat(7.0))
    verdict, changed = ms.decide(KEY, 1.5)
    assert (verdict.desired, changed) == (1, False)


def test_min_scale_when_reachable_skips_the_hold():
    ms = scaler(stable_window_s=6)
    ms.register(spec(ready=1, min_scale="1"), 0.0)
    ms.record(0.0, stat(0.0))
    verdict, _ = ms.decide(KEY, 0.5)
    # The controller clamps 0 up to min-scale; nothing is held and the activator stays out.
    assert (verdict.desired, verdict.ebc) == (0, -111)
