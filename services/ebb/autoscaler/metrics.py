"""The autoscaler's Prometheus metrics, read from its live state at scrape time.

Per-revision gauges come from the MultiScaler's latest verdicts, so a revision's series
appear when the controller registers it and disappear when it is unregistered; the stat
counters come from the Collector's own counts. Nothing on the stat path is touched: the
only values recorded as they happen are the tick's duration and CPU time (per slice and per
round) and, in the process, garbage-collection pauses.

Scrapes run on the metrics HTTP thread, not the event loop, so `collect()` only takes
snapshots that need no lock: copies of dicts (one C-level call each under the GIL) and
immutable values (`Verdict`, `RevisionScalingConfig`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ebb.autoscaler.collector import DROP_REASONS
from ebb.autoscaler.settings import RPS
from ebb.common.metrics import CONTROL_BUCKETS_S

if TYPE_CHECKING:
    from ebb.autoscaler.server import AutoscalerServer
    from ebb.autoscaler.statsport import StatsPort

REVISION_LABELS = ("namespace", "revision")
INTERNAL_ERROR = "internal_error"  # a stat whose handling raised (a bug): see server.py
# server.counters keys: tick_errors, decide_errors, publish_errors
ERROR_STAGES = ("tick", "decide", "publish")


class AutoscalerMetrics:
    """Registers the autoscaler's metrics on `registry` and reads `server` when scraped."""

    def __init__(self, server: AutoscalerServer, registry: CollectorRegistry) -> None:
        self._server = server
        self.registry = registry
        self.tick_duration = Histogram(
            "ebb_autoscaler_tick_duration_seconds",
            "Time one tick took to decide for every registered revision, or for one slice of"
            " them when ticks are spread (--tick-slices): the longest the loop is held.",
            buckets=CONTROL_BUCKETS_S,
            registry=registry,
        )
        self.tick_cpu = Histogram(
            "ebb_autoscaler_tick_cpu_seconds",
            "CPU time the event-loop thread spent in one tick (or slice); the rest of its"
            " duration it waited for the GIL (gRPC threads) or for a CPU.",
            buckets=CONTROL_BUCKETS_S,
            registry=registry,
        )
        self.round_cpu = Histogram(
            "ebb_autoscaler_round_cpu_seconds",
            "CPU time the event-loop thread spent deciding every registered revision once:"
            " one tick, or the sum of one round of slices when ticks are spread.",
            buckets=CONTROL_BUCKETS_S,
            registry=registry,
        )
        registry.register(_StateCollector(server))

    def watch_stats_port(self, port: StatsPort) -> None:
        """Add the stats port's connections, streams and events to the metrics."""
        self.registry.register(_StatsPortCollector(port))

    def observe_tick(self, seconds: float, cpu_seconds: float) -> None:
        self.tick_duration.observe(seconds)
        self.tick_cpu.observe(cpu_seconds)

    def observe_round(self, cpu_seconds: float) -> None:
        self.round_cpu.observe(cpu_seconds)


