"""The autoscaler's /metrics, from a real `python -m ebb.autoscaler` process.

The process is driven over gRPC as the controller and a queue would drive it: register a
revision, stream stats, unregister; each step shows on /metrics, read with the Prometheus
text parser.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

WAIT_S = 20.0  # safety net only: every wait ends as soon as its condition holds
REV = pb.RevisionKey(namespace="default", name="hello-00001")
LABELS = {"namespace": "default", "revision": "hello-00001"}
LISTED = (
    "ebb_autoscaler_desired_instances",
    "ebb_autoscaler_actual_instances",
    "ebb_autoscaler_stable_concurrency",
    "ebb_autoscaler_panic_concurrency",
    "ebb_autoscaler_panic_mode",
    "ebb_autoscaler_excess_burst_capacity",
    "ebb_autoscaler_requests_per_second",
    "ebb_autoscaler_target_per_instance",
    "ebb_autoscaler_stats_received",
    "ebb_autoscaler_stats_dropped",
    "ebb_autoscaler_tick_duration_seconds",
    "ebb_autoscaler_errors",
    "ebb_autoscaler_revisions",
    "ebb_autoscaler_decision_watchers",
)


def _scrape(address: str) -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def _sample(scraped, family, name=None, **labels):
    return scraped[family].get((name or family, tuple(sorted(labels.items()))))


async def _until(predicate, what: str):
    """Poll `predicate` (run off the loop: it may do blocking HTTP) until it is truthy."""
    for _ in range(int(WAIT_S / 0.05)):
        if result := await asyncio.to_thread(predicate):
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def autoscaler(tmp_path):
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EBB_", "OTEL_"))}
    with (tmp_path / "autoscaler.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebb.autoscaler",
            "--grpc-port",
            "0",
            "--stats-port",
            "0",
            "--metrics-port",
            "0",
            "--tick-interval-s",
            "0.1",
            "--ready-file",
            str(ready),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        await _until(lambda: ready.exists() or proc.returncode is not None, "the ready file")
        assert proc.returncode is None, (tmp_path / "autoscaler.log").read_text()
        yield proc, json.loads(ready.read_text())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_metrics_follow_registration_and_stats(autoscaler):
    proc, info = autoscaler
    host, port = info["metrics"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and info["metrics"] != info["grpc"]

    scraped = await asyncio.to_thread(_scrape, info["metrics"])
    for name in LISTED:
        assert name in scraped, name
    assert _sample(scraped, "ebb_autoscaler_stats_received", "ebb_autoscaler_stats_received_total") == 0
    assert _sample(scraped, "ebb_autoscaler_revisions") == 0

    async with grpc.aio.insecure_channel(info["grpc"]) as channel:
        scaling = pb_grpc.ScalingServiceStub(channel)
        await scaling.RegisterRevision(
            pb.RegisterRevisionRequest(
                spec=pb.AutoscalingSpec(revision=REV, reachable=True, ready_instances=1)
            ),
            timeout=WAIT_S,
        )
        # A queue's stat stream: two good stats and one for a revision nobody registered.
        call = pb_grpc.StatsServiceStub(channel).StreamStats()
        good = pb.Stat(instance="i-1", revision=REV, average_concurrency=3.0, request_count=6)
        stray = pb.Stat(instance="i-9", revision=pb.RevisionKey(namespace="default", name="nope"))
        for batch in ([good], [good, stray]):
            await asyncio.wait_for(call.write(pb.StreamStatsRequest(stats=batch)), WAIT_S)

        def counted():
            s = _scrape(info["metrics"])
            received = _sample(s, "ebb_autoscaler_stats_received", "ebb_autoscaler_stats_received_total")
            stable = _sample(s, "ebb_autoscaler_stable_concurrency", **LABELS)
            return s if received == 3 and stable else None

        scraped = await _until(counted, "the stats on /metrics")
        dropped = "ebb_autoscaler_stats_dropped_total"
        assert _sample(scraped, "ebb_autoscaler_stats_dropped", dropped, reason="unknown_revision") == 1
        assert _sample(scraped, "ebb_autoscaler_stats_dropped", dropped, reason="negative") == 0
        assert _sample(scraped, "ebb_autoscaler_actual_instances", **LABELS) == 1
        assert _sample(scraped, "ebb_autoscaler_desired_instances", **LABELS) >= 1
        assert _sample(scraped, "ebb_autoscaler_panic_mode", **LABELS) in (0, 1)
        assert _sample(scraped, "ebb_autoscaler_revisions") == 1
        ticks = _sample(
            scraped, "ebb_autoscaler_tick_duration_seconds", "ebb_autoscaler_tick_duration_seconds_count"
        )
        assert ticks >= 1
        await call.done_writing()
        assert (await asyncio.wait_for(call, WAIT_S)).accepted == 2

        await scaling.UnregisterRevision(pb.UnregisterRevisionRequest(revision=REV), timeout=WAIT_S)
        scraped = await asyncio.to_thread(_scrape, info["metrics"])
        assert _sample(scraped, "ebb_autoscaler_desired_instances", **LABELS) is None
        assert scraped["ebb_autoscaler_desired_instances"] == {}
        assert _sample(scraped, "ebb_autoscaler_revisions") == 0

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    with pytest.raises(urllib.error.URLError):  # the metrics port closed with the process
        await asyncio.to_thread(_scrape, info["metrics"])


async def test_only_the_metrics_path_is_served(autoscaler):
    _, info = autoscaler
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(urllib.request.urlopen, f"http://{info['metrics']}/", timeout=5)
    assert err.value.code == 404
    err.value.close()
