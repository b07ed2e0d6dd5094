"""The controller's Prometheus metrics: reconciles, xDS pushes/ACKs/NACKs, instance churn.

`ControllerMetrics(ads)` owns a registry (or uses the one given). Reconciles and instance
starts/stops are counted as they happen by the methods below; the xDS counters are read
from `AdsServer.stats()` when scraped, so the ADS code needs no hook. Scrapes run on the
metrics HTTP thread; `stats()` builds a fresh dict from Counters, which is safe there.

    metrics = ControllerMetrics(ads)
    with metrics.reconcile("pass"):          # result "success", or "error" if it raises
        await controller.reconcile_once()
    metrics.observe_reconcile("Route", "success", 0.004)   # when timed elsewhere
    metrics.instance_started()
    metrics.instance_stopped()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ebb.common.metrics import CONTROL_BUCKETS_S, new_registry

SUCCESS = "success"
ERROR = "error"
XDS_TYPES = ("cds", "eds", "lds", "rds")  # AdsServer.stats() keys, in push order


class ControllerMetrics:
    """The controller's metrics. `ads` is anything with `stats() -> {"pushes": {type: n},
    "acks": ..., "nacks": ..., "streams": n}` (the AdsServer), or None for no xDS series."""

    def __init__(self, ads=None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.reconciles = Counter(
            "ebb_controller_reconciles_total",
            "Reconciles finished, by kind and result (success, error).",
            labelnames=("kind", "result"),
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "ebb_controller_reconcile_duration_seconds",
            "Time one reconcile took, by kind.",
            labelnames=("kind",),
            buckets=CONTROL_BUCKETS_S,
            registry=self.registry,
        )
        self.instances_started = Counter(
            "ebb_controller_instances_started_total",
            "Revision instances started (local: app and queue processes launched).",
            registry=self.registry,
        )
        self.instances_stopped = Counter(
            "ebb_controller_instances_stopped_total",
            "Revision instances stopped (scaled down, failed or removed), once fully gone.",
            registry=self.registry,
        )
        if ads is not None:
            self.registry.register(_XdsCollector(ads.stats))

    def observe_reconcile(self, kind: str, result: str, seconds: float) -> None:
        """Count one reconcile of `kind` ("pass", "Service", ...) with its result and time."""
        self.reconciles.labels(kind=kind, result=result).inc()
        self.reconcile_duration.labels(kind=kind).observe(max(0.0, seconds))

    @contextmanager
    def reconcile(
        self, kind: str, clock: Callable[[], float] = time.perf_counter
    ) -> Iterator[None]:
        """Time the block as one reconcile of `kind`: "error" if it raises (re-raised), else
        "success". Cancellation is not counted."""
        started = clock()
        try:
            yield
        except Exception:
            self.observe_reconcile(kind, ERROR, clock() - started)
            raise
        self.observe_reconcile(kind, SUCCESS, clock() - started)

    def instance_started(self) -> None:
        self.instances_started.inc()

    def instance_stopped(self) -> None:
        self.instances_stopped.inc()


class _XdsCollector:
    """ADS counters by type, read from the AdsServer at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[str, object]]) -> None:
        self._stats = stats

    @staticmethod
    def _families() -> dict[str, Metric]:
        return {
            "pushes": CounterMetricFamily(
                "ebb_controller_xds_pushes",
                "xDS responses sent to Envoy, by type (cds, eds, lds, rds).",
                labels=["type"],
            ),
            "acks": CounterMetricFamily(
                "ebb_controller_xds_acks",
                "xDS responses Envoy ACKed, by type.",
                labels=["type"],
            ),
            "nacks": CounterMetricFamily(
                "ebb_controller_xds_nacks",
                "xDS responses Envoy NACKed (rejected), by type.",
                labels=["type"],
            ),
            "streams": GaugeMetricFamily(
                "ebb_controller_xds_streams", "Open ADS streams (connected Envoys)."
            ),
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        stats = self._stats()
        for key in ("pushes", "acks", "nacks"):
            by_type = dict(stats.get(key) or {})
            for type_name in XDS_TYPES:
                families[key].add_metric([type_name], by_type.pop(type_name, 0))
            for type_name, count in sorted(by_type.items()):
                families[key].add_metric([type_name], count)
        families["streams"].add_metric([], stats.get("streams", 0))
        return iter(families.values())
