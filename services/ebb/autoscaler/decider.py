"""Knative's KPA decision for one revision, and the scale-to-zero timing (pure; time passed in).

`Decider.scale(now_s, observation, ...)` is Knative's `autoscaler.Scale`: stable and panic
windows, panic threshold, max scale up/down rates, activation-scale, scale-down-delay and
excess burst capacity. `apply_scale_to_zero(...)` is the part of Knative's KPA reconciler
that turns a desired 0 into "keep 1 for the rest of the stable window, put the activator in
the path, wait the grace period (and pod retention), then 0".
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

from ebb.autoscaler.collector import Observation
from ebb.autoscaler.settings import RevisionScalingConfig
from ebb.common.goparse import INT32_MAX, INT64_MAX, INT64_MIN

# A decision is streamed with desired scale as an int32 and EBC as an int64; a number
# outside them cannot be sent at all (the proto raises "Value out of range"). Desired
# scale is capped at INT32_MAX (a max-scale, when set, clamps it further in the
# controller); EBC is kept within int64, where its sign, all it is read for, survives.


class Decision(NamedTuple):
    """One verdict. `desired` -1 = unknown; `ebc` < 0 means the activator must stay in the path.

    A NamedTuple rather than a frozen dataclass: one is made per revision per tick, and a
    frozen dataclass's __init__ cost several times as much.
    """

    desired: int
    ebc: int
    panic: bool
    stable_value: float
    panic_value: float
    rps: float = 0.0


def initial_ebc(config: RevisionScalingConfig) -> int:
    """EBC before any data: 0 or -1 when TBC is, else initial_scale x total - TBC.

    Defaults: 1 x 100 - 211 = -111, so a new revision starts behind the activator.
    """
    tbc = config.target_burst_capacity
    if tbc in (0, -1):
        return int(tbc)
    ebc = int(config.initial_scale * config.total_value - tbc)  # int() truncates as Go's int32()
    return _int64(ebc)


def _int64(value: int) -> int:
    """`value` clamped to the int64 range it is streamed in."""
    if value > INT64_MAX:
        return INT64_MAX
    if value < INT64_MIN:
        return INT64_MIN
    return value


def excess_burst_capacity(
    config: RevisionScalingConfig, ready_instances: int, panic_value: float
) -> int:
    """floor(ready x total - TBC - panic); 0 when TBC = 0, -1 when TBC = -1.

    3 ready at total 100 with TBC 211 and 50 in flight: floor(300 - 211 - 50) = 39.
    """
    tbc = config.target_burst_capacity
    if tbc == 0:
        return 0
    if tbc < 0:
        return -1
    ebc = math.floor(ready_instances * config.total_value - tbc - panic_value)
    # Inline rather than _int64(): this runs per revision per tick, and it is never out
    # of range but for absurd settings (a target of 1e300).
    if INT64_MIN <= ebc <= INT64_MAX:
        return ebc
    return _int64(ebc)


class TrailingMax:
    """Max of the values recorded in the last `window_s` seconds (Knative's max.TimeWindow)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, int]] = deque()  # (time, value), values decreasing

    def record(self, now_s: float, value: int) -> None:
        while self._entries and self._entries[-1][1] <= value:
            self._entries.pop()
        self._entries.append((now_s, value))

    def current(self, now_s: float) -> int:
        """Max over (now - window, now]; call after record() at the same now."""
        while self._entries and self._entries[0][0] <= now_s - self.window_s:
            self._entries.popleft()
        return self._entries[0][1] if self._entries else 0


class Decider:
    """The KPA state of one revision: panic mode, the scale-down delay window, the latest status.

    A fresh decider that already sees more than one ready instance starts in panic mode
    with max_panic = ready, so an autoscaler restart (which loses the metric history) never
    scales a busy revision down by accident; it leaves panic once a stable window has passed
    without crossing the threshold.
    """

    def __init__(
        self, config: RevisionScalingConfig, *, ready_instances: int, now_s: float
    ) -> None:
        self._config = config
        self._panic_since: float | None = now_s if ready_instances > 1 else None
        self._max_panic = max(0, ready_instances)
        self._delay = (
            TrailingMax(config.scale_down_delay_s) if config.scale_down_delay_s > 0 else None
        )
        self.desired = -1
        self.ebc = initial_ebc(config)

    @property
    def config(self) -> RevisionScalingConfig:
        return self._config

    @property
    def panicking(self) -> bool:
        return self._panic_since is not None

    def update(self, config: RevisionScalingConfig) -> None:
        """New spec; panic state is kept, the delay window restarts if its length changed."""
        if config.scale_down_delay_s != self._config.scale_down_delay_s:
            self._delay = (
                TrailingMax(config.scale_down_delay_s) if config.scale_down_delay_s > 0 else None
            )
        self._config = config

    def scale(
        self,
        now_s: float,
        observation: Observation | None,
        ready_instances: int,
        reachable: bool,
    ) -> Decision | None:
        """One tick; None (and no state change) when there is no data to scale on.

        Runs for every revision on every tick, so the clamps are comparisons rather than
        min()/max() calls, and MultiScaler passes the arguments positionally (keywords
        cost as much as a third of the call).
        """
        if observation is None:
            return None
        c = self._config
        ready = ready_instances if ready_instances > 1 else 1
        stable, panic, rps = observation

        # Let a too-conservative rate still grow by one: rate 1.1 x 2 ready -> ceil 3.
        max_up = math.ceil(c.max_scale_up_rate * ready)
        max_down = math.floor(ready / c.max_scale_down_rate) if reachable else 0

        # At 50 concurrent and target 7: dspc = ceil(50 / 7) = 8.
        target = c.target_value
        dspc = math.ceil(stable / target)
        dppc = math.ceil(panic / target)
        # clamp(x, max_down, max_up) = min(max(x, max_down), max_up), as comparisons.
        des_stable = dspc if dspc > max_down else max_down
        if des_stable > max_up:
            des_stable = max_up
        des_panic = dppc if dppc > max_down else max_down
        if des_panic > max_up:
            des_panic = max_up
        activation = c.activation_scale
        if activation > 1:
            if dspc > 0 and activation > des_stable:
                des_stable = activation
            if dppc > 0 and activation > des_panic:
                des_panic = activation

        panic_since = self._panic_since
        if dppc / ready >= c.panic_threshold:
            panic_since = self._panic_since = now_s  # enter panic, or extend it
        elif panic_since is not None and panic_since + c.stable_window_s < now_s:
            # The surge has made its way into the stable window.
            panic_since = self._panic_since = None
            self._max_panic = 0

        if panic_since is not None:
            # Provision for the larger of the two, and never scale down while panicking.
            desired = self._max_panic
            if des_stable > desired:
                desired = des_stable
            if des_panic > desired:
                desired = des_panic
            self._max_panic = desired
        else:
            desired = des_stable

        if self._delay is not None:
            self._delay.record(now_s, desired)
            if reachable:
                desired = self._delay.current(now_s)
        if desired > INT32_MAX:
            # Only absurd load and settings get here: at the default max-scale-up-rate
            # of 1000, max_up passes INT32_MAX only from 2,147,484 ready instances on.
            desired = INT32_MAX

        ebc = excess_burst_capacity(c, ready_instances, panic)
        self.desired, self.ebc = desired, ebc
        # Positional, in field order (desired, ebc, panic, stable, panic, rps): keyword
        # arguments doubled the cost of this call, made per revision per tick.
        return Decision(desired, ebc, panic_since is not None, stable, panic, rps)


# ---------------------------------------------------------------------------------------
# Scale to zero


class Activity(NamedTuple):
    """Where a revision is on its way to zero.

    active_since_s: when it was last seen wanting instances (or first decided on);
    inactive_since_s: when it was marked inactive, i.e. handed to the activator.
    (A NamedTuple, like `ScaleToZero`.)
    """

    active_since_s: float | None = None
    inactive_since_s: float | None = None

    @property
    def inactive(self) -> bool:
        return self.inactive_since_s is not None


class ScaleToZero(NamedTuple):
    """The scale to apply, the new activity, and whether the activator must front the revision.

    A NamedTuple rather than a frozen dataclass: one is made per revision per tick, and a
    frozen dataclass's __init__ cost several times as much.
    """

    scale: int
    activity: Activity
    activator_in_path: bool


def apply_scale_to_zero(
    desired: int,
    now_s: float,
    activity: Activity,
    enable_scale_to_zero: bool,
    stable_window_s: float,
    grace_period_s: float,
    pod_retention_s: float = 0.0,
    min_scale: int = 0,
) -> ScaleToZero:
    """Knative's `handleScaleToZero`, as a function of time.

    A desired 0 becomes 0 only when (a) enable-scale-to-zero is on, (b) the revision has
    been active for at least the stable window (then it is marked inactive and the
    activator goes into the path), and (c) it has been inactive for
    max(scale-to-zero-grace-period, pod retention). Until then the revision keeps 1.
    Defaults: the last request leaves the 60 s stable window, then 30 s grace -> 0.

    `min_scale` is the effective lower bound (min-scale when the revision is reachable):
    with a floor above 0 the controller never goes to zero, so nothing is held or marked.
    A desired of -1 (unknown) passes through untouched.
    """
    if desired < 0:
        return ScaleToZero(desired, activity, activity.inactive)
    if desired > 0 or min_scale > 0:
        if activity.active_since_s is None or activity.inactive:
            activity = Activity(active_since_s=now_s)
        return ScaleToZero(desired, activity, False)
    if not enable_scale_to_zero:
        if activity.active_since_s is None or activity.inactive:
            activity = Activity(active_since_s=now_s)
        return ScaleToZero(1, activity, False)
    if not activity.inactive:
        if activity.active_since_s is None:
            activity = Activity(active_since_s=now_s)
        if now_s - activity.active_since_s < stable_window_s:
            return ScaleToZero(1, activity, False)
        activity = activity._replace(inactive_since_s=now_s)
    assert activity.inactive_since_s is not None
    if now_s - activity.inactive_since_s >= max(grace_period_s, pod_retention_s):
        return ScaleToZero(0, activity, True)
    return ScaleToZero(1, activity, True)
