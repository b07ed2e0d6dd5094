"""The queue's Prometheus metrics, read from the proxy's plain counters at scrape time.

The proxy counts on its event loop in plain ints (`ebb.common.metrics.RequestTally`);
`QueueCollector` turns them into families on the metrics thread. Every series carries the
revision's `namespace` and `revision` (one queue serves one revision), so series from many
queues aggregate by revision without relabelling.

    registry = new_registry()
    registry.register(QueueCollector(proxy, namespace, revision, request_log))
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ebb.common.metrics import request_families

PREFIX = "ebb_queue"
# Why the queue refused a request itself (503): its breaker's waiting places were full.
REJECT_OVERLOAD = "overload"
REJECT_REASONS = (REJECT_OVERLOAD,)


class QueueCollector:
    """Families of one queue: requests, latency, in flight, waiting, refusals, timeouts."""

    def __init__(self, proxy, namespace: str, revision: str, request_log=None) -> None:
        self._proxy = proxy  # ebb.queue.proxy.Proxy: .tally, .in_flight, .breaker, .healthy
        self._key = (namespace, revision)
        self._log = request_log  # ebb.queue.requestlog.RequestLog or None

    def describe(self) -> Iterator[Metric]:
        return iter([*request_families(PREFIX, "queue", []), *self._gauges()])

    def collect(self) -> Iterator[Metric]:
        proxy = self._proxy
        yield from request_families(PREFIX, "queue", [(self._key, proxy.tally)])
        inflight, depth, ready, dropped = self._gauges()
        labels = list(self._key)
        breaker = proxy.breaker
        waiting = breaker.waiting if breaker is not None else 0
        inflight.add_metric(labels, max(proxy.in_flight - waiting, 0))
        depth.add_metric(labels, waiting)
        ready.add_metric(labels, 1 if proxy.healthy else 0)
        dropped.add_metric([], self._log.dropped if self._log is not None else 0)
        yield from (inflight, depth, ready, dropped)

    @staticmethod
    def _gauges() -> list[Metric]:
        labels = ["namespace", "revision"]
        return [
            GaugeMetricFamily(
                f"{PREFIX}_inflight_requests",
                "Requests in the app now (holding a breaker slot, or all of them with no "
                "container concurrency limit).",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_queue_depth",
                "Requests waiting in the queue for a breaker slot now.",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_ready",
                "1 while the app answers its probe and the queue is not draining, else 0.",
                labels=labels,
            ),
            CounterMetricFamily(
                f"{PREFIX}_request_logs_dropped",
                "Request log lines dropped because stdout did not keep up.",
            ),
        ]
