"""1-second bucket windows and the swappable aggregation policies."""

from __future__ import annotations

import math
import random

import pytest

from ebb.autoscaler.windows import (
    POLICIES,
    BucketWindow,
    WindowView,
    linear,
    round_average,
    smoothing_coefficient,
    weighted_exponential,
)

# ---------------------------------------------------------------------------------------
# Policies, table-tested on views


@pytest.mark.parametrize(
    ("values", "valid", "expected"),
    [
        ((0, 0, 0, 2, 4, 6), 3, 4.0),  # partial window: only since the first write
        ((1, 2, 3, 4, 5, 6), 6, 3.5),  # full window
        ((5, 5, 5, 5, 0, 0), 4, 5.0),  # trailing seconds after the last write do not count
        ((0, 0, 0, 0, 0, 0), 0, 0.0),  # nothing valid
        ((1, 1, 1), 3, 1.0),
        ((1 / 3, 1 / 3, 1 / 3), 3, 0.333333),  # rounded to 6 digits, as Knative
    ],
)
def test_linear(values, valid, expected):
    assert linear(WindowView(tuple(float(v) for v in values), valid)) == expected


# Knative's roundToNDigits(6, f) = math.Round(f × 1e6) / 1e6 (knative/serving#15940 made
# it Round, from Floor): halves go away from zero. Python's round() sends them to even on
# the exact decimal value and disagreed on every tie below but 2.5e-6.
@pytest.mark.parametrize(
    ("average", "rounded", "target", "instances"),
    [
        (7.0000005, 7.000001, 7.0, 2),  # a tie: up, and ceil(7.000001 / 7) = 2 (round(): 7.0 -> 1)
        (7.0000004, 7.0, 7.0, 1),
        (14.0000005, 14.000001, 7.0, 3),
        (5e-7, 1e-6, 7.0, 1),  # 3e-5 / 60: one 30 µs request in a minute still wants one
        (4.999999e-7, 0.0, 7.0, 0),
        (9e-7, 1e-6, 7.0, 1),  # nearer 1e-6 than 0 (floor, before 2025: 0)
        (3.5e-6, 4e-6, 1.0, 1),  # round(): 3e-6
        (2.5e-6, 3e-6, 1.0, 1),
        (1 / 3, 0.333333, 1.0, 1),
        (2 / 3, 0.666667, 1.0, 1),
        (-3.6e-17, 0.0, 7.0, 0),  # float residue of an emptied sum: 0, not -1e-6 (floor)
        (0.0, 0.0, 7.0, 0),
    ],
)
def test_round_average_is_knatives_round_to_6_digits(average, rounded, target, instances):
    assert round_average(average) == rounded
    assert math.ceil(round_average(average) / target) == instances
    view = WindowView((average,), 1)
    assert linear(view) == rounded


@pytest.mark.parametrize(
    ("writes", "now", "expected"),
    [
        ({100: 0.0, 105: 3e-6}, 105, 1e-6),  # 3e-6 / 6 = 5e-7: a tie, up
        ({100: 0.0, 105: 2.9e-6}, 105, 0.0),  # 4.83e-7: down
        ({100: 42.000003}, 100, 42.000003),
        ({100: 7.0000005}, 100, 7.000001),
        ({100: 2.0, 101: -2.0 + 3.6e-17}, 101, 0.0),  # no negative residue
        ({100: 6.0, 101: 1e-6}, 103, 3.000001),  # after the last write: 6.000001 / 2, a tie
    ],
)
def test_bucket_window_rounds_as_linear(writes, now, expected):
    window = BucketWindow(6)
    for second, value in writes.items():
        window.record(second, value)
    assert window.average(now) == expected == linear(window.view(now))


def test_weighted_exponential_matches_knatives_worked_example():
    view = WindowView((10.0, 10.0, 5.0, 5.0), 4)
    assert weighted_exponential(view, alpha=0.6) == pytest.approx(5.544)
    assert weighted_exponential(WindowView((5.0, 5.0, 10.0, 10.0), 4), alpha=0.6) == pytest.approx(
        9.072
    )


