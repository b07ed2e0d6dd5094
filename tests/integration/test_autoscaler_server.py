"""The autoscaler's gRPC services on a real grpc.aio server (port 0, in-process)."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.autoscaler.server import SCALING_SERVICE, STATS_SERVICE, AutoscalerServer
from ebb.autoscaler.settings import AutoscalerSettings
from ebb.common.server import ServiceCore

# Safety net only: every wait below ends as soon as its event happens.
WAIT_S = 10.0
A = "autoscaling.knative.dev/"
REV = pb.RevisionKey(namespace="default", name="hello-00001")


class Mesh:
    def __init__(
        self, core: ServiceCore, autoscaler: AutoscalerServer, channel: grpc.aio.Channel
    ) -> None:
        self.core = core
        self.autoscaler = autoscaler
        self.channel = channel
        self.stats = pb_grpc.StatsServiceStub(channel)
        self.scaling = pb_grpc.ScalingServiceStub(channel)


async def start_mesh(tick_interval_s: float, settings: AutoscalerSettings | None = None) -> Mesh:
    core = ServiceCore("autoscaler", port=0, grace_s=1.0)
    autoscaler = AutoscalerServer(settings or AutoscalerSettings(), tick_interval_s=tick_interval_s)
    autoscaler.add_to(core)
    await core.start()
    await autoscaler.start()
    channel = grpc.aio.insecure_channel(core.address)
    return Mesh(core, autoscaler, channel)


async def stop_mesh(mesh: Mesh) -> None:
    await mesh.autoscaler.close()
    await mesh.channel.close()
    await mesh.core.shutdown()


@pytest.fixture
async def mesh():
    m = await start_mesh(tick_interval_s=0.05)
    try:
        yield m
    finally:
        await stop_mesh(m)


@pytest.fixture
async def quiet_mesh():
    """No ticks during the test: only pokes can produce decisions."""
    m = await start_mesh(tick_interval_s=3600)
    try:
        yield m
    finally:
        await stop_mesh(m)


def spec(ready=0, cc=0, reachable=True, **annotations):
    return pb.AutoscalingSpec(
        revision=REV,
        annotations=annotations,
        container_concurrency=cc,
        reachable=reachable,
        ready_instances=ready,
    )


def stat(concurrency=0.0, instance="i1", revision=REV, **kw):
    return pb.Stat(instance=instance, revision=revision, average_concurrency=concurrency, **kw)


async def read_until(call, predicate):
    """Read watch messages until a decision satisfies `predicate`; returns it."""

    async def loop():
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "watch stream ended"
            for decision in message.decisions:
                if predicate(decision):
                    return decision

    return await asyncio.wait_for(loop(), WAIT_S)


async def test_stats_drive_desired_scale_up(mesh):
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=1, cc=1)))
    watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest())
    first = await asyncio.wait_for(watch.read(), WAIT_S)
    # The first message holds the latest decision of every revision: the initial status.
    assert len(first.decisions) == 1
    initial = first.decisions[0]
    assert (initial.revision, initial.desired_scale, initial.excess_burst_capacity) == (
        REV,
        -1,
        1 - 211,
    )

    stats = mesh.stats.StreamStats()
    await stats.write(pb.StreamStatsRequest(stats=[stat(5.0)]))
    # CC 1 -> target 0.7 per instance: ceil(5 / 0.7) = 8.
    decision = await read_until(watch, lambda d: d.desired_scale > 0)
    assert decision.desired_scale == 8
    assert decision.panic  # 8 wanted of 1 ready is past the 200 % threshold
    assert decision.stable_value == 5.0
    assert decision.metric == pb.METRIC_CONCURRENCY
    assert decision.decided_at.seconds > 0
    await stats.done_writing()
    response = await asyncio.wait_for(stats, WAIT_S)
    assert (response.accepted, response.dropped) == (1, 0)
    watch.cancel()


async def test_poke_gives_an_immediate_decision(quiet_mesh):
    mesh = quiet_mesh
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=0)))
    watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest(namespace="default"))
    first = await asyncio.wait_for(watch.read(), WAIT_S)
    assert first.decisions[0].desired_scale == -1
    stats = mesh.stats.StreamStats()
    # What the activator sends for the first request of a revision at zero.
    await stats.write(pb.StreamStatsRequest(stats=[stat(1.0, "activator/a1", request_count=1.0)]))
    decision = await read_until(watch, lambda d: d.desired_scale != -1)
    assert decision.desired_scale == 1
    assert mesh.autoscaler.counters["ticks"] == 0  # it was the poke, not a tick
    assert mesh.autoscaler.counters["pokes"] == 1
    await stats.done_writing()
    await asyncio.wait_for(stats, WAIT_S)
    watch.cancel()


async def test_malformed_stats_are_counted_and_the_stream_survives(quiet_mesh):
    mesh = quiet_mesh
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=1)))
    stats = mesh.stats.StreamStats()
    await stats.write(
        pb.StreamStatsRequest(
            stats=[
                pb.Stat(instance="i1", average_concurrency=1.0),  # no revision
                stat(math.nan),
                stat(-1.0),
                stat(1.0, instance=""),
                stat(1.0, revision=pb.RevisionKey(namespace="default", name="nope")),
                stat(1.0),
            ]
        )
    )
    await stats.write(pb.StreamStatsRequest(stats=[stat(2.0, instance="i2")]))
    await stats.write(pb.StreamStatsRequest())
    await stats.done_writing()
    response = await asyncio.wait_for(stats, WAIT_S)
    assert (response.accepted, response.dropped) == (2, 5)
    assert dict(mesh.autoscaler.scaler.collector.dropped) == {
        "missing_revision": 1,
        "not_finite": 1,
        "negative": 1,
        "missing_instance": 1,
        "unknown_revision": 1,
    }
    # The server is still fine: a new stream works.
    again = mesh.stats.StreamStats()
    await again.write(pb.StreamStatsRequest(stats=[stat(1.0)]))
    await again.done_writing()
    assert (await asyncio.wait_for(again, WAIT_S)).accepted == 1


async def test_register_warnings_unregister_and_bad_requests(quiet_mesh):
    mesh = quiet_mesh
    response = await mesh.scaling.RegisterRevision(
        pb.RegisterRevisionRequest(
            spec=spec(**{A + "max-scale": "2", A + "min-scale": "3", A + "metric": "cpu"})
        )
    )
    assert list(response.warnings) == [
        "metadata.annotations.autoscaling.knative.dev/metric: invalid value: cpu",
        "metadata.annotations.autoscaling.knative.dev/max-scale: max-scale=2 is less than min-scale=3",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=pb.AutoscalingSpec()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await mesh.scaling.UnregisterRevision(pb.UnregisterRevisionRequest(revision=REV))
    await mesh.scaling.UnregisterRevision(
        pb.UnregisterRevisionRequest(revision=REV)
    )  # unknown: fine
    watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest())
    first = await asyncio.wait_for(watch.read(), WAIT_S)
    assert list(first.decisions) == []
    watch.cancel()


async def test_many_watchers_and_namespace_filter(quiet_mesh):
    mesh = quiet_mesh
    everything = [mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest()) for _ in range(3)]
    other_ns = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest(namespace="other"))
    for call in [*everything, other_ns]:
        assert list((await asyncio.wait_for(call.read(), WAIT_S)).decisions) == []
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec()))
    for call in everything:
        decision = await read_until(call, lambda d: d.revision == REV)
        assert decision.desired_scale == -1
    other = pb.RevisionKey(namespace="other", name="x-00001")
    await mesh.scaling.RegisterRevision(
        pb.RegisterRevisionRequest(spec=pb.AutoscalingSpec(revision=other))
    )
    decision = await read_until(other_ns, lambda d: True)
    assert decision.revision == other  # the "default" revision was never sent to it
    for call in [*everything, other_ns]:
        call.cancel()


async def test_decisions_carry_bounds_resolved_from_cluster_settings():
    settings = AutoscalerSettings.from_mapping(
        {"min-scale": "2", "max-scale": "6", "max-scale-limit": "10", "initial-scale": "3"}
    )
    mesh = await start_mesh(tick_interval_s=60.0, settings=settings)
    try:
        over = pb.RevisionKey(namespace="default", name="over-00001")
        await mesh.scaling.RegisterRevision(
            pb.RegisterRevisionRequest(spec=spec(**{A + "max-scale": "8"}))
        )
        response = await mesh.scaling.RegisterRevision(
            pb.RegisterRevisionRequest(
                spec=pb.AutoscalingSpec(revision=over, annotations={A + "max-scale": "50"})
            )
        )
        assert response.warnings  # over max-scale-limit: the cluster's max-scale is used
        watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest())
        first = await asyncio.wait_for(watch.read(), WAIT_S)
        bounds = {
            d.revision.name: (d.bounds.min_scale, d.bounds.max_scale, d.bounds.initial_scale)
            for d in first.decisions
        }
        assert bounds == {REV.name: (2, 8, 3), over.name: (2, 6, 3)}
        watch.cancel()
    finally:
        await stop_mesh(mesh)


async def test_close_ends_watch_and_stats_streams_cleanly():
    mesh = await start_mesh(tick_interval_s=0.05)
    try:
        watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest())
        await asyncio.wait_for(watch.read(), WAIT_S)
        await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=1)))
        stats = mesh.stats.StreamStats()
        await stats.write(pb.StreamStatsRequest(stats=[stat(1.0)]))
        await read_until(watch, lambda d: d.desired_scale >= 0)  # the stat has been taken
        await mesh.autoscaler.close()
        # The watch ends with OK, and the open stats stream gets its totals.
        assert await asyncio.wait_for(watch.read(), WAIT_S) is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
        response = await asyncio.wait_for(stats, WAIT_S)
        assert (response.accepted, response.dropped) == (1, 0)
        assert mesh.autoscaler.watcher_count == 0
    finally:
        await stop_mesh(mesh)


async def test_health_and_reflection(mesh):
    health = health_pb2_grpc.HealthStub(mesh.channel)
    for service in ("", STATS_SERVICE, SCALING_SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service

    reflection = reflection_pb2_grpc.ServerReflectionStub(mesh.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await asyncio.wait_for(call.read(), WAIT_S)
    names = {s.name for s in response.list_services_response.service}
    assert {"ebb.api.autoscaler.v1.StatsService", "ebb.api.autoscaler.v1.ScalingService"} <= names
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SCALING_SERVICE))
    response = await asyncio.wait_for(call.read(), WAIT_S)
    assert response.file_descriptor_response.file_descriptor_proto
    await call.done_writing()


async def test_tick_loop_survives_a_failing_step(mesh, monkeypatch):
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=1)))
    calls = {"n": 0}
    real = mesh.autoscaler.scaler.decide

    def flaky(key, now):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("boom")
        return real(key, now)

    monkeypatch.setattr(mesh.autoscaler.scaler, "decide", flaky)
    watch = mesh.scaling.WatchDecisions(pb.WatchDecisionsRequest())
    await asyncio.wait_for(watch.read(), WAIT_S)
    stats = mesh.stats.StreamStats()
    await stats.write(pb.StreamStatsRequest(stats=[stat(3.0)]))
    decision = await read_until(watch, lambda d: d.desired_scale >= 0)
    assert decision.desired_scale == 1
    assert mesh.autoscaler.counters["decide_errors"] == 2
    await stats.done_writing()
    await asyncio.wait_for(stats, WAIT_S)
    watch.cancel()


async def test_a_reporter_that_goes_away_mid_stream_harms_nothing(quiet_mesh):
    mesh = quiet_mesh
    await mesh.scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec(ready=1)))
    gone = mesh.stats.StreamStats()
    await gone.write(pb.StreamStatsRequest(stats=[stat(1.0)]))
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    # The next reporter is served as usual.
    stats = mesh.stats.StreamStats()
    await stats.write(pb.StreamStatsRequest(stats=[stat(2.0, instance="i2")]))
    await stats.done_writing()
    assert (await asyncio.wait_for(stats, WAIT_S)).accepted == 1
