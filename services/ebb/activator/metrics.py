"""The activator's Prometheus metrics, read from its plain counters at scrape time.

Each `Revision` counts its requests in a `RequestTally` and its holds in `Holds`, on the
event loop, without locks; `ActivatorCollector` reads them when scraped, on the metrics
thread. A revision's series go when the controller removes the revision. Requests the
activator cannot route (no revision named, an unknown one, before the controller's first
snapshot) are counted under `namespace=""`, `revision=""`: their names come from request
headers, and a label must not take any value a client sends.

    registry = new_registry()
    registry.register(ActivatorCollector(activator))
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ebb.common.metrics import REQUEST_BUCKETS_S, cumulative_buckets, request_families

PREFIX = "ebb_activator"
# Why the activator answered a request itself instead of forwarding it.
REJECT_OVERLOAD = "overload"  # 503: the revision's line of held requests was full
REJECT_NOT_SYNCED = "not_synced"  # 503: no snapshot from the controller yet
REJECT_UNKNOWN = "unknown_revision"  # 404: no revision named, or one the controller never listed
REJECT_REMOVED = "removed"  # 404: the revision was removed as the request arrived
REVISION_REASONS = (REJECT_OVERLOAD,)
UNROUTED_REASONS = (REJECT_NOT_SYNCED, REJECT_UNKNOWN, REJECT_REMOVED)
UNROUTED = ("", "")


class Holds:
    """Requests of one revision that had to wait for an instance, and for how long.

    Plain ints written by the event loop: `held` when a request starts waiting,
    `observe(seconds)` when it gets an instance (one that gives up is not observed: its
    end is counted as a timeout or by its status)."""

    __slots__ = ("held", "buckets", "sum_s")

    def __init__(self) -> None:
        self.held = 0
        self.buckets = [0] * (len(REQUEST_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(REQUEST_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds


class ActivatorCollector:
    """Families of the activator: per revision requests, latency, refusals, timeouts,
    forwarded and held requests, hold times and instances."""

    def __init__(self, activator) -> None:
        self._activator = activator  # ebb.activator.proxy.Activator

    def describe(self) -> Iterator[Metric]:
        return iter([*request_families(PREFIX, "activator", []), *self._gauges()])

    def collect(self) -> Iterator[Metric]:
        activator = self._activator
        revisions = activator.revisions_now()
        rows = [((rev.namespace, rev.name), rev.tally) for rev in revisions]
        rows.append((UNROUTED, activator.unrouted))
        yield from request_families(PREFIX, "activator", rows)
        inflight, depth, held, hold, instances, count = families = self._gauges()
        for rev in revisions:
            labels = [rev.namespace, rev.name]
            waiting = rev.throttler.waiting
            inflight.add_metric(labels, max(rev.load.concurrency - waiting, 0))
            depth.add_metric(labels, waiting)
            holds = rev.holds
            held.add_metric(labels, holds.held)
            hold.add_metric(labels, cumulative_buckets(holds.buckets)[0], holds.sum_s)
            instances.add_metric(labels, len(rev.throttler.instances))
        count.add_metric([], len(revisions))
        yield from families

    @staticmethod
    def _gauges() -> list[Metric]:
        labels = ["namespace", "revision"]
        return [
            GaugeMetricFamily(
                f"{PREFIX}_inflight_requests",
                "Requests the activator is forwarding to an instance now.",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_queue_depth",
                "Requests held now, waiting for an instance with a free slot.",
                labels=labels,
            ),
            CounterMetricFamily(
                f"{PREFIX}_held_requests",
                "Requests that had to wait for an instance (the revision was at zero, or "
                "every slot was taken).",
                labels=labels,
            ),
            HistogramMetricFamily(
                f"{PREFIX}_hold_duration_seconds",
                "Time a held request waited until an instance could take it.",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_instances",
                "Ready instances of the revision the activator forwards to.",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_revisions",
                "Revisions the activator knows from the controller.",
            ),
        ]
