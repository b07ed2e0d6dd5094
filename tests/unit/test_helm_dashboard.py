"""The chart's Grafana dashboard queries metrics that exist: every `ebb_*` name in its
expressions is listed in docs/observability.md and exported by the service it names.
A renamed metric otherwise leaves a panel silently empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ebb.activator.metrics import ActivatorCollector
from ebb.autoscaler.metrics import _StateCollector
from ebb.queue.metrics import QueueCollector

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "ebb" / "dashboards" / "ebb-overview.json"
DOCS = REPO / "docs" / "observability.md"
# A histogram X is queried as X_bucket, X_sum or X_count; a counter X as X_total.
_SERIES_SUFFIX = re.compile(r"_(bucket|sum|count|total)$")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\bebb_[a-z_]+", expr)}


def documented_metrics() -> set[str]:
    """The names in the first column of the docs' metric tables."""
    return set(re.findall(r"^\| `(ebb_[a-z_]+)` \|", DOCS.read_text(), re.MULTILINE))


def family(series: str) -> str:
    """The family a series name belongs to (prometheus_client's names: no `_total`)."""
    return _SERIES_SUFFIX.sub("", series)


def exported_families() -> set[str]:
    """Family names the data plane and the autoscaler describe (without any traffic)."""
    collectors = [
        QueueCollector(None, "default", "r"),
        ActivatorCollector(None),
        _StateCollector(None),
    ]
    return {metric.name for collector in collectors for metric in collector.describe()}


def test_the_dashboard_queries_the_main_metrics():
    names = {family(name) for name in dashboard_metrics()}
    assert {
        "ebb_queue_requests",
        "ebb_queue_request_duration_seconds",
        "ebb_autoscaler_desired_instances",
    } <= names


@pytest.mark.parametrize("name", sorted(dashboard_metrics()))
def test_every_metric_in_the_dashboard_is_documented(name):
    documented = documented_metrics()
    assert name in documented or family(name) in {family(d) for d in documented}, name


@pytest.mark.parametrize("name", sorted(dashboard_metrics()))
def test_every_metric_in_the_dashboard_is_exported(name):
    assert family(name) in exported_families(), name


def test_the_docs_tables_are_read():
    documented = documented_metrics()
    assert "ebb_queue_requests_total" in documented and len(documented) > 30
