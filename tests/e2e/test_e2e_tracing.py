"""`ebb up --tracing` end to end: one request through a cold revision is one trace.

An OTLP/gRPC trace receiver runs in the test on 127.0.0.1 (opentelemetry-proto's
collector service); every Ebb process exports to it through the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`. The revision is first scaled to zero (short windows through
`--config`), so the request is held by the activator, which then forwards it to the queue,
which passes the trace on to the app: the sample app's `/headers` shows what it received.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures

import grpc
import pytest
from helpers import SAMPLE_APP, wait_until
from mesh import Mesh
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ebb.common.tracing import parse_traceparent

pytestmark = pytest.mark.e2e

CONFIG = """\
autoscaler:
  stable-window: 6s
  scale-to-zero-grace-period: 2s
  scale-down-delay: 0s
"""
HOST = "traced.default.localhost"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, with the `service.name` of its resource."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[tuple[str, object]] = []

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self._spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans_of(self, trace_id: str) -> list[tuple[str, object]]:
        with self._lock:
            return [
                (service, span) for service, span in self._spans if span.trace_id.hex() == trace_id
            ]


@pytest.fixture
def receiver():
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


@pytest.fixture
def mesh(tmp_path, receiver):
    _, port = receiver
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    m = Mesh(tmp_path / "ebb", config=config, extra_args=("--tracing",))
    m.env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second
    }
    with m.running():
        yield m


def test_a_request_to_a_cold_revision_is_one_trace_from_activator_to_app(mesh, receiver):
    servicer, _ = receiver
    mesh.ebb(
        "service",
        "create",
        "traced",
        "--cmd",
        f"{sys.executable} {SAMPLE_APP}",
        "--wait",
        "--wait-timeout",
        "60",
    )
    wait_until(
        lambda: (
            (s := mesh.revision("traced-00001")["status"]).get("actualReplicas", 0) == 0
            and s.get("servingMode") == "proxy"
        ),
        60,
        message="scale to zero",
    )

    status, body = mesh.get(HOST, "/headers", timeout_s=60)
    assert status == 200, body
    headers = {name.lower(): value for name, value in json.loads(body).items()}
    seen = parse_traceparent(headers["traceparent"])  # what the app received
    assert seen is not None and seen.sampled

    def both_spans():
        spans = servicer.spans_of(seen.trace_id)
        services = {service for service, _ in spans}
        return spans if {"ebb-activator", "ebb-queue"} <= services else None

    spans = wait_until(both_spans, 30, message="activator and queue spans of the app's trace")
    server_spans = {
        service: span
        for service, span in spans
        if span.kind == span.SPAN_KIND_SERVER and span.name == "GET"
    }
    activator, queue = server_spans["ebb-activator"], server_spans["ebb-queue"]
    assert queue.parent_span_id == activator.span_id  # the queue continues the activator's span
    assert seen.span_id == queue.span_id.hex()  # and the app's parent is the queue's span
    revision = {a.key: a.value.string_value for a in queue.attributes}.get("ebb.revision")
    assert revision == "traced-00001"
    events = [event.name for event in activator.events]
    assert "instance acquired" in events  # the activator held it while the revision woke
