"""1-second buckets over a sliding window, averaged by a swappable policy (pure).

Mirrors Knative's `aggregation.TimedFloat64Buckets` / `WeightedFloat64Buckets` with a 1 s
granularity: values recorded in the same second add up; a write after a full window of
silence starts over (the "first write" moves); averages look at the window ending now.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Knative rounds the linear average to 6 digits so float noise does not flip a ceil().
_PRECISION_DIGITS = 6
_PRECISION_SCALE = 10.0**_PRECISION_DIGITS  # exactly 1e6, as Go's math.Pow10(6)
# The weights of a weighted-exponential window sum to at least 1 - 0.0001 ...
_WEIGHT_PRECISION = 0.9999
# ... unless that would make alpha smaller than this (very long windows).
_MIN_ALPHA = 0.2


@dataclass(frozen=True)
class WindowView:
    """What an aggregation policy sees of one window at one instant.

    `values` has one entry per second of the window, oldest first, the last one being the
    current second; seconds without data are 0. `valid` counts the seconds that hold real
    observations in Knative's sense: from the first write (or the window's start, if
    later) up to the last write. Seconds after the last write are not valid.
    """

    values: tuple[float, ...]
    valid: int


Aggregation = Callable[[WindowView], float]


def round_average(value: float) -> float:
    """`value` to 6 decimals as Knative's `roundToNDigits`: Go's `math.Round(value × 10^6) / 10^6`.

    Go's Round takes halves away from zero, on the product as a float; Python's round()
    takes them to even, on the exact decimal value, and the two differ on ties: an average
    of 5e-7 (one 30 µs request in a 60 s window: 3e-5 / 60) is 1e-6 here, so ceil() keeps one
    instance, where round() gave 0; 7.0000005 is 7.000001, so at target 7 it wants 2.
    Knative truncated (math.Floor) until knative/serving#15940 (2025): a float residue
    such as -3.6e-17 came out as -1e-6, where rounding gives 0.
    """
    scaled = value * _PRECISION_SCALE
    whole = math.trunc(scaled)
    rest = scaled - whole  # exact: a float's fractional part is a float
    if rest >= 0.5:
        whole += 1
    elif rest <= -0.5:
        whole -= 1
    return whole / _PRECISION_SCALE


def linear(view: WindowView) -> float:
    """Plain average of the valid seconds (Knative's `linear`).

    Window 6 s, first write 3 s ago with 2, 4, 6 -> (2 + 4 + 6) / 3 = 4.
    """
    if view.valid <= 0:
        return 0.0
    return round_average(sum(view.values) / view.valid)


def smoothing_coefficient(buckets: int) -> float:
    """alpha = max(1 - 0.0001^(1/buckets), 0.2): 6 buckets -> 0.785, 60 -> 0.2 (floor)."""
    return max(1.0 - (1.0 - _WEIGHT_PRECISION) ** (1.0 / buckets), _MIN_ALPHA)


def weighted_exponential(view: WindowView, alpha: float | None = None) -> float:
    """Exponentially weighted: the second `age` seconds old weighs alpha x (1 - alpha)^age.

    alpha defaults to smoothing_coefficient(window length). Not normalised, as in Knative:
    with alpha = 0.6 and [10, 10, 5, 5] (newest last) it is
    5*0.6 + 5*0.6*0.4 + 10*0.6*0.4^2 + 10*0.6*0.4^3 = 5.544.
    """
    if view.valid <= 0 or not view.values:
        return 0.0
    if alpha is None:
        alpha = smoothing_coefficient(len(view.values))
    total = 0.0
    weight = alpha
    for value in reversed(view.values):
        total += value * weight
        weight *= 1.0 - alpha
    return total


POLICIES: dict[str, Aggregation] = {
    "linear": linear,
    "weighted-exponential": weighted_exponential,
}


_WEIGHTS: dict[int, tuple[float, ...]] = {}  # by window length


def _weights(window_s: int) -> tuple[float, ...]:
    """The weighted-exponential weights for ages 0 .. window_s - 1, built by the same
    repeated multiplication as `weighted_exponential`, so both give identical sums."""
    weights = _WEIGHTS.get(window_s)
    if weights is None:
        alpha = smoothing_coefficient(window_s)
        built, weight = [], alpha
        for _ in range(window_s):
            built.append(weight)
            weight *= 1.0 - alpha
        weights = _WEIGHTS[window_s] = tuple(built)
    return weights


class BucketWindow:
    """Per-second totals over the last `window_s` seconds, averaged by `policy`.

    The seconds live in a ring of `window_s` slots (second s in slot s % window_s) with a
    running sum of the slots, because the tick averages two windows per revision for
    thousands of revisions: rebuilding the window for every average made it the tick's
    largest cost. Costs, with w = window_s and g = seconds since the last write (g is 0
    or 1 while a revision reports every second):

    - `record`: O(1), plus O(g) to clear the seconds skipped;
    - `linear` average: O(g), from the running sum;
    - `weighted-exponential` average: O(w), a weighted pass over the ring. Its running
      form (decay the sum each second, subtract what leaves the window) would not come
      back to exactly 0 once the load is gone, and ceil() would then keep one instance;
    - any other policy: O(w), through `view`.

    The running sum is recomputed from the slots once per lap of the ring, so float
    rounding cannot accumulate for longer than one window.
    """

    def __init__(self, window_s: int, policy: Aggregation = linear) -> None:
        if window_s < 1:
            raise ValueError(f"window_s = {window_s}, must be at least 1")
        self._window_s = int(window_s)
        self._policy = policy
        self._buckets = [0.0] * self._window_s  # the ring
        self._sum = 0.0  # of the slots, i.e. of seconds (last - window_s, last]
        self._first: int | None = None
        self._last: int | None = None

    @property
    def window_s(self) -> int:
        return self._window_s

    def record(self, now_s: float, value: float) -> None:
        """Add `value` to the bucket of second floor(now_s)."""
        second = math.floor(now_s)
        last = self._last
        if last is None or second - last >= self._window_s:
            # First write, or a full window of silence: start over.
            self._buckets = [0.0] * self._window_s
            self._sum = 0.0
            self._first = self._last = second
        elif second > last:
            self._advance(last, second)
        elif second <= last - self._window_s:
            return  # older than anything the window can still show
        elif second < self._first:  # type: ignore[operator]  # set with _last
            self._first = second
        self._buckets[second % self._window_s] += value
        self._sum += value

    def _advance(self, last: int, second: int) -> None:
        """Move the newest second from `last` to `second`, emptying the slots in between."""
        buckets, size = self._buckets, self._window_s
        for s in range(last + 1, second + 1):
            slot = s % size
            self._sum -= buckets[slot]
            buckets[slot] = 0.0
            if slot == 0:
                self._sum = sum(buckets)
        self._last = second

    def is_empty(self, now_s: float) -> bool:
        """True before any write, or when the last write is more than a window ago
        (Knative's `IsEmpty`: the decider then has no data and makes no decision)."""
        return self._last is None or math.floor(now_s) - self._last > self._window_s

    def observe_at(self, now: int) -> float | None:
        """`average` at the whole second `now`, or None when `is_empty` there.

        The tick asks this of thousands of windows: one call that floors nothing and
        checks emptiness on the way costs a third of `is_empty` + `average`.
        """
        last = self._last
        if last is None or now - last > self._window_s:
            return None
        return self.average_at(now)

    def view(self, now_s: float) -> WindowView:
        """The window ending at second floor(now_s) (or at the last write, if later)."""
        if self._last is None or self._first is None:
            return WindowView(values=(0.0,) * self._window_s, valid=0)
        last, size = self._last, self._window_s
        now = max(math.floor(now_s), last)
        start = now - size + 1
        values = tuple(
            self._buckets[s % size] if last - size < s <= last else 0.0
            for s in range(start, now + 1)
        )
        valid = last - max(self._first, start) + 1 if last >= start else 0
        return WindowView(values=values, valid=max(valid, 0))

    def average(self, now_s: float) -> float:
        """The policy's average; 0 after a full window of silence."""
        return self.average_at(math.floor(now_s))

    def average_at(self, now: int) -> float:
        """`average` at the whole second `now`.

        The linear case is written out here rather than in a helper: it runs twice per
        revision per tick, and the extra call was a fifth of its cost. (Its rounding is a
        call, `round_average`, shared with `linear`: no dearer than the round() it replaced.)
        """
        last = self._last
        size = self._window_s
        if last is None or now - last >= size:
            return 0.0
        if now < last:
            now = last
        policy = self._policy
        if policy is linear:
            total = self._sum
            if now > last:
                buckets = self._buckets
                for s in range(last - size + 1, now - size + 1):  # seconds that left the window
                    total -= buckets[s % size]
            start = now - size + 1
            first = self._first
            valid = last - (first if first > start else start) + 1  # type: ignore[operator]
            return round_average(total / valid)
        if policy is weighted_exponential:
            return self._weighted(last, now)
        return policy(self.view(float(now)))

    def _weighted(self, last: int, now: int) -> float:
        """`weighted_exponential` over the window ending at `now`, newest second first."""
        buckets, size = self._buckets, self._window_s
        weights = _weights(size)
        total = 0.0
        for age in range(now - last, size):  # younger seconds have no data: 0
            total += buckets[(now - age) % size] * weights[age]
        return total

    def resize(self, window_s: int) -> None:
        """Change the window length, keeping the data that still fits (Knative's ResizeWindow)."""
        if window_s < 1:
            raise ValueError(f"window_s = {window_s}, must be at least 1")
        size = int(window_s)
        if size == self._window_s:
            return
        kept_s = min(self._window_s, size)
        ring = [0.0] * size
        if self._last is not None and self._first is not None:
            for s in range(self._last - kept_s + 1, self._last + 1):
                ring[s % size] = self._buckets[s % self._window_s]
            # Seconds before what was kept are unknown now, not zeros: they are not valid.
            self._first = max(self._first, self._last - kept_s + 1)
        self._window_s, self._buckets, self._sum = size, ring, sum(ring)

    def set_policy(self, policy: Aggregation) -> None:
        self._policy = policy