@pytest.mark.parametrize(
    ("buckets", "alpha"),
    [
        (1, 0.9999),
        (4, 0.9),
        (6, 1 - 0.0001 ** (1 / 6)),
        (40, 1 - 0.0001 ** (1 / 40)),
        (60, 0.2),
        (3600, 0.2),
    ],
)
def test_smoothing_coefficient(buckets, alpha):
    assert smoothing_coefficient(buckets) == pytest.approx(alpha)
    assert smoothing_coefficient(buckets) >= 0.2


def test_weighted_exponential_uses_the_window_length_for_alpha():
    values = (0.0, 0.0, 0.0, 0.0, 0.0, 6.0)
    alpha = smoothing_coefficient(6)
    assert weighted_exponential(WindowView(values, 1)) == pytest.approx(6.0 * alpha)
    values = (6.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert weighted_exponential(WindowView(values, 6)) == pytest.approx(
        6.0 * alpha * (1 - alpha) ** 5
    )


@pytest.mark.parametrize("policy", list(POLICIES.values()))
def test_policies_are_zero_without_valid_data(policy):
    assert policy(WindowView((0.0,) * 6, 0)) == 0.0


def test_policy_table_names():
    assert set(POLICIES) == {"linear", "weighted-exponential"}


# ---------------------------------------------------------------------------------------
# BucketWindow


def test_values_in_the_same_second_add_up():
    w = BucketWindow(6)
    w.record(10.1, 2.0)
    w.record(10.9, 3.0)
    assert w.view(10.9).values[-1] == 5.0
    assert w.average(10.9) == 5.0


@pytest.mark.parametrize(
    ("writes", "now", "expected"),
    [
        # Before a full window: only the seconds since the first write count.
        ([(100, 6.0)], 100.0, 6.0),
        ([(100, 6.0), (101, 0.0)], 101.5, 3.0),
        ([(100, 2.0), (101, 4.0), (102, 6.0)], 102.0, 4.0),
        # A full window: the last 6 seconds.
        ([(t, float(t - 100)) for t in range(100, 110)], 109.0, (4 + 5 + 6 + 7 + 8 + 9) / 6),
        # Silence after the last write is not averaged in (Knative: valid = first..last).
        ([(100, 6.0), (101, 6.0)], 104.0, 6.0),
        # Partly out of the window: 103 is the oldest second still in (103..108).
        ([(100, 6.0), (103, 3.0), (104, 3.0)], 108.0, 3.0),
        # A gap inside the data counts as zeros.
        ([(100, 6.0), (102, 6.0)], 102.0, 4.0),
        # A full window of silence: 0.
        ([(100, 6.0)], 106.0, 0.0),
        ([(100, 6.0)], 200.0, 0.0),
    ],
)
def test_linear_window(writes, now, expected):
    w = BucketWindow(6, linear)
    for t, v in writes:
        w.record(t, v)
    assert w.average(now) == pytest.approx(expected)


def test_first_write_moves_after_a_window_of_silence():
    w = BucketWindow(6)
    w.record(100, 60.0)
    w.record(110, 3.0)  # 10 s later: start over, the 60 is gone
    assert w.average(110) == 3.0
    w.record(111, 1.0)
    assert w.average(111) == 2.0


def test_is_empty_is_knatives_no_data():
    w = BucketWindow(6)
    assert w.is_empty(0)
    w.record(100, 0.0)
    assert not w.is_empty(100)
    assert not w.is_empty(106)  # exactly one window later: still "data", averaging 0
    assert w.average(106) == 0.0
    assert w.is_empty(107)


def test_late_write_within_the_window_counts_and_older_ones_are_ignored():
    w = BucketWindow(6)
    w.record(105, 6.0)
    w.record(103, 6.0)  # late, still inside: the first write moves back
    assert w.average(105) == pytest.approx(12.0 / 3)
    w.record(90, 100.0)  # a window too old
    assert w.average(105) == pytest.approx(4.0)


def test_negative_adjustments_are_allowed():
    # The collector replaces an instance's stat within a second by recording the difference.
    w = BucketWindow(6)
    w.record(100.2, 5.0)
    w.record(100.7, -2.0)
    assert w.average(100) == 3.0


def test_weighted_window_decays_after_the_last_write():
    w = BucketWindow(6, weighted_exponential)
    alpha = smoothing_coefficient(6)
    w.record(100, 10.0)
    assert w.average(100) == pytest.approx(10.0 * alpha)
    assert w.average(102) == pytest.approx(10.0 * alpha * (1 - alpha) ** 2)
    assert w.average(106) == 0.0


def test_weighted_window_favours_recent_load():
    rising, falling = BucketWindow(6, weighted_exponential), BucketWindow(6, weighted_exponential)
    for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]):
        rising.record(100 + i, v)
        falling.record(100 + i, 7.0 - v)
    assert rising.average(105) > falling.average(105)


