"""Turns the pushed stat stream into per-revision windows of concurrency and rps (pure).

Each reporter (a queue in front of one instance, or an activator) pushes one `StatValue`
a second. For every revision and every second the collector keeps each reporter's latest
stat and records the revision's total for that second into a stable and a panic window:

    concurrency = sum over queues of (average_concurrency - average_proxied_concurrency)
                + sum over activators of average_concurrency
    rps         = the same with request counts, divided by the reporting period

Requests that came through the activator are counted by the activator for as long as it
holds or forwards them; the queue counts them too and reports them as "proxied", so the
proxied part is subtracted from queue stats (Knative's collection.record does the same).
Seconds are taken from the receiving clock, not the reporter's timestamp, so clock skew
between processes cannot move load into the wrong bucket.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import NamedTuple

from ebb.autoscaler.windows import POLICIES, BucketWindow

RevisionKey = tuple[str, str]  # (namespace, name)

ACTIVATOR_PREFIX = "activator"

# Why a stat was dropped (the counters' labels).
MISSING_REVISION = "missing_revision"
MISSING_INSTANCE = "missing_instance"
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
NEGATIVE = "negative"
OUT_OF_RANGE = "out_of_range"
UNKNOWN_REVISION = "unknown_revision"
# Counted by the server, not here: a stream message that does not decode as a
# StreamStatsRequest (one drop per message, however many stats it may have held).
UNDECODABLE = "undecodable"
DROP_REASONS = (
    MISSING_REVISION,
    MISSING_INSTANCE,
    NOT_A_NUMBER,
    NOT_FINITE,
    NEGATIVE,
    OUT_OF_RANGE,
    UNKNOWN_REVISION,
    UNDECODABLE,
)

# Bounds no real reporter reaches; a stat beyond them is dropped as `out_of_range`. A
# finite but absurd value (1e300) would otherwise reach the decider, whose desired scale
# and EBC are sent as int32 / int64, and it would swamp the windows of its revision for a
# whole stable window. Within these bounds a revision's sums stay finite: 20,000 reporters
# at the concurrency bound add up to 2e10.
#
# Concurrency: an activator holds at most 10,000 requests of a revision (its queue depth)
# plus those it forwards, and a queue's in-flight requests are bounded by its open files
# (20,000 here); a million in flight is 50x beyond either.
MAX_CONCURRENCY = 1e6
# Requests in one period: a Python proxy serves some 10^4 requests a second; 10^9 is
# 10^5 a second over the longest period below, or a billion in a one-second period.
MAX_REQUEST_COUNT = 1e9
# Seconds since the reporter started: 1e10 s is over 300 years.
MAX_UPTIME_S = 1e10
# The period is 0 (= 1 s) or what passed between two reads of the reporter's monotonic
# clock, about 1 s. The activator's first period of a spell of activity runs from a
# request to the next tick, so it can be well under 1 ms, but those are two separate
# event-loop callbacks, at least a few microseconds apart: 1 us is the floor. Below it a
# request count turns into an absurd rate (1 request in 1e-300 s). Above an hour (the
# longest stable window) the reporter was stopped for longer than any window covers.
MIN_PERIOD_S = 1e-6
MAX_PERIOD_S = 3600.0


class StatValue(NamedTuple):
    """One reporter's load for one period (the proto `Stat`, as a plain value).

    A NamedTuple rather than a frozen dataclass: one is made for every stat received,
    and a frozen dataclass's __init__ cost several times as much.
    """

    instance: str  # queue: the instance id; activator: `activator/<id>`
    namespace: str
    name: str
    average_concurrency: float
    average_proxied_concurrency: float = 0.0
    request_count: float = 0.0
    proxied_request_count: float = 0.0
    process_uptime_s: float = 0.0
    period_s: float = 0.0  # 0 = the default of 1 s

    @property
    def revision(self) -> RevisionKey:
        return (self.namespace, self.name)

    @property
    def from_activator(self) -> bool:
        return self.instance.startswith(ACTIVATOR_PREFIX)


# Each number with its range: (field, lowest, highest); the period may also be 0.
_NUMBERS = (
    ("average_concurrency", 0.0, MAX_CONCURRENCY),
    ("average_proxied_concurrency", 0.0, MAX_CONCURRENCY),
    ("request_count", 0.0, MAX_REQUEST_COUNT),
    ("proxied_request_count", 0.0, MAX_REQUEST_COUNT),
    ("process_uptime_s", 0.0, MAX_UPTIME_S),
    ("period_s", MIN_PERIOD_S, MAX_PERIOD_S),
)


def _plainly_valid(stat: StatValue) -> bool:
    """The common case: three non-empty strings and six floats within their bounds (see
    MAX_CONCURRENCY and below), as every sane decoded proto `Stat` holds.

    This runs for every stat, so it is written as one chain of identity checks and
    comparisons (half the cost of building tuples and sets of types; a NaN fails every
    comparison, an infinity its upper bound). The bounds added some 50 ns to about 450
    (one stat's whole `Collector.record` is about 2.6 us). Anything it does not vouch for
    gets the per-field checks of `invalid_reason` and its reason.
    """
    if type(stat) is not StatValue:
        return False
    instance, namespace, name, a, b, c, d, e, f = stat
    return (
        type(instance) is str
        and type(namespace) is str
        and type(name) is str
        and instance != ""
        and namespace != ""
        and name != ""
        and type(a) is float
        and type(b) is float
        and type(c) is float
        and type(d) is float
        and type(e) is float
        and type(f) is float
        and a >= 0.0
        and b >= 0.0
        and c >= 0.0
        and d >= 0.0
        and e >= 0.0
        and a <= MAX_CONCURRENCY
        and b <= MAX_CONCURRENCY
        and c <= MAX_REQUEST_COUNT
        and d <= MAX_REQUEST_COUNT
        and e <= MAX_UPTIME_S
        and (f == 0.0 or MIN_PERIOD_S <= f <= MAX_PERIOD_S)
    )


def invalid_reason(stat: StatValue) -> str | None:
    """Why `stat` cannot be used, or None when it is fine. Never raises."""
    if _plainly_valid(stat):
        return None
    if not isinstance(stat.namespace, str) or not isinstance(stat.name, str):
        return MISSING_REVISION
    if not stat.namespace or not stat.name:
        return MISSING_REVISION
    if not isinstance(stat.instance, str) or not stat.instance:
        return MISSING_INSTANCE
    for attr, lowest, highest in _NUMBERS:
        value = getattr(stat, attr, None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return NOT_A_NUMBER
        if not math.isfinite(value):
            return NOT_FINITE
        if value < 0:
            return NEGATIVE
        if value > highest or (value < lowest and value != 0):
            return OUT_OF_RANGE
    return None


def contribution(stat: StatValue) -> tuple[float, float]:
    """(concurrency, requests per second) one valid stat adds to its revision's second.

    A queue that saw 5 in flight on average, 2 of them via the activator, adds 3: the
    activator reports those 2 itself. Counts are per period, so 10 requests over a 2 s
    period add 5 rps.
    """
    period_s = stat.period_s if stat.period_s > 0 else 1.0
    if stat.from_activator:
        return stat.average_concurrency, stat.request_count / period_s
    concurrency = max(0.0, stat.average_concurrency - stat.average_proxied_concurrency)
    requests = max(0.0, stat.request_count - stat.proxied_request_count)
    return concurrency, requests / period_s


class Observation(NamedTuple):
    """What the decider reads: windowed averages of the revision's metric.

    A NamedTuple rather than a frozen dataclass: one is made per revision per tick, and a
    frozen dataclass's __init__ cost several times as much.
    """

    stable: float
    panic: float
    rps: float  # requests per second over the last complete second


class _Revision:
    def __init__(self, stable_window_s: int, panic_window_s: int, aggregation: str) -> None:
        policy = POLICIES[aggregation]
        self.concurrency_stable = BucketWindow(stable_window_s, policy)
        self.concurrency_panic = BucketWindow(panic_window_s, policy)
        self.rps_stable = BucketWindow(stable_window_s, policy)
        self.rps_panic = BucketWindow(panic_window_s, policy)
        self.second: int | None = None
        self.latest: dict[str, tuple[float, float]] = {}  # reporter -> contribution in `second`
        self.rps_totals: dict[int, float] = {}

    def configure(self, stable_window_s: int, panic_window_s: int, aggregation: str) -> None:
        policy = POLICIES[aggregation]
        for window, size in (
            (self.concurrency_stable, stable_window_s),
            (self.concurrency_panic, panic_window_s),
            (self.rps_stable, stable_window_s),
            (self.rps_panic, panic_window_s),
        ):
            window.resize(size)
            window.set_policy(policy)

    def record(self, now_s: float, reporter: str, concurrency: float, rps: float) -> None:
        second = math.floor(now_s)
        if self.second is not None and second < self.second:
            # A clock that steps back must not write into a second whose reporters we
            # no longer track: count it in the current second instead.
            second, now_s = self.second, float(self.second)
        if self.second is None or second > self.second:
            self.second = second
            self.latest = {}
            for old in [s for s in self.rps_totals if s < second - 1]:
                del self.rps_totals[old]
        # A reporter's second stat within one second replaces its first: record the change.
        old_c, old_r = self.latest.get(reporter, (0.0, 0.0))
        self.latest[reporter] = (concurrency, rps)
        d_c, d_r = concurrency - old_c, rps - old_r
        self.concurrency_stable.record(now_s, d_c)
        self.concurrency_panic.record(now_s, d_c)
        self.rps_stable.record(now_s, d_r)
        self.rps_panic.record(now_s, d_r)
        self.rps_totals[self.second] = self.rps_totals.get(self.second, 0.0) + d_r


class Collector:
    """Windows per tracked revision; stats for untracked revisions are dropped."""

    def __init__(self) -> None:
        self._revisions: dict[RevisionKey, _Revision] = {}
        self.accepted = 0
        self.dropped: Counter[str] = Counter()

    def track(
        self, key: RevisionKey, *, stable_window_s: int, panic_window_s: int, aggregation: str
    ) -> None:
        """Start collecting for `key`, or change its windows (keeping the data that fits)."""
        revision = self._revisions.get(key)
        if revision is None:
            self._revisions[key] = _Revision(stable_window_s, panic_window_s, aggregation)
        else:
            revision.configure(stable_window_s, panic_window_s, aggregation)

    def forget(self, key: RevisionKey) -> None:
        self._revisions.pop(key, None)

    def tracks(self, key: RevisionKey) -> bool:
        return key in self._revisions

    def record(self, now_s: float, stat: StatValue) -> str | None:
        """Take one stat; returns None when accepted, else the reason it was dropped.

        Never raises: a malformed stat is counted under its reason and ignored.
        """
        try:
            reason = None if _plainly_valid(stat) else invalid_reason(stat)
        except Exception:  # a value that does not even behave like a StatValue
            reason = NOT_A_NUMBER
        revision = self._revisions.get((stat.namespace, stat.name)) if reason is None else None
        if revision is None:
            reason = reason or UNKNOWN_REVISION
            self.dropped[reason] += 1
            return reason
        concurrency, rps = contribution(stat)
        revision.record(now_s, stat.instance, concurrency, rps)
        self.accepted += 1
        return None

    def observe(self, key: RevisionKey, now_s: float, metric: str) -> Observation | None:
        """Stable and panic averages of `metric` ("concurrency" or "rps") at `now_s`;
        None when there is no data within the stable window (then no decision is made)."""
        revision = self._revisions.get(key)
        if revision is None:
            return None
        if metric == "rps":
            stable, panic = revision.rps_stable, revision.rps_panic
        else:
            stable, panic = revision.concurrency_stable, revision.concurrency_panic
        second = math.floor(now_s)
        stable_value = stable.observe_at(second)
        if stable_value is None:
            return None
        last_second = revision.rps_totals.get(second - 1, 0.0)
        # Positional (stable, panic, rps): keyword arguments doubled the cost of this call.
        return Observation(stable_value, panic.average_at(second), max(0.0, last_second))
