"""gRPC tracing through instrumented grpc.aio servers and clients (in-memory exporter).

Covers the three RPC shapes the mesh uses with the interceptors on - unary
(RegisterRevision), client stream written with `call.write()` as the queue's reporter does
(StatsService.StreamStats) and bidi (ADS) - plus a server stream in the
`await context.write()` style, which the stock aio interceptor breaks (see
ebb.common.tracing), and tracing off.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc, discovery_pb2  # noqa: F401 (descriptors)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.autoscaler.server import AutoscalerServer, ScalingServicer, StatsServicer
from ebb.autoscaler.settings import AutoscalerSettings
from ebb.common import tracing as tr
from ebb.controller.xds import AdsServer

WAIT_S = 5.0
REV = pb.RevisionKey(namespace="default", name="hello-00001")
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
REGISTER = "/ebb.api.autoscaler.v1.ScalingService/RegisterRevision"
STREAM_STATS = "/ebb.api.autoscaler.v1.StatsService/StreamStats"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
WRITER = "/test.Writer/Count"


async def _count_with_writes(request: bytes, context) -> None:
    """A server-streaming handler in the `await context.write()` style (a coroutine)."""
    for i in range(int(request or b"0")):
        await context.write(str(i).encode())


class Mesh:
    def __init__(self, tracing: tr.Tracing) -> None:
        self.tracing = tracing
        self.autoscaler = AutoscalerServer(AutoscalerSettings(), tick_interval_s=3600)
        self.ads = AdsServer()
        self.server = grpc.aio.server(interceptors=tracing.server_interceptors())
        self.health = health.aio.HealthServicer()

    async def start(self) -> None:
        s = self.server
        pb_grpc.add_StatsServiceServicer_to_server(StatsServicer(self.autoscaler), s)
        pb_grpc.add_ScalingServiceServicer_to_server(ScalingServicer(self.autoscaler), s)
        self.ads.add_to_server(s)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, s)
        s.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Writer",
                    {"Count": grpc.unary_stream_rpc_method_handler(_count_with_writes)},
                )
            ]
        )
        self.address = f"127.0.0.1:{s.add_insecure_port('127.0.0.1:0')}"
        await s.start()
        self.channel = grpc.aio.insecure_channel(
            self.address, interceptors=self.tracing.client_interceptors()
        )

    async def close(self) -> None:
        await self.autoscaler.close()
        await self.channel.close()
        await self.server.stop(0)


async def _make(environ):
    exporter = InMemorySpanExporter()
    tracing = tr.setup("test", environ, exporter=exporter, set_global=False)
    mesh = Mesh(tracing)
    await mesh.start()
    return mesh, exporter


@pytest.fixture
async def traced():
    mesh, exporter = await _make({"EBB_TRACING": "1"})
    try:
        yield mesh, exporter
    finally:
        await mesh.close()
        mesh.tracing.shutdown()


async def _unary(mesh: Mesh) -> None:
    stub = pb_grpc.ScalingServiceStub(mesh.channel)
    await stub.RegisterRevision(
        pb.RegisterRevisionRequest(spec=pb.AutoscalingSpec(revision=REV, reachable=True)),
        timeout=WAIT_S,
    )


async def _client_stream(mesh: Mesh) -> pb.StreamStatsResponse:
    # The queue's reporter writes through call.write(); the stock stream-unary interceptor
    # deadlocks on exactly this.
    call = pb_grpc.StatsServiceStub(mesh.channel).StreamStats()
    stat = pb.Stat(instance="i-1", revision=REV, average_concurrency=1.0, request_count=2)
    for _ in range(3):
        await asyncio.wait_for(call.write(pb.StreamStatsRequest(stats=[stat])), WAIT_S)
    await asyncio.wait_for(call.done_writing(), WAIT_S)
    return await asyncio.wait_for(call, WAIT_S)


async def _bidi(mesh: Mesh) -> grpc.StatusCode:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(mesh.channel).StreamAggregatedResources()
    await asyncio.wait_for(call.write(discovery_pb2.DiscoveryRequest(type_url=CDS)), WAIT_S)
    await asyncio.wait_for(call.done_writing(), WAIT_S)
    async for _ in call:  # no snapshot: the server answers nothing and ends the stream
        pass
    return await asyncio.wait_for(call.code(), WAIT_S)


async def _spans(exporter: InMemorySpanExporter, count: int):
    # Server spans end when their handler returns, a moment after the client saw the end.
    for _ in range(int(WAIT_S / 0.01)):
        spans = exporter.get_finished_spans()
        if len(spans) >= count:
            return spans
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} spans, got {[(s.name, s.kind) for s in exporter.get_finished_spans()]}")


async def test_unary_client_stream_and_bidi_spans_share_one_trace(traced):
    mesh, exporter = traced
    tracer = mesh.tracing.tracer("test")
    with tracer.start_as_current_span("request") as root:
        await _unary(mesh)
        response = await _client_stream(mesh)
        code = await _bidi(mesh)
    assert response.accepted == 3
    assert code == grpc.StatusCode.OK

    spans = await _spans(exporter, 7)
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    by_kind = {(s.name, s.kind): s for s in spans}
    for method in (REGISTER, STREAM_STATS, ADS):
        client = by_kind[(method, SpanKind.CLIENT)]
        server = by_kind[(method, SpanKind.SERVER)]
        assert client.parent.span_id == root.get_span_context().span_id
        assert server.parent.span_id == client.context.span_id, method
        assert server.attributes["rpc.grpc.status_code"] == 0
        assert client.attributes["rpc.grpc.status_code"] == 0
        assert client.end_time >= client.start_time
    assert mesh.autoscaler.scaler.collector.accepted == 3


async def test_client_stream_span_ends_with_the_call_status(traced):
    mesh, exporter = traced
    call = pb_grpc.StatsServiceStub(mesh.channel).StreamStats()
    stat = pb.Stat(instance="i-1", revision=REV, average_concurrency=1.0)
    await asyncio.wait_for(call.write(pb.StreamStatsRequest(stats=[stat])), WAIT_S)
    collector = mesh.autoscaler.scaler.collector
    for _ in range(int(WAIT_S / 0.01)):  # the server has read it (unknown revision: dropped)
        if collector.dropped:
            break
        await asyncio.sleep(0.01)
    assert not exporter.get_finished_spans()  # the stream is open: no span has ended
    call.cancel()
    spans = await _spans(exporter, 2)
    client = next(s for s in spans if s.kind == SpanKind.CLIENT)
    assert client.name == STREAM_STATS
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert not client.status.is_ok


async def test_bidi_cancelled_by_the_client_ends_both_spans(traced, caplog):
    mesh, exporter = traced
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(mesh.channel).StreamAggregatedResources()
    await asyncio.wait_for(call.write(discovery_pb2.DiscoveryRequest(type_url=CDS)), WAIT_S)
    for _ in range(int(WAIT_S / 0.01)):  # the server has the stream open
        if mesh.ads.stats()["streams"]:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    spans = await _spans(exporter, 2)
    assert {(s.name, s.kind) for s in spans} == {(ADS, SpanKind.CLIENT), (ADS, SpanKind.SERVER)}
    # The server span's context was attached in the handler's task and detached there too.
    assert not [r for r in caplog.records if "detach" in r.getMessage()]


async def test_context_write_server_stream_is_traced(traced):
    mesh, exporter = traced
    call = mesh.channel.unary_stream(WRITER)(b"3", timeout=WAIT_S)
    assert [m async for m in call] == [b"0", b"1", b"2"]
    spans = await _spans(exporter, 2)
    assert {(s.name, s.kind) for s in spans} == {(WRITER, SpanKind.CLIENT), (WRITER, SpanKind.SERVER)}


async def test_server_stream_read_through_the_call(traced):
    # WatchDecisions, read with call.read() (the stock interceptor breaks read()).
    mesh, exporter = traced
    call = pb_grpc.ScalingServiceStub(mesh.channel).WatchDecisions(
        pb.WatchDecisionsRequest(), timeout=WAIT_S
    )
    first = await asyncio.wait_for(call.read(), WAIT_S)
    assert list(first.decisions) == []
    call.cancel()
    spans = await _spans(exporter, 2)
    assert {s.kind for s in spans} == {SpanKind.CLIENT, SpanKind.SERVER}


async def test_health_is_served_but_not_traced(traced):
    mesh, exporter = traced
    stub = health_pb2_grpc.HealthStub(mesh.channel)
    await mesh.health.set("", health_pb2.HealthCheckResponse.SERVING)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Watch is written in the context.write() style too.
    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    first = await asyncio.wait_for(watch.read(), WAIT_S)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    await _unary(mesh)  # a traced call after them, so the exporter has had its chance
    spans = await _spans(exporter, 2)
    assert {s.name for s in spans} == {REGISTER}


async def test_incoming_traceparent_metadata_is_continued(traced):
    mesh, exporter = traced
    parent = tr.TraceParent(tr.new_trace_id(), tr.new_span_id())
    # A caller without instrumentation (e.g. another language) sends only the metadata.
    plain = grpc.aio.insecure_channel(mesh.address)
    try:
        stub = pb_grpc.ScalingServiceStub(plain)
        await stub.RegisterRevision(
            pb.RegisterRevisionRequest(spec=pb.AutoscalingSpec(revision=REV)),
            metadata=(("traceparent", parent.header()),),
            timeout=WAIT_S,
        )
    finally:
        await plain.close()
    (server,) = await _spans(exporter, 1)
    assert server.kind == SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == parent.trace_id
    assert f"{server.parent.span_id:016x}" == parent.span_id


async def test_tracing_off_means_no_interceptors_no_spans_no_errors():
    mesh, exporter = await _make({})
    try:
        assert mesh.tracing is tr.DISABLED
        assert mesh.tracing.server_interceptors() == []
        assert mesh.tracing.client_interceptors() == []
        with mesh.tracing.tracer("test").start_as_current_span("request"):
            await _unary(mesh)
            assert (await _client_stream(mesh)).accepted == 3
            assert await _bidi(mesh) == grpc.StatusCode.OK
        assert exporter.get_finished_spans() == ()
    finally:
        await mesh.close()
        mesh.tracing.shutdown()


class _Receiver:
    """A minimal OTLP/gRPC trace receiver (what a collector is to the exporter)."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request, context):  # noqa: N802 (grpc method name)
                receiver.requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.requests: list = []
        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")


async def test_spans_reach_an_otlp_receiver_configured_by_env():
    receiver = _Receiver()
    await receiver.server.start()
    try:
        env = {
            "EBB_TRACING": "1",
            "OTEL_SERVICE_NAME": "ebb-test-otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        }
        tracing = tr.setup("test", env, set_global=False)
        with tracing.tracer("test").start_as_current_span("request"):
            pass
        assert await tracing.aclose(timeout_s=WAIT_S)  # flushes the batch
    finally:
        await receiver.server.stop(0)
    spans = [
        (resource.resource, span)
        for request in receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [span.name for _, span in spans] == ["request"]
    attributes = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert attributes["service.name"] == "ebb-test-otlp"


async def test_a_collector_that_is_down_never_holds_up_shutdown():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"EBB_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    tracing = tr.setup("test", env, set_global=False)
    with tracing.tracer("test").start_as_current_span("request"):
        pass
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await tracing.aclose(timeout_s=0.3) is False  # dropped, not waited for
    assert loop.time() - started < 2.0
    assert await tracing.aclose() is True  # idempotent