def test_resize_keeps_what_fits():
    w = BucketWindow(10)
    for t in range(100, 110):
        w.record(t, float(t - 100))
    w.resize(4)
    assert w.window_s == 4
    assert w.average(109) == pytest.approx((6 + 7 + 8 + 9) / 4)
    w.resize(20)
    # The dropped seconds are unknown, not zeros: still the average of the 4 kept.
    assert w.average(109) == pytest.approx((6 + 7 + 8 + 9) / 4)
    w.record(110, 10.0)
    assert w.average(110) == pytest.approx((6 + 7 + 8 + 9 + 10) / 5)


def test_memory_is_bounded_by_the_window():
    w = BucketWindow(6)
    for t in range(0, 1000):
        w.record(t, 1.0)
    assert len(w._buckets) <= 7
    assert w.average(999) == 1.0


def test_invalid_window():
    with pytest.raises(ValueError):
        BucketWindow(0)


class _ReferenceWindow:
    """The window's definition, computed naively: every write kept, the view rebuilt."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.writes: dict[int, float] = {}
        self.first: int | None = None
        self.last: int | None = None

    def record(self, second: int, value: float) -> None:
        if self.last is None or second - self.last >= self.window_s:
            self.writes, self.first, self.last = {}, second, second
        elif second <= self.last - self.window_s:
            return
        self.first, self.last = min(self.first, second), max(self.last, second)
        self.writes[second] = self.writes.get(second, 0.0) + value

    def view(self, now: int) -> WindowView:
        now = max(now, self.last)
        start = now - self.window_s + 1
        values = tuple(self.writes.get(s, 0.0) for s in range(start, now + 1))
        return WindowView(values, self.last - max(self.first, start) + 1)


@pytest.mark.parametrize("policy", list(POLICIES.values()))
@pytest.mark.parametrize("seed", range(5))
def test_running_averages_match_the_definition(policy, seed):
    # The ring and running sum must give what the policy gives on the rebuilt window:
    # gaps, late writes, negative adjustments, restarts after silence, resizes.
    rng = random.Random(seed)
    window, reference = BucketWindow(6, policy), _ReferenceWindow(6)
    second = 1000
    for step in range(3000):
        second += rng.choice((0, 0, 1, 1, 1, 2, 4, 9))
        late = rng.random() < 0.1
        when = second - rng.randrange(0, 8) if late else second
        value = rng.choice((0.0, 1.0, 2.5, -1.0, rng.uniform(0, 50)))
        window.record(when + rng.random(), value)
        reference.record(when, value)
        if step % 500 == 499:
            size = rng.choice((3, 6, 10))
            window.resize(size)
            reference = _resized(reference, size)
        now = second + rng.choice((0, 0, 1, 2, 5))
        if now - reference.last >= reference.window_s:
            assert window.average(now) == 0.0
        else:
            assert window.average(now + 0.5) == pytest.approx(
                policy(reference.view(now)), rel=1e-9, abs=1e-6
            )


def _resized(reference: _ReferenceWindow, size: int) -> _ReferenceWindow:
    """Knative's ResizeWindow on the reference: keep the last min(old, new) seconds."""
    kept = min(reference.window_s, size)
    out = _ReferenceWindow(size)
    out.last = reference.last
    out.first = max(reference.first, reference.last - kept + 1)
    out.writes = {s: v for s, v in reference.writes.items() if s > reference.last - kept}
    return out


def test_weighted_average_is_exactly_zero_once_the_load_is_gone():
    # A running (decayed) weighted sum would keep a float residue, and ceil() one instance.
    w = BucketWindow(6, weighted_exponential)
    for t, v in enumerate([3.3, 7.1, 0.7, 1.9]):
        w.record(100 + t, v)
    for t in range(104, 110):
        w.record(t, 0.0)
    assert w.average(109) == 0.0
