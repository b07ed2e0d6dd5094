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


def linear(view: WindowView) -> float:
    """Plain average of the valid seconds (Knative's `linear`).

    Window 6 s, first write 3 s ago with 2, 4, 6 -> (2 + 4 + 6) / 3 = 4.
    """
    if view.valid <= 0:
        return 0.0
    return round(sum(view.values) / view.valid, _PRECISION_DIGITS)


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


class BucketWindow:
    """Per-second totals over the last `window_s` seconds, averaged by `policy`."""

    def __init__(self, window_s: int, policy: Aggregation = linear) -> None:
        if window_s < 1:
            raise ValueError(f"window_s = {window_s}, must be at least 1")
        self._window_s = int(window_s)
        self._policy = policy
        self._buckets: dict[int, float] = {}
        self._first: int | None = None
        self._last: int | None = None

    @property
    def window_s(self) -> int:
        return self._window_s

    @property
    def last_write_s(self) -> int | None:
        """The second of the latest write (None before any)."""
        return self._last

    def record(self, now_s: float, value: float) -> None:
        """Add `value` to the bucket of second floor(now_s)."""
        second = math.floor(now_s)
        if self._last is None or second - self._last >= self._window_s:
            # First write, or a full window of silence: start over.
            self._buckets.clear()
            self._first = second
            self._last = second
        elif second > self._last:
            self._last = second
        elif second <= self._last - self._window_s:
            return  # older than anything the window can still show
        if self._first is None or second < self._first:
            self._first = second
        self._buckets[second] = self._buckets.get(second, 0.0) + value
        horizon = self._last - self._window_s
        if len(self._buckets) > self._window_s:
            for old in [s for s in self._buckets if s <= horizon]:
                del self._buckets[old]

    def is_empty(self, now_s: float) -> bool:
        """True before any write, or when the last write is more than a window ago
        (Knative's `IsEmpty`: the decider then has no data and makes no decision)."""
        return self._last is None or math.floor(now_s) - self._last > self._window_s

    def view(self, now_s: float) -> WindowView:
        """The window ending at second floor(now_s) (or at the last write, if later)."""
        if self._last is None or self._first is None:
            return WindowView(values=(0.0,) * self._window_s, valid=0)
        now = max(math.floor(now_s), self._last)
        start = now - self._window_s + 1
        values = tuple(self._buckets.get(s, 0.0) for s in range(start, now + 1))
        valid = self._last - max(self._first, start) + 1 if self._last >= start else 0
        return WindowView(values=values, valid=max(valid, 0))

    def average(self, now_s: float) -> float:
        """The policy's average; 0 after a full window of silence."""
        if self._last is None or math.floor(now_s) - self._last >= self._window_s:
            return 0.0
        return self._policy(self.view(now_s))

    def resize(self, window_s: int) -> None:
        """Change the window length, keeping the data that still fits (Knative's ResizeWindow)."""
        if window_s < 1:
            raise ValueError(f"window_s = {window_s}, must be at least 1")
        if int(window_s) == self._window_s:
            return
        kept_s = min(self._window_s, int(window_s))
        self._window_s = int(window_s)
        if self._last is not None and self._first is not None:
            horizon = self._last - kept_s
            for old in [s for s in self._buckets if s <= horizon]:
                del self._buckets[old]
            # Seconds before what was kept are unknown now, not zeros: they are not valid.
            self._first = max(self._first, horizon + 1)

    def set_policy(self, policy: Aggregation) -> None:
        self._policy = policy
