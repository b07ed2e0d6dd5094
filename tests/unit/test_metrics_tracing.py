"""Tracing settings, W3C traceparent helpers and HTTP spans (in-memory exporter, no sockets)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ebb.common import tracing as tr
from ebb.common.settings import SettingsError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (GOOD, tr.TraceParent(TRACE, SPAN, 1, 0)),
        (f"00-{TRACE}-{SPAN}-00", tr.TraceParent(TRACE, SPAN, 0, 0)),
        (GOOD.encode(), tr.TraceParent(TRACE, SPAN, 1, 0)),
        (f"  {GOOD}\t", tr.TraceParent(TRACE, SPAN, 1, 0)),  # optional whitespace
        # A future version may append fields; we read the ones we know.
        (f"cc-{TRACE}-{SPAN}-09-what-the-future-holds", tr.TraceParent(TRACE, SPAN, 9, 0xCC)),
        (f"01-{TRACE}-{SPAN}-01", tr.TraceParent(TRACE, SPAN, 1, 1)),
    ],
)
def test_parse_valid(header, expected):
    assert tr.parse_traceparent(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        GOOD.upper(),  # ids are lower-case hex
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE}-{SPAN[:-1]}g-01",
        f"0-{TRACE}-{SPAN}-01",
        "00-" + "z" * 32 + f"-{SPAN}-01",
        b"\xff\xfe",
        f"00-{TRACE}-{SPAN}-01\n00-{TRACE}-{SPAN}-01",
        12345,
    ],
)
def test_parse_malformed_is_none_never_an_error(header):
    assert tr.parse_traceparent(header) is None


def test_format_and_child():
    assert tr.format_traceparent(TRACE, SPAN) == GOOD
    assert tr.format_traceparent(int(TRACE, 16), int(SPAN, 16), sampled=False) == f"00-{TRACE}-{SPAN}-00"
    parent = tr.parse_traceparent(GOOD)
    assert parent.header() == GOOD and parent.sampled
    child = parent.child()
    assert child.trace_id == TRACE and child.span_id != SPAN and len(child.span_id) == 16
    assert tr.parse_traceparent(child.header()) == child
    # We send version 00 on, whatever version came in.
    future = tr.parse_traceparent(f"cc-{TRACE}-{SPAN}-01-x")
    assert future.header() == GOOD


def test_new_ids_are_valid():
    header = tr.format_traceparent(tr.new_trace_id(), tr.new_span_id())
    assert tr.parse_traceparent(header) is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"TraceParent": GOOD},
        [(b"traceparent", GOOD.encode())],
        [("x", "y"), ("traceparent", GOOD), ("traceparent", "second")],
    ],
)
def test_header_value_is_case_insensitive(headers):
    assert tr.header_value(headers, "traceparent") in (GOOD, GOOD.encode())


# -- settings --------------------------------------------------------------------------


def test_off_by_default():
    assert tr.load_settings("queue", {}).enabled is False
    assert tr.load_settings("queue", {"EBB_TRACING": "0", "OTEL_TRACES_SAMPLER": "bogus"}).enabled is False
    assert tr.setup("queue", {}) is tr.DISABLED


def test_on_with_standard_env():
    s = tr.load_settings(
        "queue",
        {
            "EBB_TRACING": "1",
            "OTEL_SERVICE_NAME": "ebb-queue-hello",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        },
    )
    assert s == tr.TracingSettings(
        enabled=True,
        service_name="ebb-queue-hello",
        sampler="parentbased_traceidratio",
        sampler_arg=0.01,
        exporters=("otlp",),
        otlp_endpoint="http://127.0.0.1:4317",
    )


def test_defaults_when_on():
    s = tr.load_settings("activator", {"EBB_TRACING": "true"})
    assert s.service_name == "ebb-activator"
    assert s.sampler == "parentbased_always_on"
    assert s.exporters == ("otlp",)
    assert s.otlp_endpoint is None
    assert tr.load_settings("x", {"EBB_TRACING": "1", "OTEL_TRACES_EXPORTER": "none"}).exporters == ()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EBB_TRACING": "maybe"}, "EBB_TRACING"),
        ({"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0,01"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"EBB_TRACING": "1", "OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"EBB_TRACING": "1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_bad_settings_name_the_variable(env, key):
    with pytest.raises(SettingsError, match=key):
        tr.load_settings("queue", env)


@pytest.mark.parametrize(
    ("sampler", "arg", "sampled"),
    [
        ("always_on", "", True),
        ("always_off", "", False),
        ("traceidratio", "0", False),
        ("traceidratio", "1", True),
        ("parentbased_always_on", "", True),
        ("parentbased_traceidratio", "0", False),
    ],
)
def test_samplers_for_a_new_trace(sampler, arg, sampled):
    exporter = InMemorySpanExporter()
    env = {"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": arg}
    t = tr.setup("queue", env, exporter=exporter, set_global=False)
    span = t.start_http_span("GET /")
    t.end_http_span(span, 200)
    assert len(exporter.get_finished_spans()) == (1 if sampled else 0)
    # Sampled out or not, the next hop gets a valid traceparent carrying the decision.
    (name, value), *_ = t.trace_headers(span)
    assert name == "traceparent" and tr.parse_traceparent(value).sampled is sampled


def test_parent_based_follows_the_callers_decision():
    exporter = InMemorySpanExporter()
    env = {"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    t = tr.setup("queue", env, exporter=exporter, set_global=False)
    t.end_http_span(t.start_http_span("GET /", traceparent=GOOD), 200)  # caller sampled: kept
    assert len(exporter.get_finished_spans()) == 1


# -- HTTP spans ------------------------------------------------------------------------


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    t = tr.setup("queue", {"EBB_TRACING": "1", "OTEL_SERVICE_NAME": "ebb-queue"}, exporter=exporter, set_global=False)
    yield t, exporter
    t.shutdown()


def test_http_span_continues_the_incoming_trace(traced):
    t, exporter = traced
    span = t.start_http_span(
        "GET /hello", traceparent=GOOD, tracestate="vendor=1", attributes={"http.request.method": "GET"}
    )
    headers = dict(t.trace_headers(span))
    t.end_http_span(span, 200)
    (finished,) = exporter.get_finished_spans()
    assert finished.kind == SpanKind.SERVER
    assert f"{finished.context.trace_id:032x}" == TRACE
    assert f"{finished.parent.span_id:016x}" == SPAN
    assert finished.parent.is_remote
    assert finished.attributes["http.response.status_code"] == 200
    assert finished.status.is_ok
    assert finished.resource.attributes["service.name"] == "ebb-queue"
    # The app sees the same trace, with our span as its parent, and the tracestate.
    down = tr.parse_traceparent(headers["traceparent"])
    assert down.trace_id == TRACE and down.span_id == f"{finished.context.span_id:016x}"
    assert headers["tracestate"] == "vendor=1"


@pytest.mark.parametrize("bad", ["garbage", f"00-{'0' * 32}-{SPAN}-01", GOOD.upper(), None])
def test_malformed_traceparent_starts_a_new_trace(traced, bad):
    t, exporter = traced
    span = t.start_http_span("GET /", traceparent=bad, tracestate="a=b")
    t.end_http_span(span, 503)
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None
    assert f"{finished.context.trace_id:032x}" != TRACE
    assert not finished.status.is_ok  # a 5xx marks the span failed


def test_end_with_error(traced):
    t, exporter = traced
    t.end_http_span(t.start_http_span("GET /"), error="upstream reset")
    (finished,) = exporter.get_finished_spans()
    assert finished.status.description == "upstream reset"


def test_disabled_helpers_are_harmless():
    t = tr.DISABLED
    assert not t.enabled
    span = t.start_http_span("GET /", traceparent=GOOD)
    assert span is None
    t.end_http_span(span, 200)
    assert t.trace_headers(span) == []
    with t.tracer("x").start_as_current_span("noop") as s:
        assert not s.get_span_context().is_valid
    t.shutdown()


def test_setup_without_set_global_leaves_the_global_provider_alone(traced):
    t, _ = traced
    assert trace.get_tracer_provider() is not t.provider


def test_shutdown_is_idempotent(traced):
    t, exporter = traced
    t.shutdown()
    t.shutdown()


def test_remote_context_ignores_malformed():
    assert tr.remote_context("nope") is None
    ctx = tr.remote_context(GOOD, "k=v")
    parent = trace.get_current_span(ctx).get_span_context()
    assert parent.is_remote and f"{parent.trace_id:032x}" == TRACE
    assert parent.trace_state.get("k") == "v"


@pytest.mark.parametrize(
    ("method", "traced_"),
    [
        ("/ebb.api.autoscaler.v1.StatsService/StreamStats", True),
        (b"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", True),
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_interceptor_filter(method, traced_):
    class Details:
        pass

    d = Details()
    d.method = method
    assert tr.traced(d) is traced_
