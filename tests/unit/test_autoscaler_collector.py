"""The collector: stats -> per-revision windows; proxied load subtracted; bad stats counted."""

from __future__ import annotations

import math
import random

import pytest

from ebb.autoscaler.collector import (
    MAX_CONCURRENCY,
    MAX_PERIOD_S,
    MAX_REQUEST_COUNT,
    MAX_UPTIME_S,
    MIN_PERIOD_S,
    MISSING_INSTANCE,
    MISSING_REVISION,
    NEGATIVE,
    NOT_A_NUMBER,
    NOT_FINITE,
    OUT_OF_RANGE,
    UNKNOWN_REVISION,
    Collector,
    StatValue,
    _plainly_valid,
    contribution,
    invalid_reason,
)

KEY = ("default", "hello-00001")


def stat(instance="i1", concurrency=0.0, proxied=0.0, requests=0.0, proxied_requests=0.0, **kw):
    return StatValue(
        instance=instance,
        namespace=kw.pop("namespace", KEY[0]),
        name=kw.pop("name", KEY[1]),
        average_concurrency=concurrency,
        average_proxied_concurrency=proxied,
        request_count=requests,
        proxied_request_count=proxied_requests,
        **kw,
    )


def collector(stable=6, panic=2, aggregation="linear"):
    c = Collector()
    c.track(KEY, stable_window_s=stable, panic_window_s=panic, aggregation=aggregation)
    return c


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (stat(concurrency=5.0), (5.0, 0.0)),
        (stat(concurrency=5.0, proxied=2.0), (3.0, 0.0)),  # the activator reports those 2
        (stat(concurrency=5.0, proxied=5.0), (0.0, 0.0)),
        (stat(concurrency=1.0, proxied=1.5), (0.0, 0.0)),  # never negative
        (stat(requests=10.0, proxied_requests=4.0), (0.0, 6.0)),
        (stat(requests=10.0, period_s=2.0), (0.0, 5.0)),  # counts per period -> per second
        (stat(instance="activator/a1", concurrency=3.0, proxied=3.0, requests=2.0), (3.0, 2.0)),
    ],
)
def test_contribution(value, expected):
    assert contribution(value) == expected


def test_revision_concurrency_is_the_sum_over_reporters_with_proxied_subtracted():
    c = collector()
    c.record(100.1, stat("i1", concurrency=4.0, proxied=1.0))
    c.record(100.2, stat("i2", concurrency=2.0))
    c.record(100.3, stat("activator/a1", concurrency=1.0))
    obs = c.observe(KEY, 100.5, "concurrency")
    assert obs.stable == 3.0 + 2.0 + 1.0
    assert obs.panic == 6.0


def test_a_request_through_the_activator_is_counted_once():
    # The activator holds one request and forwards it; the queue serves it as "proxied".
    c = collector()
    c.record(100.1, stat("activator/a1", concurrency=1.0, requests=1.0))
    c.record(100.2, stat("i1", concurrency=1.0, proxied=1.0, requests=1.0, proxied_requests=1.0))
    obs = c.observe(KEY, 100.5, "concurrency")
    assert obs.stable == 1.0
    assert c.observe(KEY, 101.0, "rps").stable == 1.0


def test_the_latest_stat_of_a_reporter_within_a_second_wins():
    c = collector()
    c.record(100.1, stat("i1", concurrency=10.0))
    c.record(100.9, stat("i1", concurrency=4.0))
    c.record(100.5, stat("i2", concurrency=1.0))
    assert c.observe(KEY, 100.9, "concurrency").stable == 5.0


def test_seconds_are_averaged_over_the_window():
    c = collector(stable=6, panic=2)
    for t, v in [(100, 2.0), (101, 4.0), (102, 6.0), (103, 8.0)]:
        c.record(t + 0.5, stat("i1", concurrency=v))
    obs = c.observe(KEY, 103.6, "concurrency")
    assert obs.stable == 5.0  # (2 + 4 + 6 + 8) / 4: partial window
    assert obs.panic == 7.0  # (6 + 8) / 2


def test_rps_metric_and_last_second_rps():
    c = collector()
    c.record(100.2, stat("i1", requests=3.0))
    c.record(100.4, stat("i2", requests=5.0))
    c.record(101.2, stat("i1", requests=1.0))
    obs = c.observe(KEY, 101.5, "rps")
    assert obs.stable == pytest.approx((8.0 + 1.0) / 2)
    assert obs.rps == 8.0  # the last complete second (100)
    assert c.observe(KEY, 102.1, "rps").rps == 1.0
    assert c.observe(KEY, 105.0, "rps").rps == 0.0


