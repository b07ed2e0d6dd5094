"""The controller's metrics class: reconciles, instance churn, xDS counters read at scrape."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebb.controller.metrics import ControllerMetrics
from ebb.controller.xds import AdsServer

NAMES = {
    "ebb_controller_reconciles": "counter",
    "ebb_controller_reconcile_duration_seconds": "histogram",
    "ebb_controller_xds_pushes": "counter",
    "ebb_controller_xds_acks": "counter",
    "ebb_controller_xds_nacks": "counter",
    "ebb_controller_xds_streams": "gauge",
    "ebb_controller_instances_started": "counter",
    "ebb_controller_instances_stopped": "counter",
}


class FakeAds:
    def __init__(self) -> None:
        self.counts = {
            "pushes": {"cds": 0, "eds": 0, "lds": 0, "rds": 0},
            "acks": {"cds": 0, "eds": 0, "lds": 0, "rds": 0},
            "nacks": {"cds": 0, "eds": 0, "lds": 0, "rds": 0},
            "streams": 0,
        }

    def stats(self):
        return self.counts


class Ticks:
    def __init__(self, *values: float) -> None:
        self._values = list(values)

    def __call__(self) -> float:
        return self._values.pop(0)


def value(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def test_exposition_parses_with_every_name():
    m = ControllerMetrics(FakeAds())
    m.observe_reconcile("pass", "success", 0.01)
    text = generate_latest(m.registry).decode()
    found = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in NAMES.items():
        assert found.get(name) == kind, name


def test_observe_reconcile():
    m = ControllerMetrics()
    m.observe_reconcile("pass", "success", 0.02)
    m.observe_reconcile("pass", "error", 0.5)
    m.observe_reconcile("Route", "success", -1.0)  # a clock step never goes negative
    assert value(m, "ebb_controller_reconciles_total", kind="pass", result="success") == 1
    assert value(m, "ebb_controller_reconciles_total", kind="pass", result="error") == 1
    assert value(m, "ebb_controller_reconcile_duration_seconds_count", kind="pass") == 2
    assert value(m, "ebb_controller_reconcile_duration_seconds_sum", kind="pass") == pytest.approx(0.52)
    assert value(m, "ebb_controller_reconcile_duration_seconds_sum", kind="Route") == 0


def test_reconcile_context_manager_times_and_counts():
    m = ControllerMetrics()
    with m.reconcile("pass", clock=Ticks(10.0, 10.25)):
        pass
    with pytest.raises(RuntimeError), m.reconcile("pass", clock=Ticks(20.0, 21.0)):
        raise RuntimeError("boom")
    assert value(m, "ebb_controller_reconciles_total", kind="pass", result="success") == 1
    assert value(m, "ebb_controller_reconciles_total", kind="pass", result="error") == 1
    assert value(m, "ebb_controller_reconcile_duration_seconds_sum", kind="pass") == pytest.approx(1.25)


def test_instances_started_and_stopped():
    m = ControllerMetrics()
    m.instance_started()
    m.instance_started()
    m.instance_stopped()
    assert value(m, "ebb_controller_instances_started_total") == 2
    assert value(m, "ebb_controller_instances_stopped_total") == 1


def test_xds_counters_are_read_at_scrape_time():
    ads = FakeAds()
    m = ControllerMetrics(ads)
    assert value(m, "ebb_controller_xds_pushes_total", type="cds") == 0
    ads.counts["pushes"]["cds"] = 3
    ads.counts["acks"]["rds"] = 2
    ads.counts["nacks"]["eds"] = 1
    ads.counts["streams"] = 1
    assert value(m, "ebb_controller_xds_pushes_total", type="cds") == 3
    assert value(m, "ebb_controller_xds_acks_total", type="rds") == 2
    assert value(m, "ebb_controller_xds_nacks_total", type="eds") == 1
    assert value(m, "ebb_controller_xds_streams") == 1


def test_reads_the_real_ads_server_stats():
    m = ControllerMetrics(AdsServer())
    for type_name in ("cds", "eds", "lds", "rds"):
        assert value(m, "ebb_controller_xds_pushes_total", type=type_name) == 0
    assert value(m, "ebb_controller_xds_streams") == 0


def test_without_ads_there_are_no_xds_series():
    m = ControllerMetrics()
    assert "xds" not in generate_latest(m.registry).decode()
