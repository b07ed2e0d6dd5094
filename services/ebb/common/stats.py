"""Time-weighted concurrency accounting, as Knative's queue-proxy and activator report it each second.

Pure and O(1) per request: callers pass `now` (monotonic seconds); nothing reads a clock.
Average concurrency over a period is sum(concurrency x dt) / sum(dt): one request in
flight for the first half of a 1 s period and none after averages 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Report:
    """One period's figures (the body of a `Stat`)."""

    average_concurrency: float
    average_proxied_concurrency: float
    request_count: int
    proxied_request_count: int
    period_s: float


class ConcurrencyStats:
    """Counts requests in and out; `report(now)` closes the current period and opens the next.

    "Proxied" requests (queue only) are those that came through the activator
    (`K-Proxy-Request: activator`); they are included in the totals too, and the
    autoscaler subtracts them. The activator counts every request it holds or forwards as
    plain (not proxied) load.
    """

    __slots__ = (
        "concurrency",
        "proxied_concurrency",
        "_last",
        "_period_start",
        "_area",
        "_proxied_area",
        "_requests",
        "_proxied_requests",
    )

    def __init__(self, now: float) -> None:
        self.restart(now)

    def restart(self, now: float) -> None:
        """Nothing in flight, nothing counted: the first period starts at `now`."""
        self.concurrency = 0
        self.proxied_concurrency = 0
        self._last = now
        self._period_start = now
        self._area = 0.0  # sum of concurrency x seconds in this period
        self._proxied_area = 0.0
        self._requests = 0
        self._proxied_requests = 0

    def _advance(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:  # a clock that steps back adds nothing rather than negative area
            self._area += self.concurrency * dt
            self._proxied_area += self.proxied_concurrency * dt
            self._last = now

    # request_in and request_out run for every request of both proxies: they advance the
    # areas inline rather than through `_advance` (one Python call less each).

    def request_in(self, now: float, proxied: bool = False) -> None:
        """A request arrived and is now in flight."""
        dt = now - self._last
        if dt > 0:
            self._area += self.concurrency * dt
            self._proxied_area += self.proxied_concurrency * dt
            self._last = now
        self.concurrency += 1
        self._requests += 1
        if proxied:
            self.proxied_concurrency += 1
            self._proxied_requests += 1

    def request_out(self, now: float, proxied: bool = False) -> None:
        """A request finished (answered, failed or abandoned)."""
        dt = now - self._last
        if dt > 0:
            self._area += self.concurrency * dt
            self._proxied_area += self.proxied_concurrency * dt
            self._last = now
        self.concurrency -= 1
        if proxied:
            self.proxied_concurrency -= 1

    def report(self, now: float) -> Report:
        """Figures for the period ending at `now`; counters restart for the next period."""
        self._advance(now)
        period_s = max(self._last - self._period_start, 0.0)
        if period_s > 0:
            average = self._area / period_s
            proxied_average = self._proxied_area / period_s
        else:  # no time has passed: the best estimate is what is in flight right now
            average = float(self.concurrency)
            proxied_average = float(self.proxied_concurrency)
        report = Report(average, proxied_average, self._requests, self._proxied_requests, period_s)
        self._period_start = self._last
        self._area = 0.0
        self._proxied_area = 0.0
        self._requests = 0
        self._proxied_requests = 0
        return report