class GcPauses:
    """`ebb_autoscaler_gc_pause_seconds{generation}`: how long each garbage collection held
    the GIL, timed by a `gc.callbacks` hook.

    A process-wide hook, so only the process's `main` installs it (`install`/`remove`),
    never an in-process test server. A full (generation 2) collection walks every
    tracked object, thousands per revision: it is the longest stall the event loop has
    after the tick itself, and it lands in whichever tick or stat allocates at the wrong
    moment, so it is measured rather than guessed.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "ebb_autoscaler_gc_pause_seconds",
            "Time one garbage collection took (the event loop waits for it), by generation.",
            ["generation"],
            buckets=CONTROL_BUCKETS_S,
            registry=registry,
        )
        self._by_generation = [self.pauses.labels(str(g)) for g in range(3)]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        if 0 <= generation < len(self._by_generation):
            self._by_generation[generation].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self.callback not in gc.callbacks:
            gc.callbacks.append(self.callback)

    def remove(self) -> None:
        if self.callback in gc.callbacks:
            gc.callbacks.remove(self.callback)


def _families() -> dict[str, Metric]:
    def gauge(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=[*REVISION_LABELS, *extra])

    return {
        "desired": gauge(
            "ebb_autoscaler_desired_instances",
            "Instances the latest decision asks for (scale-to-zero timing applied; -1 = not decided yet).",
        ),
        "actual": gauge(
            "ebb_autoscaler_actual_instances",
            "Ready instances, as the controller last registered them.",
        ),
        "stable_c": gauge(
            "ebb_autoscaler_stable_concurrency",
            "Average concurrency over the stable window (revisions scaled on concurrency).",
        ),
        "panic_c": gauge(
            "ebb_autoscaler_panic_concurrency",
            "Average concurrency over the panic window (revisions scaled on concurrency).",
        ),
        "stable_r": gauge(
            "ebb_autoscaler_stable_requests_per_second",
            "Average requests per second over the stable window (revisions scaled on rps).",
        ),
        "panic_r": gauge(
            "ebb_autoscaler_panic_requests_per_second",
            "Average requests per second over the panic window (revisions scaled on rps).",
        ),
        "rps": gauge(
            "ebb_autoscaler_requests_per_second",
            "Requests per second in the last complete second before the latest decision.",
        ),
        "target": gauge(
            "ebb_autoscaler_target_per_instance",
            "What one instance should carry of the revision's metric (target x utilization).",
            "metric",
        ),
        "panic": gauge(
            "ebb_autoscaler_panic_mode",
            "1 while the revision is in panic mode, else 0.",
        ),
        "ebc": gauge(
            "ebb_autoscaler_excess_burst_capacity",
            "Excess burst capacity; negative keeps the activator in the request path.",
        ),
        "revisions": GaugeMetricFamily(
            "ebb_autoscaler_revisions", "Revisions registered with the autoscaler."
        ),
        "watchers": GaugeMetricFamily(
            "ebb_autoscaler_decision_watchers", "Open WatchDecisions streams."
        ),
        "received": CounterMetricFamily(
            "ebb_autoscaler_stats_received",
            "Stats received on StatsService.StreamStats, accepted or dropped.",
        ),
        "dropped": CounterMetricFamily(
            "ebb_autoscaler_stats_dropped",
            "Stats dropped, by reason.",
            labels=["reason"],
        ),
        "errors": CounterMetricFamily(
            "ebb_autoscaler_errors",
            "Failed steps of the control loop (logged and skipped), by stage.",
            labels=["stage"],
        ),
    }


class _StateCollector:
    """A prometheus_client custom collector over an AutoscalerServer."""

    def __init__(self, server: AutoscalerServer) -> None:
        self._server = server

    def describe(self) -> Iterator[Metric]:
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        server = self._server
        scaler = server.scaler
        families = _families()
        verdicts = scaler.latest()
        ready = server.ready_instances()
        for verdict in verdicts:
            labels = list(verdict.key)
            families["desired"].add_metric(labels, verdict.desired)
            families["actual"].add_metric(labels, ready.get(verdict.key, 0))
            if verdict.metric == RPS:
                families["stable_r"].add_metric(labels, verdict.stable_value)
                families["panic_r"].add_metric(labels, verdict.panic_value)
            else:
                families["stable_c"].add_metric(labels, verdict.stable_value)
                families["panic_c"].add_metric(labels, verdict.panic_value)
            families["rps"].add_metric(labels, verdict.rps)
            config = scaler.config(verdict.key)
            if config is not None:
                families["target"].add_metric([*labels, config.metric], config.target_value)
            families["panic"].add_metric(labels, 1 if verdict.panic else 0)
            families["ebc"].add_metric(labels, verdict.ebc)
        families["revisions"].add_metric([], len(scaler.keys()))
        families["watchers"].add_metric([], server.watcher_count)

        collector = scaler.collector
        dropped = dict(collector.dropped)
        families["received"].add_metric([], collector.accepted + sum(dropped.values()))
        for reason in (*DROP_REASONS, INTERNAL_ERROR):
            families["dropped"].add_metric([reason], dropped.pop(reason, 0))
        for reason, count in sorted(dropped.items()):  # a reason added later, still shown
            families["dropped"].add_metric([reason], count)
        counters = dict(server.counters)
        for stage in ERROR_STAGES:
            families["errors"].add_metric([stage], counters.get(f"{stage}_errors", 0))
        return iter(families.values())


class _StatsPortCollector:
    """The HTTP/2 stats port (`statsport.StatsPort`), read at scrape time."""

    def __init__(self, port: StatsPort) -> None:
        self._port = port

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "ebb_autoscaler_stats_port_connections", "Open connections on the stats port."
            ),
            GaugeMetricFamily(
                "ebb_autoscaler_stats_port_streams", "Open StreamStats streams on the stats port."
            ),
            CounterMetricFamily(
                "ebb_autoscaler_stats_port_events",
                "Stats port events: streams opened; streams answered with a gRPC error"
                " (grpc_status_N) or an HTTP error (http_N); streams reset and connections"
                " closed with GOAWAY, by HTTP/2 error code; connections that never sent the"
                " HTTP/2 preface.",
                labels=["event"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        port = self._port
        connections, streams, events = self._families()
        connections.add_metric([], len(port.connections))
        streams.add_metric([], port.open_streams)
        counters = dict(port.counters)
        counters.setdefault("streams", 0)
        for event, count in sorted(counters.items()):
            events.add_metric([event], count)
        return iter((connections, streams, events))
