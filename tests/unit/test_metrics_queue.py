"""The queue's observability without sockets: request counts and latency in plain ints,
the Prometheus families built from them, the request log line, the settings, and
`traceparent` continuation, driven through the real proxy with fake transports."""

from __future__ import annotations

import io
import json
import os
import threading
from types import SimpleNamespace

import pytest
from helpers import QUEUE_METRIC_NAMES
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.fakes import MemoryTransport
from ebb.common import tracing as tr
from ebb.common.http1 import Limits, UpstreamConnection, UpstreamPool
from ebb.common.metrics import (
    MAX_ROUTE_TAGS,
    REQUEST_BUCKETS_S,
    RESPONSE_CLASSES,
    RequestTally,
    new_registry,
    response_class,
)
from ebb.common.settings import SettingsError
from ebb.queue.metrics import QueueCollector
from ebb.queue.proxy import Proxy, QueueConnection
from ebb.queue.requestlog import RequestLog
from ebb.queue.settings import load

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"


# -- fakes: a transport that records what is written, an app connection in the pool


def pooled_app(pool: UpstreamPool) -> UpstreamConnection:
    """A keep-alive connection to the app, idle in `pool`: requests go to its transport."""
    up = UpstreamConnection(pool)
    up.connection_made(MemoryTransport())
    pool.idle.append(up)
    return up


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client(proxy) -> tuple[QueueConnection, MemoryTransport]:
    conn = proxy.connection_class(proxy)
    transport = MemoryTransport()
    conn.connection_made(transport)
    return conn, transport


def head_of(raw: bytes) -> dict[str, str]:
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {k.decode().lower(): v.decode() for k, _, v in (line.partition(b": ") for line in lines)}


def scrape(collector) -> dict:
    registry = new_registry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name: str, sample: str | None = None, **labels) -> float:
    family = families[name]
    for s in family.samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or name} {labels}")


# -- response classes and the tally

TWO_XX, FIVE_XX = RESPONSE_CLASSES.index("2xx"), RESPONSE_CLASSES.index("5xx")


@pytest.mark.parametrize(
    ("status", "klass"),
    [(101, "1xx"), (200, "2xx"), (204, "2xx"), (301, "3xx"), (304, "3xx"), (400, "4xx"), (404, "4xx"),
     (499, "4xx"), (500, "5xx"), (503, "5xx"), (504, "5xx"), (599, "5xx"), (600, "5xx"), (999, "5xx")],
)  # fmt: skip
def test_response_class(status, klass):
    assert response_class(status) == klass
    tally = RequestTally()
    tally.record(status, b"", 0.001)
    assert tally.by_tag[b""][["1xx", "2xx", "3xx", "4xx", "5xx"].index(klass)] == 1


@pytest.mark.parametrize(
    ("seconds", "le"),
    [(0.0001, 0.0005), (0.0005, 0.0005), (0.0006, 0.001), (0.3, 0.5), (10.0, 10.0), (299.0, 300.0)],
)
def test_latency_lands_in_the_first_bucket_at_or_above_it(seconds, le):
    tally = RequestTally()
    tally.record(200, b"", seconds)
    assert tally.buckets[TWO_XX].index(1) == REQUEST_BUCKETS_S.index(le)


def test_latency_beyond_the_last_bound_is_only_in_inf():
    tally = RequestTally()
    tally.record(200, b"", 900.0)
    assert tally.buckets[TWO_XX][-1] == 1 and sum(tally.buckets[TWO_XX]) == 1


def test_route_tags_are_capped_and_junk_is_other():
    tally = RequestTally()
    tally.record(200, b"canary", 0.001)
    tally.record(200, b"Not A Label!", 0.001)
    tally.record(500, b"x" * 64, 0.001)  # longer than a DNS label
    for i in range(MAX_ROUTE_TAGS + 5):
        tally.record(200, b"t%d" % i, 0.001)
    assert tally.by_tag[b"canary"] == [0, 1, 0, 0, 0]
    assert len(tally.by_tag) == MAX_ROUTE_TAGS + 2  # "", the tags it keeps, "_other"
    other = tally.by_tag[b"_other"]
    assert other[FIVE_XX] == 1 and other[TWO_XX] == 1 + (MAX_ROUTE_TAGS + 5) - (MAX_ROUTE_TAGS - 1)


