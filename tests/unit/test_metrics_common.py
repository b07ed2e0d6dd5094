"""The --metrics-port convention and per-process registries (no sockets)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebb.common.metrics import metrics_port_flag, new_registry, parse_metrics_port
from ebb.common.settings import SettingsError, read_flags


@pytest.mark.parametrize("component", ["autoscaler", "webhook", "controller", "activator", "queue"])
def test_flag_convention(component):
    flag = metrics_port_flag(component)
    assert flag.name == "metrics-port"
    assert flag.env == f"EBB_{component.upper()}_METRICS_PORT"
    assert flag.default == "0"


def test_flag_from_argv_env_and_default():
    flags = [metrics_port_flag("webhook")]
    assert read_flags("x", flags, [], {})["metrics-port"] == "0"
    assert read_flags("x", flags, [], {"EBB_WEBHOOK_METRICS_PORT": "9102"})["metrics-port"] == "9102"
    raw = read_flags("x", flags, ["--metrics-port", "9200"], {"EBB_WEBHOOK_METRICS_PORT": "9102"})
    assert parse_metrics_port(raw["metrics-port"]) == 9200


@pytest.mark.parametrize(("raw", "port"), [("0", 0), ("", 0), (None, 0), ("9090", 9090), (65535, 65535)])
def test_parse_metrics_port(raw, port):
    assert parse_metrics_port(raw) == port


@pytest.mark.parametrize("raw", ["-1", "65536", "http", "9090x"])
def test_bad_metrics_port_names_the_key(raw):
    with pytest.raises(SettingsError, match="metrics-port"):
        parse_metrics_port(raw)


def test_registries_are_per_process_not_global():
    a, b = new_registry(), new_registry()
    Counter("ebb_test_things_total", "Things.", registry=a).inc()
    Counter("ebb_test_things_total", "Things.", registry=b)  # no duplicate error
    assert a.get_sample_value("ebb_test_things_total") == 1
    assert b.get_sample_value("ebb_test_things_total") == 0
    assert REGISTRY.get_sample_value("ebb_test_things_total") is None
    families = {f.name: f.type for f in text_string_to_metric_families(generate_latest(a).decode())}
    assert families["ebb_test_things"] == "counter"
