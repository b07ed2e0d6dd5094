"""A real autoscaler process against garbage: a stats message that is not a
StreamStatsRequest is dropped and counted and its stream stays open; stats with bad or
absurd values are dropped one by one; load that drives one revision's desired scale past
what can be sent never stops the decisions of the others, nor a new watch."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager

import grpc
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

STREAM_STATS = "/ebb.api.autoscaler.v1.StatsService/StreamStats"
INT32_MAX = 2**31 - 1


@contextmanager
def _autoscaler(tmp_path, *args: str):
    """A real `python -m ebb.autoscaler` on 127.0.0.1, port 0; yields (ready info, proc, log)."""
    ready, log = tmp_path / "ready.json", tmp_path / "autoscaler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ebb.autoscaler",
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--stats-port",
                "0",
                "--ready-file",
                str(ready),
                "--tick-interval-s",
                "0.2",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        info = wait_until(
            lambda: ready.exists() and json.loads(ready.read_text()), 30, message="autoscaler ready"
        )
        yield info, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def autoscaler(tmp_path):
    with _autoscaler(tmp_path) as started:
        yield started


def _samples(metrics_address: str, name: str, label: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels.get(label, "")] = sample.value
    return out


def _dropped(metrics_address: str) -> dict[str, float]:
    return _samples(metrics_address, "ebb_autoscaler_stats_dropped_total", "reason")


def _received(metrics_address: str) -> float:
    return _samples(metrics_address, "ebb_autoscaler_stats_received_total", "")[""]


def _errors(metrics_address: str) -> dict[str, float]:
    return _samples(metrics_address, "ebb_autoscaler_errors_total", "stage")


def _bad_log_lines(log) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["msg"] for line in lines if line["level"] == "error" or "exc" in line]


def _stat(name: str, concurrency: float = 5.0, instance: str = "i1", **kw) -> pb.Stat:
    rev = pb.RevisionKey(namespace="default", name=name)
    return pb.Stat(instance=instance, revision=rev, average_concurrency=concurrency, **kw)


async def _register(channel, *names: str, **annotations: str) -> None:
    scaling = pb_grpc.ScalingServiceStub(channel)
    for name in names:
        rev = pb.RevisionKey(namespace="default", name=name)
        spec = pb.AutoscalingSpec(
            revision=rev, reachable=True, ready_instances=1, annotations=annotations
        )
        await scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec))


# Both listeners take stats: the gRPC port (grpcio) and the stats port (Ebb's HTTP/2).
ON_BOTH_PORTS = pytest.mark.parametrize("port", ["grpc", "stats"])


@ON_BOTH_PORTS
async def test_undecodable_messages_are_counted_and_the_stream_stays_open(autoscaler, port):
    info, proc, log = autoscaler
    metrics = info["metrics"]
    async with (
        grpc.aio.insecure_channel(info["grpc"]) as control,
        grpc.aio.insecure_channel(info[port]) as channel,
    ):
        await _register(control, "ok-00001")
        raw = channel.stream_unary(
            STREAM_STATS,
            request_serializer=None,
            response_deserializer=pb.StreamStatsResponse.FromString,
        )
        good = pb.StreamStatsRequest(stats=[_stat("ok-00001", request_count=5, period_seconds=1)])
        garbage = [
            b"\xff\xff\xff\x0fnot a protobuf",
            b"\x0a\x05\x0a\x03abc\xff",
            b"\x0a\xff\xff\xff\xff\x0f",
        ]
        sent: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def messages():
            while (message := await sent.get()) is not None:
                yield message

        call = raw(messages())
        # Garbage first, on a live stream: it is counted while the stream is still open.
        await sent.put(garbage[0])
        await asyncio.to_thread(
            wait_until,
            lambda: _dropped(metrics).get("undecodable") == 1,
            10,
            message="undecodable counted",
        )
        assert not call.done()
        for message in (
            good.SerializeToString(),
            garbage[1],
            good.SerializeToString(),
            garbage[2],
            None,
        ):
            await sent.put(message)
        reply = await asyncio.wait_for(call, 10)
        assert (reply.accepted, reply.dropped) == (2, 3)
    assert proc.poll() is None
    dropped = _dropped(metrics)
    assert dropped["undecodable"] == 3
    assert sum(dropped.values()) == 3
    assert _received(metrics) == 5  # 2 stats + 3 messages that held who knows how many
    # One warning for the stream, no error and no traceback.
    assert _bad_log_lines(log) == []
    warnings = [
        line for line in log.read_text().splitlines() if "undecodable stats message dropped" in line
    ]
    assert len(warnings) == 1


@ON_BOTH_PORTS
async def test_bad_and_absurd_values_are_dropped_one_by_one(autoscaler, port):
    info, proc, log = autoscaler
    async with (
        grpc.aio.insecure_channel(info["grpc"]) as control,
        grpc.aio.insecure_channel(info[port]) as channel,
    ):
        await _register(control, "ok-00001")
        stats = pb_grpc.StatsServiceStub(channel)
        bad = [
            _stat("ok-00001", float("nan"), period_seconds=1),
            _stat("ok-00001", -3, period_seconds=1),
            _stat("unknown", 1),
            pb.Stat(instance="i1", average_concurrency=1),
            _stat("ok-00001", 1e300),
            _stat("ok-00001", 1.0, request_count=1e308),
            _stat("ok-00001", 1.0, request_count=1.0, period_seconds=1e-300),
            _stat("ok-00001", 1.0, period_seconds=1e9),
        ]
        good = _stat("ok-00001", 5, request_count=5, period_seconds=1)
        reply = await stats.StreamStats(iter([pb.StreamStatsRequest(stats=[*bad, good])]))
        assert (reply.accepted, reply.dropped) == (1, 8)
    assert proc.poll() is None
    dropped = {reason: n for reason, n in _dropped(info["metrics"]).items() if n}
    assert dropped == {
        "not_finite": 1,
        "negative": 1,
        "unknown_revision": 1,
        "missing_revision": 1,
        "out_of_range": 4,
    }
    assert _bad_log_lines(log) == []


async def test_load_past_int32_does_not_stop_the_other_revisions(tmp_path):
    # Thirty reporters at the concurrency bound on a revision with the smallest target
    # value (0.01) and no limit to the scale-up rate: 3e7 / 0.01 = 3e9 is past int32, so
    # the decider must clamp it for the decision to be sent at all. Meanwhile an absurd
    # stat for that revision is dropped, and the other revision is decided as usual.
    config = tmp_path / "config.yaml"
    config.write_text("autoscaler:\n  max-scale-up-rate: 1e300\n")
    with _autoscaler(tmp_path, "--config", str(config)) as (info, proc, log):
        async with grpc.aio.insecure_channel(info["grpc"]) as channel:
            await _register(channel, "calm-00001")
            await _register(channel, "huge-00001", **{"autoscaling.knative.dev/target": "0.01"})
            scaling = pb_grpc.ScalingServiceStub(channel)
            watch = scaling.WatchDecisions(pb.WatchDecisionsRequest(namespace="default"))
            seen: dict[str, int] = {}

            async def read() -> None:
                async for response in watch:
                    for decision in response.decisions:
                        seen[decision.revision.name] = decision.desired_scale

            reader = asyncio.create_task(read())
            huge = [_stat("huge-00001", 1e6, instance=f"i{i}") for i in range(30)]
            reply = await pb_grpc.StatsServiceStub(channel).StreamStats(
                iter(
                    [
                        pb.StreamStatsRequest(
                            stats=[_stat("huge-00001", 1e300), *huge, _stat("calm-00001", 3.0)]
                        )
                    ]
                )
            )
            assert (reply.accepted, reply.dropped) == (31, 1)
            for _ in range(100):
                if seen.get("huge-00001") == INT32_MAX and seen.get("calm-00001") == 1:
                    break
                await asyncio.sleep(0.1)
            assert seen == {"huge-00001": INT32_MAX, "calm-00001": 1}
            assert not reader.done()  # the first watch is still open
            # A reconnecting controller gets every revision's latest decision.
            again = scaling.WatchDecisions(pb.WatchDecisionsRequest(namespace="default"))
            first = await asyncio.wait_for(again.read(), 10)
            assert {d.revision.name: d.desired_scale for d in first.decisions} == seen
            again.cancel()
            watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        assert proc.poll() is None
        assert _errors(info["metrics"]) == {"tick": 0, "decide": 0, "publish": 0}
        assert _dropped(info["metrics"])["out_of_range"] == 1
        assert _bad_log_lines(log) == []