# -- the families


def fake_proxy(**kwargs):
    base = {"tally": RequestTally(("overload",), ("waiting", "request")), "in_flight": 0,
            "breaker": None, "healthy": True}  # fmt: skip
    return SimpleNamespace(**{**base, **kwargs})


def test_every_name_is_exported_before_any_request():
    families = scrape(QueueCollector(fake_proxy(), "default", "hello-00001"))
    assert QUEUE_METRIC_NAMES <= set(families)
    assert value(families, "ebb_queue_rejected", "ebb_queue_rejected_total", reason="overload") == 0
    assert value(families, "ebb_queue_timeouts", "ebb_queue_timeouts_total", kind="waiting") == 0
    assert families["ebb_queue_requests"].samples == []  # a class appears with its first request


def test_families_follow_the_counts():
    proxy = fake_proxy(in_flight=4, breaker=SimpleNamespace(waiting=3), healthy=False)
    proxy.tally.record(200, b"", 0.002)
    proxy.tally.record(200, b"blue", 0.002)
    proxy.tally.record(503, b"", 0.0001)
    proxy.tally.reject("overload")
    proxy.tally.timed_out("request")
    log = SimpleNamespace(dropped=7)
    families = scrape(QueueCollector(proxy, "default", "hello-00001", log))
    labels = {"namespace": "default", "revision": "hello-00001"}
    total = "ebb_queue_requests_total"
    assert value(families, "ebb_queue_requests", total, response_class="2xx", route_tag="", **labels) == 1
    assert value(families, "ebb_queue_requests", total, response_class="2xx", route_tag="blue") == 1
    assert value(families, "ebb_queue_requests", total, response_class="5xx", route_tag="") == 1
    hist = "ebb_queue_request_duration_seconds"
    assert value(families, hist, hist + "_count", response_class="2xx") == 2
    assert value(families, hist, hist + "_bucket", response_class="2xx", le="0.001") == 0
    assert value(families, hist, hist + "_bucket", response_class="2xx", le="0.0025") == 2
    assert value(families, hist, hist + "_bucket", response_class="2xx", le="+Inf") == 2
    assert value(families, hist, hist + "_sum", response_class="2xx") == pytest.approx(0.004)
    assert value(families, hist, hist + "_bucket", response_class="5xx", le="0.0005") == 1
    assert value(families, "ebb_queue_rejected", "ebb_queue_rejected_total", reason="overload") == 1
    assert value(families, "ebb_queue_timeouts", "ebb_queue_timeouts_total", kind="request") == 1
    assert value(families, "ebb_queue_inflight_requests", **labels) == 1  # 4 admitted, 3 waiting
    assert value(families, "ebb_queue_queue_depth", **labels) == 3
    assert value(families, "ebb_queue_ready", **labels) == 0
    assert value(families, "ebb_queue_request_logs_dropped", "ebb_queue_request_logs_dropped_total") == 7


# -- the request log line


def exchange(status: int = 200, latency_s: float = 0.001, **kwargs):
    """A finished exchange as the log reads it; it ended at 100.0 on the proxy's clock."""
    base = {"url": b"/", "method": b"GET", "bytes_in": 0, "bytes_out": 0, "span": None, "traceparent": None,
            "status": status, "t_begin": 100.0 - latency_s, "t_end": 100.0}  # fmt: skip
    return SimpleNamespace(**{**base, **kwargs})


def log_lines(*exchanges, **options) -> list[dict]:
    stream = io.BytesIO()
    log = RequestLog(
        namespace="default", revision="hello-00001", instance="hello-00001-abc",
        stream=stream, clock=lambda: 100.0, wall_clock=lambda: 1_750_000_000.0421, **options,
    )  # fmt: skip
    for ex in exchanges:
        log.record(ex)
    log.close()
    raw = stream.getvalue()
    assert raw.endswith(b"\n") or not raw
    return [json.loads(line) for line in raw.splitlines()]


