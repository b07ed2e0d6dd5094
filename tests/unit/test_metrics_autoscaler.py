"""The autoscaler's metrics, read from a real AutoscalerServer driven by hand (no sockets)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.autoscaler import metrics as am
from ebb.autoscaler import server as srv
from ebb.autoscaler.collector import DROP_REASONS
from ebb.autoscaler.multiscaler import RevisionSpec
from ebb.autoscaler.server import AutoscalerServer
from ebb.autoscaler.settings import AutoscalerSettings

A = "autoscaling.knative.dev/"
KEY = ("default", "hello-00001")
LABELS = {"namespace": "default", "revision": "hello-00001"}
PER_REVISION = (
    "ebb_autoscaler_desired_instances",
    "ebb_autoscaler_actual_instances",
    "ebb_autoscaler_panic_mode",
    "ebb_autoscaler_excess_burst_capacity",
    "ebb_autoscaler_requests_per_second",
    "ebb_autoscaler_target_per_instance",
)
LISTED = (
    *PER_REVISION,
    "ebb_autoscaler_stable_concurrency",
    "ebb_autoscaler_panic_concurrency",
    "ebb_autoscaler_stable_requests_per_second",
    "ebb_autoscaler_panic_requests_per_second",
    "ebb_autoscaler_stats_received",
    "ebb_autoscaler_stats_dropped",
    "ebb_autoscaler_tick_duration_seconds",
    "ebb_autoscaler_errors",
    "ebb_autoscaler_revisions",
    "ebb_autoscaler_decision_watchers",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(clock):
    return AutoscalerServer(AutoscalerSettings(), clock=clock, wall_clock=lambda: 1.7e9)


def stat(concurrency=5.0, requests=10.0, instance="i-1", name=KEY[1]):
    return pb.Stat(
        instance=instance,
        revision=pb.RevisionKey(namespace=KEY[0], name=name),
        average_concurrency=concurrency,
        request_count=requests,
    )


def value(server, name, **labels):
    return server.registry.get_sample_value(name, labels)


def families(server):
    text = generate_latest(server.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exposition_parses_and_lists_every_metric(server):
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=1))
    found = families(server)
    for name in LISTED:
        assert name in found, name
    assert found["ebb_autoscaler_stats_received"].type == "counter"
    assert found["ebb_autoscaler_tick_duration_seconds"].type == "histogram"
    assert found["ebb_autoscaler_desired_instances"].type == "gauge"


def test_a_new_revision_before_any_data(server):
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=0))
    assert value(server, "ebb_autoscaler_desired_instances", **LABELS) == -1
    assert value(server, "ebb_autoscaler_actual_instances", **LABELS) == 0
    assert value(server, "ebb_autoscaler_panic_mode", **LABELS) == 0
    # EBC before data: initial scale 1 x 100 - TBC 211 = -111.
    assert value(server, "ebb_autoscaler_excess_burst_capacity", **LABELS) == -111
    # Target 100 x utilization 0.7.
    assert value(server, "ebb_autoscaler_target_per_instance", metric="concurrency", **LABELS) == 70
    assert value(server, "ebb_autoscaler_revisions") == 1


def test_a_decision_shows_up_in_the_gauges(server, clock):
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=2))
    for second in range(3):
        clock.now = 1000.0 + second
        server.take_stats([stat(concurrency=140.0, instance="i-1"), stat(concurrency=0, instance="i-2")])
    clock.now = 1003.0
    server.tick()
    verdict = server.scaler.latest()[0]
    assert value(server, "ebb_autoscaler_desired_instances", **LABELS) == verdict.desired > 0
    assert value(server, "ebb_autoscaler_actual_instances", **LABELS) == 2
    assert value(server, "ebb_autoscaler_stable_concurrency", **LABELS) == verdict.stable_value
    assert value(server, "ebb_autoscaler_panic_concurrency", **LABELS) == verdict.panic_value > 0
    assert value(server, "ebb_autoscaler_panic_mode", **LABELS) == (1 if verdict.panic else 0)
    assert value(server, "ebb_autoscaler_excess_burst_capacity", **LABELS) == verdict.ebc
    # A concurrency revision has no rps pair.
    assert value(server, "ebb_autoscaler_stable_requests_per_second", **LABELS) is None
    assert value(server, "ebb_autoscaler_tick_duration_seconds_count") == 1


def test_panic_mode_is_one_while_panicking(server, clock):
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=1))
    clock.now = 1000.0
    server.take_stats([stat(concurrency=1000.0)])  # 1000 / 70 per instance >> 2 x 1 ready
    clock.now = 1001.0
    server.tick()
    assert server.scaler.latest()[0].panic
    assert value(server, "ebb_autoscaler_panic_mode", **LABELS) == 1


def test_rps_revision_reports_the_rps_pair(server, clock):
    server.register(
        RevisionSpec(*KEY, annotations={A + "metric": "rps"}, reachable=True, ready_instances=1)
    )
    clock.now = 1000.0
    server.take_stats([stat(concurrency=1.0, requests=50.0)])
    clock.now = 1001.0
    server.tick()
    assert value(server, "ebb_autoscaler_stable_requests_per_second", **LABELS) == pytest.approx(50)
    assert value(server, "ebb_autoscaler_panic_requests_per_second", **LABELS) == pytest.approx(50)
    assert value(server, "ebb_autoscaler_requests_per_second", **LABELS) == pytest.approx(50)
    assert value(server, "ebb_autoscaler_stable_concurrency", **LABELS) is None
    assert value(server, "ebb_autoscaler_target_per_instance", metric="rps", **LABELS) == pytest.approx(140)


def test_stats_received_and_dropped_by_reason(server):
    server.register(RevisionSpec(*KEY, reachable=True))
    for reason in (*DROP_REASONS, "internal_error"):
        assert value(server, "ebb_autoscaler_stats_dropped_total", reason=reason) == 0
    assert value(server, "ebb_autoscaler_stats_received_total") == 0
    server.take_stats([stat(), stat(name="unknown"), stat(concurrency=-1.0), pb.Stat()])
    assert value(server, "ebb_autoscaler_stats_received_total") == 4
    assert value(server, "ebb_autoscaler_stats_dropped_total", reason="unknown_revision") == 1
    assert value(server, "ebb_autoscaler_stats_dropped_total", reason="negative") == 1
    assert value(server, "ebb_autoscaler_stats_dropped_total", reason="missing_revision") == 1


def test_absurd_and_undecodable_are_reasons_of_their_own(server):
    server.register(RevisionSpec(*KEY, reachable=True))
    tiny_period = stat()
    tiny_period.period_seconds = 1e-300  # 10 requests in it: 1e301 requests a second
    server.take_stats([stat(concurrency=1e300), tiny_period])
    server.drop_undecodable()  # what StreamStats does with a message that does not decode
    assert value(server, "ebb_autoscaler_stats_dropped_total", reason="out_of_range") == 2
    assert value(server, "ebb_autoscaler_stats_dropped_total", reason="undecodable") == 1
    assert value(server, "ebb_autoscaler_stats_received_total") == 3


def test_internal_error_reason_matches_the_server(server):
    assert am.INTERNAL_ERROR == srv.INTERNAL_ERROR


def test_unregistered_revisions_lose_their_series(server):
    other = ("default", "hello-00002")
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=1))
    server.register(RevisionSpec(*other, reachable=True, ready_instances=3))
    assert value(server, "ebb_autoscaler_actual_instances", namespace="default", revision="hello-00002") == 3
    server.unregister(other)
    text = generate_latest(server.registry).decode()
    assert "hello-00002" not in text
    assert "hello-00001" in text
    assert value(server, "ebb_autoscaler_revisions") == 1


def test_errors_by_stage(server):
    server.counters["tick_errors"] += 2
    assert value(server, "ebb_autoscaler_errors_total", stage="tick") == 2
    assert value(server, "ebb_autoscaler_errors_total", stage="decide") == 0
    server.counters["publish_errors"] += 1
    assert value(server, "ebb_autoscaler_errors_total", stage="publish") == 1


def test_each_server_has_its_own_registry(clock):
    # Two in one process (tests do this) must not collide on series names.
    a = AutoscalerServer(AutoscalerSettings(), clock=clock)
    b = AutoscalerServer(AutoscalerSettings(), clock=clock)
    a.register(RevisionSpec(*KEY))
    assert value(a, "ebb_autoscaler_revisions") == 1
    assert value(b, "ebb_autoscaler_revisions") == 0


def test_each_tick_records_its_duration_and_cpu_time(server):
    server.register(RevisionSpec(*KEY, reachable=True, ready_instances=1))
    server.tick()
    server.tick()
    for name in ("ebb_autoscaler_tick_duration_seconds", "ebb_autoscaler_tick_cpu_seconds"):
        assert value(server, f"{name}_count") == 2
        assert value(server, f"{name}_sum") >= 0
