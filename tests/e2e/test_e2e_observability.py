"""`ebb up` end to end: every component and every queue serves Prometheus metrics at the
address in its ready file, the text parses, it carries the documented names, and the
counters move when traffic goes through the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import ACTIVATOR_METRIC_NAMES, QUEUE_METRIC_NAMES, SAMPLE_APP, wait_until
from mesh import Mesh
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

REQUESTS = 20
# Family names (a counter's family is its name without `_total`), as docs/observability.md lists them.
NAMES = {
    "webhook": {"ebb_webhook_admissions"},
    "autoscaler": {
        "ebb_autoscaler_desired_instances",
        "ebb_autoscaler_actual_instances",
        "ebb_autoscaler_stats_received",
        "ebb_autoscaler_stats_dropped",
        "ebb_autoscaler_tick_duration_seconds",
        "ebb_autoscaler_revisions",
    },
    "controller": {
        "ebb_controller_reconciles",
        "ebb_controller_reconcile_duration_seconds",
        "ebb_controller_xds_pushes",
        "ebb_controller_xds_acks",
        "ebb_controller_instances_started",
    },
    "activator": ACTIVATOR_METRIC_NAMES,
    "queue": QUEUE_METRIC_NAMES,
}


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path / "ebb")
    with m.running():
        yield m


def scrape(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def total(families: dict, family: str, sample: str, **labels) -> float:
    """Sum of the samples named `sample` whose labels include `labels`."""
    return sum(
        s.value
        for s in families[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to local port `port`."""
    inodes = set()
    # gRPC's sockets are dual-stack: 127.0.0.1 shows in tcp6 as ::ffff:127.0.0.1.
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # rem_address is HEXIP:HEXPORT; st 01 = ESTABLISHED; field 9 is the socket's inode.
            if fields[3] == "01" and fields[2].endswith(f":{port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            if os.readlink(fd) in inodes:
                return True
    return False


def test_every_service_and_queue_serves_metrics_and_counters_move(mesh):
    run = mesh.data_dir / "run"
    ready = {path.stem: json.loads(path.read_text()) for path in run.glob("*.json")}
    assert {"webhook", "autoscaler", "controller", "activator"} <= set(ready)
    published = json.loads((mesh.data_dir / "mesh.json").read_text())
    before = {}
    for name in ("webhook", "autoscaler", "controller", "activator"):
        assert published[f"{name}_metrics"] == ready[name]["metrics"]  # `ebb up` passes them on
        before[name] = scrape(ready[name]["metrics"])
        assert NAMES[name] <= set(before[name]), name

    mesh.ebb("service", "create", "hello", "--cmd", f"{sys.executable} {SAMPLE_APP}", "--wait", "--wait-timeout", "60")
    wait_until(lambda: mesh.get("hello.default.localhost")[0] == 200, 30, message="200 via Envoy")
    queues = wait_until(lambda: list((run / "queues").glob("*.json")), 10, message="the queue's ready file")
    (queue_ready,) = [json.loads(path.read_text()) for path in queues]
    queue_before = scrape(queue_ready["metrics"])
    assert NAMES["queue"] <= set(queue_before)
    # The queue and the activator stream their stats to the autoscaler's stats port.
    stats_port = mesh.ports["autoscaler-stats"]
    assert published["autoscaler_stats"] == ready["autoscaler"]["stats"]
    assert published["autoscaler_stats"] == f"127.0.0.1:{stats_port}"
    (instance,) = json.loads((mesh.data_dir / "instances.json").read_text())
    for pid in (instance["queue_pid"], ready["activator"]["pid"]):
        wait_until(lambda p=pid: connected_to(p, stats_port), 10, message=f"{pid} streaming stats")

    for _ in range(REQUESTS):
        assert mesh.get("hello.default.localhost") == (200, "Hello from hello-00001!\n")

    rev = {"namespace": "default", "revision": "hello-00001"}
    queue_after = scrape(queue_ready["metrics"])
    served = total(queue_after, "ebb_queue_requests", "ebb_queue_requests_total", response_class="2xx", **rev)
    assert served - total(queue_before, "ebb_queue_requests", "ebb_queue_requests_total", **rev) >= REQUESTS
    count = "ebb_queue_request_duration_seconds_count"
    assert total(queue_after, "ebb_queue_request_duration_seconds", count, **rev) >= REQUESTS

    after = {name: scrape(ready[name]["metrics"]) for name in before}
    # While the revision has one instance, short of the default target burst capacity
    # (211), the activator stays in the path: every request went through it.
    revisions = json.loads(mesh.ebb("revision", "list", "-o", "json").stdout)
    assert revisions[0]["status"]["servingMode"] == "proxy"
    forwarded = total(after["activator"], "ebb_activator_requests", "ebb_activator_requests_total", **rev)
    assert forwarded >= REQUESTS
    assert total(after["activator"], "ebb_activator_instances", "ebb_activator_instances", **rev) == 1
    moved = {
        "webhook": ("ebb_webhook_admissions", "ebb_webhook_admissions_total"),
        "autoscaler": ("ebb_autoscaler_stats_received", "ebb_autoscaler_stats_received_total"),
        "controller": ("ebb_controller_reconciles", "ebb_controller_reconciles_total"),
    }
    for name, (family, sample) in moved.items():
        # Stats stream in each second: the autoscaler's count moves within a period or two.
        wait_until(
            lambda n=name, f=family, s=sample: total(scrape(ready[n]["metrics"]), f, s) > total(before[n], f, s),
            15,
            message=f"{name}'s {sample} to move",
        )

    status = json.loads(mesh.ebb("status", "-o", "json").stdout)["components"]
    for name in ("webhook", "autoscaler", "controller", "activator"):
        assert status[f"{name}_metrics"]["status"] == "SERVING"
    assert status["autoscaler_stats"]["status"] == "LISTENING"