def test_request_line_format():
    ex = exchange(
        201, 0.0123456, url=b"/api/items?token=secret", method=b"POST", bytes_in=12, bytes_out=345,
        traceparent=GOOD.encode(),
    )  # fmt: skip
    (line,) = log_lines(ex)
    assert line == {
        "ts": "2025-06-15T15:06:40.042Z",
        "level": "info",
        "component": "queue",
        "logger": "ebb.queue.request",
        "msg": "request",
        "namespace": "default",
        "revision": "hello-00001",
        "instance": "hello-00001-abc",
        "method": "POST",
        "path": "/api/items",  # the query is not logged
        "status": 201,
        "latency_ms": 12.346,
        "bytes_in": 12,
        "bytes_out": 345,
        "trace_id": TRACE,
    }


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (b"/a\"b\\c", '/a"b\\c'),
        ("/caf\u00e9".encode(), "/caf\u00e9"),
        (b"/\xff", "/\\xff"),
        (b"http://example.com/x?y", "http://example.com/x"),
        (b"/" + b"a" * 5000, "/" + "a" * 2047),
    ],
)
def test_paths_are_valid_json_whatever_they_hold(url, path):
    (line,) = log_lines(exchange(url=url))
    assert line["path"] == path


def test_an_odd_path_in_a_batch_leaves_the_others_as_they_are():
    urls = [b"/a", b'/b"q', b"/c?x=\"", b"/d\xff", b"/e"]
    lines = log_lines(*[exchange(url=url) for url in urls])
    assert [line["path"] for line in lines] == ["/a", '/b"q', "/c", "/d\\xff", "/e"]


def test_queries_are_cut_a_batch_at_a_time_even_next_to_a_path_with_a_space():
    urls = [b"/a?token=1", b"/b c?d", b"/e?f?g", b"/h?", b"/i"]  # a space: the per-path way
    assert [line["path"] for line in log_lines(*[exchange(url=url) for url in urls])] == [
        "/a", "/b c", "/e", "/h", "/i"]  # fmt: skip
    urls = [b"/a?token=1", b"/e?f?g", b"/i"]
    assert [line["path"] for line in log_lines(*[exchange(url=url) for url in urls])] == ["/a", "/e", "/i"]


def test_requests_in_one_millisecond_share_its_ts_and_the_next_one_gets_its_own():
    stream = io.BytesIO()
    log = RequestLog(namespace="n", revision="r", instance="i", stream=stream,
                     clock=lambda: 100.0, wall_clock=lambda: 1_750_000_000.5)  # fmt: skip
    for t_end in (100.0001, 100.0009, 100.0011, 101.0):  # wall .5001, .5009, .5011, 1.5
        log.record(exchange(t_end=t_end, t_begin=t_end - 0.002))
    log.close()
    stamps = [json.loads(line)["ts"] for line in stream.getvalue().splitlines()]
    assert stamps == ["2025-06-15T15:06:40.500Z", "2025-06-15T15:06:40.500Z",
                      "2025-06-15T15:06:40.501Z", "2025-06-15T15:06:41.500Z"]  # fmt: skip


@pytest.mark.parametrize("bad", [b"garbage", f"00-{'0' * 32}-{SPAN}-01".encode(), GOOD.upper().encode()])
def test_a_malformed_traceparent_logs_no_trace_id(bad):
    (line,) = log_lines(exchange(traceparent=bad))
    assert line["trace_id"] == ""


def test_the_span_s_trace_id_is_logged_when_tracing_is_on():
    span = tr.UnsampledSpan(TRACE, SPAN)
    (line,) = log_lines(exchange(span=span, traceparent=b"garbage"))
    assert line["trace_id"] == TRACE


def test_lines_are_handed_over_in_batches_and_all_written_at_close():
    lines = log_lines(*[exchange()] * 2500, max_batch=1000)
    assert len(lines) == 2500


def test_a_client_gone_before_any_answer_is_logged_as_499():
    (line,) = log_lines(exchange(status=0))
    assert line["status"] == 499


