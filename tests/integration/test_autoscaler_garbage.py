"""A stats stream that sends bytes that are not a StreamStatsRequest ends that stream with an
error; the autoscaler process survives, keeps serving other reporters, and counts the drop."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc


@pytest.fixture
def autoscaler(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--ready-file", str(ready),
         "--tick-interval-s", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 30, message="autoscaler ready"), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _dropped(metrics_address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ebb_autoscaler_stats_dropped_total":
                out[sample.labels.get("reason", "")] = sample.value
    return out


async def test_garbage_stream_and_bad_stats_never_take_the_autoscaler_down(autoscaler):
    info, proc = autoscaler
    async with grpc.aio.insecure_channel(info["grpc"]) as channel:
        # Raw bytes that do not parse as the request message.
        raw = channel.stream_unary(
            "/ebb.api.autoscaler.v1.StatsService/StreamStats",
            request_serializer=None,
            response_deserializer=pb.StreamStatsResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(raw(iter([b"\xff\xff\xff\x0fnot a protobuf"])), 10)

        # Well-formed messages with bad values are dropped one by one, the stream survives.
        scaling = pb_grpc.ScalingServiceStub(channel)
        rev = pb.RevisionKey(namespace="default", name="ok-00001")
        await scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=pb.AutoscalingSpec(revision=rev, reachable=True, ready_instances=1)))
        stats = pb_grpc.StatsServiceStub(channel)
        bad = [
            pb.Stat(instance="i1", revision=rev, average_concurrency=float("nan"), period_seconds=1),
            pb.Stat(instance="i1", revision=rev, average_concurrency=-3, period_seconds=1),
            pb.Stat(instance="i1", revision=pb.RevisionKey(namespace="default", name="unknown"), average_concurrency=1),
            pb.Stat(instance="i1", average_concurrency=1),
        ]
        good = pb.Stat(instance="i1", revision=rev, average_concurrency=5, request_count=5, period_seconds=1)
        reply = await stats.StreamStats(iter([pb.StreamStatsRequest(stats=[*bad, good])]))
        assert (reply.accepted, reply.dropped) == (1, 4)
    assert proc.poll() is None
    dropped = _dropped(info["metrics"])
    assert sum(dropped.values()) >= 4, dropped