def test_no_data_means_no_observation():
    c = collector(stable=6)
    assert c.observe(KEY, 100.0, "concurrency") is None
    c.record(100.0, stat(concurrency=0.0))
    assert c.observe(KEY, 100.0, "concurrency").stable == 0.0
    assert c.observe(KEY, 106.0, "concurrency") is not None
    assert c.observe(KEY, 107.0, "concurrency") is None  # nothing within the stable window
    assert c.observe(("default", "other"), 100.0, "concurrency") is None


def test_zero_stats_keep_the_revision_observed():
    c = collector(stable=6)
    c.record(100.0, stat(concurrency=7.0))
    for t in range(101, 120):
        c.record(float(t), stat(concurrency=0.0))
    obs = c.observe(KEY, 119.0, "concurrency")
    assert obs is not None and obs.stable == 0.0


MALFORMED = [
    (stat(namespace=""), MISSING_REVISION),
    (stat(name=""), MISSING_REVISION),
    (stat(instance=""), MISSING_INSTANCE),
    (stat(concurrency=math.nan), NOT_FINITE),
    (stat(concurrency=math.inf), NOT_FINITE),
    (stat(requests=-math.inf), NOT_FINITE),
    (stat(concurrency=-1.0), NEGATIVE),
    (stat(proxied=-0.5), NEGATIVE),
    (stat(proxied_requests=-1.0), NEGATIVE),
    (stat(process_uptime_s=-1.0), NEGATIVE),
    (stat(period_s=-1.0), NEGATIVE),
    (stat(concurrency="5"), NOT_A_NUMBER),
    (stat(concurrency=None), NOT_A_NUMBER),
    (stat(concurrency=True), NOT_A_NUMBER),
    (stat(namespace=None), MISSING_REVISION),
    (stat(name="hello-00002"), UNKNOWN_REVISION),
    # Finite but absurd: no instance ever carries these (and 1e300 broke the decisions).
    (stat(concurrency=1e300), OUT_OF_RANGE),
    (stat(concurrency=MAX_CONCURRENCY * 1.01), OUT_OF_RANGE),
    (stat(proxied=1e7), OUT_OF_RANGE),
    (stat(requests=1e308), OUT_OF_RANGE),
    (stat(proxied_requests=MAX_REQUEST_COUNT * 2), OUT_OF_RANGE),
    (stat(process_uptime_s=1e11), OUT_OF_RANGE),
    (stat(period_s=1e-300), OUT_OF_RANGE),  # 1 request in 1e-300 s: an absurd rate
    (stat(period_s=MIN_PERIOD_S / 2), OUT_OF_RANGE),
    (stat(period_s=MAX_PERIOD_S + 1), OUT_OF_RANGE),
    (stat(period_s=math.nan), NOT_FINITE),
    (stat(period_s=-1e-300), NEGATIVE),
    # An out-of-range value with a worse fault elsewhere: the first field's reason wins.
    (stat(concurrency=1e300, requests=math.nan), OUT_OF_RANGE),
    (stat(instance="", concurrency=1e300), MISSING_INSTANCE),
]