class BlockedStream:
    """stdout as a full pipe: write() blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data = bytearray()

    def write(self, blob: bytes) -> None:
        self.release.wait(10)
        self.data += blob

    def flush(self) -> None:
        pass


def test_a_blocked_stdout_drops_lines_instead_of_holding_the_loop():
    stream = BlockedStream()
    log = RequestLog(namespace="n", revision="r", instance="i", stream=stream, max_batch=10, max_pending=2)
    for _ in range(100):  # 10 batches: 2 pending (and maybe one in the writer's hands), the rest dropped
        log.record(exchange())
    assert 70 <= log.dropped <= 80
    assert log.lines + log.dropped == 100
    stream.release.set()
    log.close()
    assert stream.data.count(b"\n") == 100 - log.dropped


# -- settings


@pytest.mark.parametrize(
    ("argv", "env", "on"),
    [
        ([], {}, True),
        (["--no-request-log"], {}, False),
        (["--request-log"], {"EBB_QUEUE_REQUEST_LOG": "false"}, True),
        (["--request-log", "--log-level", "info"], {}, True),
        (["--request-log", "false"], {}, False),
        (["--request-log=0"], {}, False),
        ([], {"EBB_QUEUE_REQUEST_LOG": "false"}, False),
        ([], {"EBB_QUEUE_REQUEST_LOG": "OFF"}, False),
        (["--request-log", "yes"], {"EBB_QUEUE_REQUEST_LOG": "false"}, True),
    ],
)
def test_request_log_switch(argv, env, on):
    assert load(["--app-port", "8080", *argv], env).request_log is on


def test_request_log_bad_value_names_the_key():
    with pytest.raises(SettingsError, match="request-log = 'sometimes', must be true or false"):
        load(["--app-port", "8080"], {"EBB_QUEUE_REQUEST_LOG": "sometimes"})


def test_metrics_port():
    assert load(["--app-port", "8080"], {}).metrics_port == 0
    assert load(["--app-port", "8080"], {"EBB_QUEUE_METRICS_PORT": "9091"}).metrics_port == 9091
    assert load(["--app-port", "8080", "--metrics-port", "9092"], {}).metrics_port == 9092
    with pytest.raises(SettingsError, match="metrics-port"):
        load(["--app-port", "8080", "--metrics-port", "x"], {})


@pytest.mark.parametrize(
    ("now", "started", "waiting", "kind"),
    [
        (10.0, False, True, "waiting"),
        (10.0, False, False, "request"),  # a started response outlives timeoutSeconds
        (5.0, False, False, "response_start"),
        (5.0, False, True, "response_start"),
        (6.0, True, False, "idle"),
    ],
)
def test_timeout_kinds(now, started, waiting, kind):
    limits = Limits(10, 5, 2)
    body = limits.expired(now, 0.0, 4.0 if started else 0.0, started, waiting)
    assert limits.kind_of(body, waiting) == kind


# -- through the proxy


async def test_a_request_is_counted_and_logged_with_its_latency_status_and_bytes():
    clock = Clock()
    stream = io.BytesIO()
    log = RequestLog(namespace="default", revision="hello", instance="i", stream=stream, clock=clock)
    proxy = Proxy(app_port=8080, clock=clock, request_log=log)
    app = pooled_app(proxy.pool)
    conn, down = client(proxy)
    conn.data_received(
        b"POST /x?y=1 HTTP/1.1\r\nHost: h\r\nKnative-Serving-Tag: blue\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert app.transport.out.endswith(b"\r\n\r\nhello")
    assert head_of(app.transport.out)["knative-serving-tag"] == "blue"  # passed on as is
    assert proxy.in_flight == 1
    clock.now += 0.25
    app.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes")
    assert down.out.startswith(b"HTTP/1.1 201 Created") and down.out.endswith(b"yes")
    assert proxy.tally.by_tag[b"blue"] == [0, 1, 0, 0, 0]
    assert proxy.tally.sums[TWO_XX] == pytest.approx(0.25)
    log.close()
    (line,) = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/x", 201)
    assert (line["bytes_in"], line["bytes_out"], line["latency_ms"]) == (5, 3, 250.0)


async def test_overload_and_timeouts_are_counted_by_reason_and_kind():
    proxy = Proxy(app_port=8080, container_concurrency=1, queue_depth=0, timeout_s=0.001)
    pooled_app(proxy.pool)
    first, _ = client(proxy)
    first.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # holds the only slot
    second, down = client(proxy)
    second.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert down.out.startswith(b"HTTP/1.1 503")
    assert proxy.tally.rejected == {"overload": 1}
    assert proxy.tally.by_tag[b""][FIVE_XX] == 1  # the 503 is a 5xx answer too
    first.active.check_timeouts()  # timeoutSeconds passed (the test does not wait for the loop's timer)
    assert proxy.tally.timeouts["request"] == 1
    assert proxy.tally.by_tag[b""][FIVE_XX] == 2  # and the 504


async def test_a_client_gone_before_the_answer_counts_as_499():
    proxy = Proxy(app_port=8080)
    pooled_app(proxy.pool)
    conn, _ = client(proxy)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.connection_lost(None)
    assert proxy.tally.by_tag[b""] == [0, 0, 0, 1, 0]


# -- tracing through the proxy


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    t = tr.setup("queue", {"EBB_TRACING": "1"}, exporter=exporter, set_global=False)
    yield t, exporter
    t.shutdown()


async def traced_request(tracing, headers: bytes, status: bytes = b"200 OK"):
    proxy = Proxy(app_port=8080, span_attributes={"ebb.revision": "hello-00001"})
    proxy.tracing = tracing
    app = pooled_app(proxy.pool)
    conn, down = client(proxy)
    conn.data_received(b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    sent = head_of(app.transport.out)
    app.data_received(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    assert down.out.startswith(b"HTTP/1.1 " + status)
    return sent


async def test_the_queue_continues_the_callers_trace_and_the_app_sees_it(traced):
    t, exporter = traced
    sent = await traced_request(t, b"traceparent: " + GOOD.encode() + b"\r\ntracestate: v=1\r\n")
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.name == "GET"
    assert f"{span.context.trace_id:032x}" == TRACE
    assert f"{span.parent.span_id:016x}" == SPAN and span.parent.is_remote
    assert span.attributes["url.path"] == "/p"
    assert span.attributes["ebb.revision"] == "hello-00001"
    assert span.attributes["http.response.status_code"] == 200
    down = tr.parse_traceparent(sent["traceparent"])
    assert (down.trace_id, down.span_id, down.sampled) == (TRACE, f"{span.context.span_id:016x}", True)
    assert sent["tracestate"] == "v=1"


@pytest.mark.parametrize(
    "bad", [b"garbage", f"00-{TRACE}-{'0' * 16}-01".encode(), GOOD.upper().encode(), f"ff-{TRACE}-{SPAN}-01".encode()]
)
async def test_a_malformed_traceparent_is_ignored_and_a_new_trace_starts(traced, bad):
    t, exporter = traced
    sent = await traced_request(t, b"traceparent: " + bad + b"\r\n", b"502 Bad Gateway")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE
    assert not span.status.is_ok  # a 5xx
    down = tr.parse_traceparent(sent["traceparent"])
    assert down.trace_id == f"{span.context.trace_id:032x}"  # ours replaced the bad one


async def test_sampled_out_still_carries_the_trace_with_the_flag_cleared():
    exporter = InMemorySpanExporter()
    env = {"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    t = tr.setup("queue", env, exporter=exporter, set_global=False)
    unsampled = f"00-{TRACE}-{SPAN}-00"
    sent = await traced_request(t, b"traceparent: " + unsampled.encode() + b"\r\ntracestate: v=1\r\n")
    # Nothing is recorded here: the caller's header goes on as it came, same decision.
    assert (sent["traceparent"], sent["tracestate"]) == (unsampled, "v=1")
    sent = await traced_request(t, b"")  # a new trace, sampled out at ratio 0
    assert tr.parse_traceparent(sent["traceparent"]).sampled is False
    assert exporter.get_finished_spans() == ()
    t.shutdown()


@pytest.mark.parametrize(
    ("sampler", "incoming", "passed_on"),
    [
        ("parentbased_traceidratio", f"00-{TRACE}-{SPAN}-00", True),  # unsampled caller: as it came
        ("parentbased_always_on", f"00-{TRACE}-{SPAN}-00", True),
        ("parentbased_traceidratio", f"00-{TRACE}-{SPAN}-01", False),  # sampled: our span
        ("traceidratio", f"00-{TRACE}-{SPAN}-00", False),  # decides by trace id, not the flag
        ("parentbased_traceidratio", f"00-{TRACE}-{'0' * 16}-00", False),  # malformed
        ("parentbased_traceidratio", f"01-{TRACE}-{SPAN}-00", False),  # not version 00: parsed in full
        ("parentbased_traceidratio", None, False),
    ],
)
def test_http_hop_passes_an_unsampled_callers_header_on(sampler, incoming, passed_on):
    env = {"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": "0"}
    t = tr.setup("queue", env, exporter=InMemorySpanExporter(), set_global=False)
    span, lines = t.http_hop(b"GET", None if incoming is None else incoming.encode(), None)
    assert (span is None and lines is None) is passed_on
    if not passed_on:
        sent = tr.parse_traceparent(lines.split(b": ", 1)[1].split(b"\r\n")[0])
        assert sent is not None and sent.span_id != SPAN
        t.end_http_span(span, 200)
    t.shutdown()


async def test_with_tracing_off_the_headers_pass_through_untouched():
    headers = b"traceparent: garbage\r\ntracestate: v=1\r\n"
    sent = await traced_request(None, headers)
    assert (sent["traceparent"], sent["tracestate"]) == ("garbage", "v=1")


@pytest.mark.parametrize(
    ("sampler", "ratio", "parent", "trace_id", "sampled"),
    [
        ("always_on", 1.0, None, 5, True),
        ("always_off", 1.0, tr.TraceParent(TRACE, SPAN, 1), 5, False),
        ("traceidratio", 0.5, None, (1 << 63) - 1, True),
        ("traceidratio", 0.5, None, 1 << 63, False),
        ("traceidratio", 0.5, tr.TraceParent(TRACE, SPAN, 0), (7 << 64) | 1, True),  # ignores the parent
        ("parentbased_always_off", 1.0, tr.TraceParent(TRACE, SPAN, 1), 5, True),
        ("parentbased_always_on", 1.0, tr.TraceParent(TRACE, SPAN, 0), 5, False),
        ("parentbased_always_on", 1.0, None, 5, True),
        ("parentbased_traceidratio", 0.01, None, 1 << 62, False),
        ("parentbased_traceidratio", 0.01, None, 1 << 40, True),
        ("parentbased_traceidratio", 0.0, tr.TraceParent(TRACE, SPAN, 1), 0, True),
    ],
)
def test_sampling_is_opentelemetrys(sampler, ratio, parent, trace_id, sampled):
    assert tr.sample(sampler, ratio, parent, trace_id) is sampled
    sdk = tr.make_sampler(tr.TracingSettings(enabled=True, sampler=sampler, sampler_arg=ratio))
    context = tr.remote_context(parent.header()) if parent is not None else None
    assert sdk.should_sample(context, trace_id, "GET").decision.is_sampled() is sampled


# -- rotation of a stdout that is a file (`ebb up`)


def test_a_log_file_is_rotated_by_size_and_keeps_its_newest_copies(tmp_path):
    path = tmp_path / "i.queue.log"
    with open(path, "ab") as stream:  # as the local runtime opens it for the queue
        log = RequestLog(namespace="n", revision="r", instance="i", stream=stream, max_batch=10,
                         rotate_bytes=5_000, rotate_keep=2)  # fmt: skip
        assert log.rotation is not None and log.rotation.path == str(path)
        for _ in range(200):
            log.record(exchange())
        log.close()
        stream.write(b"stderr line\n")  # another writer on the same fd goes on after the cut
    assert log.rotation.rotations >= 2
    assert path.stat().st_size < 5_000 + 4_000  # at most one batch past the limit
    assert {p.name for p in tmp_path.iterdir()} == {"i.queue.log", "i.queue.log.1", "i.queue.log.2"}
    current = path.read_bytes()
    assert current.endswith(b"stderr line\n") and not current.startswith(b"\0")  # truncated, not sparse
    for rotated in (path, tmp_path / "i.queue.log.1"):
        lines = rotated.read_bytes().splitlines()
        assert all(json.loads(line)["logger"] == "ebb.queue.request" for line in lines if line != b"stderr line")


def test_only_a_file_opened_for_appending_is_rotated(tmp_path):
    assert RequestLog(namespace="n", revision="r", instance="i", stream=io.BytesIO()).rotation is None
    with open(tmp_path / "w.log", "wb") as stream:  # truncating the file would leave a hole
        assert RequestLog(namespace="n", revision="r", instance="i", stream=stream).rotation is None
    read, write = os.pipe()
    with os.fdopen(write, "wb") as stream, os.fdopen(read, "rb"):
        assert RequestLog(namespace="n", revision="r", instance="i", stream=stream).rotation is None
