"""The ScaleDecision an AutoscalerServer streams: fields, timestamp and bounds; and the
StreamStats request deserializer (no gRPC)."""

from __future__ import annotations

import pytest

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.autoscaler.multiscaler import RevisionSpec, Verdict
from ebb.autoscaler.server import (
    UNDECODABLE_MESSAGE,
    AutoscalerServer,
    _Watcher,
    decision_to_proto,
    decode_stats_request,
)
from ebb.autoscaler.settings import AutoscalerSettings, resolve

KEY = ("default", "hello-00001")
A = "autoscaling.knative.dev/"


def verdict(metric: str = "concurrency") -> Verdict:
    return Verdict(KEY, 3, 12, True, 2.5, 3.25, 4.0, metric, 2)


def test_every_field_of_the_verdict_is_streamed():
    config = resolve(AutoscalerSettings(), {A + "min-scale": "2", A + "max-scale": "9"}, 0).config
    decision = decision_to_proto(verdict(), 1_700_000_000.5, config)
    assert (decision.revision.namespace, decision.revision.name) == KEY
    assert (decision.desired_scale, decision.excess_burst_capacity, decision.panic) == (3, 12, True)
    assert (decision.stable_value, decision.panic_value) == (2.5, 3.25)
    assert decision.requests_per_second == 4.0
    assert decision.metric == pb.METRIC_CONCURRENCY
    assert (decision.decided_at.seconds, decision.decided_at.nanos) == (1_700_000_000, 500_000_000)
    assert (decision.bounds.min_scale, decision.bounds.max_scale) == (2, 9)
    assert decision.bounds.initial_scale == 1


def test_rps_metric_and_no_bounds_for_an_unknown_config():
    decision = decision_to_proto(verdict("rps"), 0.0, None)
    assert decision.metric == pb.METRIC_RPS
    assert not decision.HasField("bounds")
    assert decision.HasField("decided_at")


def test_one_tick_stamps_its_verdicts_with_one_wall_time():
    now, wall = [1000.0], [1_700_000_000.0]

    def wall_clock() -> float:
        wall[0] += 0.5  # every call a different instant
        return wall[0]

    server = AutoscalerServer(AutoscalerSettings(), clock=lambda: now[0], wall_clock=wall_clock)
    names = ("a-00001", "b-00001")
    for name in names:
        server.register(RevisionSpec("default", name, ready_instances=1, reachable=True))
    watcher = _Watcher("")
    server._watchers.add(watcher)
    for name in names:
        stat = pb.Stat(
            instance=f"{name}-i", revision=pb.RevisionKey(namespace="default", name=name)
        )
        stat.average_concurrency = 5.0
        server.take_stats([stat])
    now[0] += 2.0
    assert server.tick() == 2
    stamps = {d.decided_at.ToNanoseconds() for d in watcher.pending.values()}
    assert len(watcher.pending) == 2 and len(stamps) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff\xff garbage",
        b"\x0a\x05\x0a\x03abc\xff",  # a stat cut short
        b"\x0a\xff\xff\xff\xff\x0f",  # a length past the end
        b"\x0a\x02\x19\x00",  # a stat holding a cut-off double
    ],
)
def test_bytes_that_do_not_decode_become_the_marker(data):
    assert decode_stats_request(data) is UNDECODABLE_MESSAGE


def test_messages_that_decode_are_returned_as_they_are():
    request = pb.StreamStatsRequest(
        stats=[pb.Stat(instance="i1", revision=pb.RevisionKey(namespace="n", name="r"))]
    )
    assert decode_stats_request(request.SerializeToString()) == request
    assert decode_stats_request(b"") == pb.StreamStatsRequest()  # empty is a valid message