# Every bound itself is accepted, as are the defaults and a legitimately short period
# (the activator's first period of a spell can be a fraction of a millisecond).
ACCEPTED = [
    stat(),
    stat(concurrency=MAX_CONCURRENCY, proxied=MAX_CONCURRENCY),
    stat(requests=MAX_REQUEST_COUNT, proxied_requests=MAX_REQUEST_COUNT),
    stat(process_uptime_s=MAX_UPTIME_S),
    stat(period_s=0.0),  # 0 = the default 1 s
    stat(period_s=-0.0),
    stat(period_s=MIN_PERIOD_S),
    stat(period_s=0.0004, concurrency=1.0, requests=1.0),
    stat(period_s=MAX_PERIOD_S),
    stat(concurrency=5, requests=3, period_s=1),  # ints, as a caller other than the proto may pass
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_stats_within_bounds_are_accepted(value):
    c = collector()
    assert invalid_reason(value) is None
    assert c.record(100.0, value) is None
    assert (c.accepted, dict(c.dropped)) == (1, {})


@pytest.mark.parametrize(("value", "reason"), MALFORMED)
def test_the_fast_check_never_vouches_for_a_bad_stat(value, reason):
    # `_plainly_valid` and `invalid_reason` must agree: the first skips the second. (An
    # unknown revision is a well-formed stat; the collector finds it has no such window.)
    assert _plainly_valid(value) == (reason == UNKNOWN_REVISION)
    assert invalid_reason(value) == (None if reason == UNKNOWN_REVISION else reason)


@pytest.mark.parametrize(("value", "reason"), MALFORMED)
def test_malformed_stats_are_dropped_and_counted(value, reason):
    c = collector()
    assert c.record(100.0, value) == reason
    assert c.dropped == {reason: 1}
    assert c.accepted == 0
    assert c.observe(KEY, 100.0, "concurrency") is None


def test_record_never_raises_on_garbage():
    c = collector()
    assert c.record(100.0, object()) == NOT_A_NUMBER
    assert c.record(100.0, stat(concurrency=2.0)) is None
    assert (c.accepted, sum(c.dropped.values())) == (1, 1)


def test_forget_and_retrack_with_new_windows():
    c = collector(stable=6, panic=2)
    c.record(100.0, stat(concurrency=6.0))
    c.track(KEY, stable_window_s=10, panic_window_s=1, aggregation="weighted-exponential")
    obs = c.observe(KEY, 100.0, "concurrency")
    assert obs is not None and obs.stable > 0
    c.forget(KEY)
    assert not c.tracks(KEY)
    assert c.record(100.0, stat(concurrency=1.0)) == UNKNOWN_REVISION


def test_reads_within_a_second_see_every_stat_so_far():
    # Reading the windows between a second's stats must not lose or double anything.
    c = collector(stable=6, panic=2)
    c.record(100.1, stat("i1", concurrency=2.0))
    assert c.observe(KEY, 100.2, "concurrency").panic == 2.0
    c.record(100.3, stat("i2", concurrency=3.0))
    c.record(100.4, stat("i1", concurrency=1.0))  # replaces i1's 2
    assert c.observe(KEY, 100.5, "concurrency").panic == 4.0
    assert c.observe(KEY, 100.6, "concurrency").panic == 4.0  # a second read adds nothing
    c.record(101.1, stat("i1", concurrency=6.0))
    assert c.observe(KEY, 101.2, "concurrency").panic == 5.0  # (4 + 6) / 2


def test_a_clock_that_steps_back_counts_in_the_current_second():
    c = collector(stable=6, panic=2)
    c.record(101.5, stat("i1", concurrency=2.0))
    c.record(100.5, stat("i2", concurrency=3.0))  # the clock stepped back a second
    obs = c.observe(KEY, 101.6, "concurrency")
    assert (obs.stable, obs.panic) == (5.0, 5.0)


@pytest.mark.parametrize("aggregation", ["linear", "weighted-exponential"])
def test_windows_match_recording_every_stat_one_by_one(aggregation):
    # The reference: each stat's change written into two bare windows, read at random
    # instants between the stats (a guard for any cheaper bookkeeping of the collector).
    from ebb.autoscaler.windows import POLICIES, BucketWindow

    rng = random.Random(7)
    c = collector(stable=6, panic=2, aggregation=aggregation)
    policy = POLICIES[aggregation]
    stable, panic = BucketWindow(6, policy), BucketWindow(2, policy)
    latest: dict[str, float] = {}
    second = None
    t = 100.0
    for _ in range(3000):
        t += rng.choice((0.0, 0.01, 0.2, 0.7, 3.0))
        reporter = f"i{rng.randrange(5)}"
        value = rng.choice((0.0, 1.0, 2.5, 10.0))
        c.record(t, stat(reporter, concurrency=value))
        if math.floor(t) != second:
            second, latest = math.floor(t), {}
        delta = value - latest.get(reporter, 0.0)
        latest[reporter] = value
        stable.record(t, delta)
        panic.record(t, delta)
        if rng.random() < 0.3:
            at = t + rng.choice((0.0, 0.5))
            obs = c.observe(KEY, at, "concurrency")
            assert obs is not None
            assert obs.stable == pytest.approx(stable.average(at), abs=1e-6)
            assert obs.panic == pytest.approx(panic.average(at), abs=1e-6)
