"""The data plane's metrics, request logs and traces, with real processes.

The queue (`python -m ebb.queue`) in front of the hello sample app, scraped at the metrics
address of its ready file; and, for traces, the activator in front of it, holding a
request for a revision at zero until the test brings an instance up, with both exporting
spans over OTLP to a receiver in this test. Blocking HTTP calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from helpers import QUEUE_METRIC_NAMES
from prometheus_client.parser import text_string_to_metric_families
from queue_helpers import REVISION, request, run_app, run_queue, wait_until
from test_activator_proxy import FakeController, activator, controller_server, instance, synced
from test_queue_reporter import fake_autoscaler

from ebb.common import tracing as tr

NS = "default"
GUARD_S = 20.0  # hang guard, not a performance threshold
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
GATEWAY_SPAN = "00f067aa0ba902b7"
REV = {"namespace": NS, "revision": REVISION}


def metrics_address(queue) -> str:
    ready = Path(queue.args[queue.args.index("--ready-file") + 1])
    return json.loads(ready.read_text())["metrics"]


def scrape(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str | None = None, **labels) -> float:
    """The value of the one sample matching `labels`, 0 when there is none (yet)."""
    for s in families[family].samples:
        if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def requests_total(families: dict, **labels) -> float:
    return sample(families, "ebb_queue_requests", "ebb_queue_requests_total", **REV, **labels)


@pytest.fixture(scope="module")
def app():
    with run_app() as app:
        yield app


# -- metrics


def test_queue_metrics_parse_and_follow_the_traffic(app, tmp_path):
    with run_queue(tmp_path, app.port, "--container-concurrency", "1") as queue:
        families = scrape(metrics_address(queue))
        assert QUEUE_METRIC_NAMES <= set(families)
        assert sample(families, "ebb_queue_ready", **REV) == 1
        for _ in range(3):
            assert queue.request("GET", "/")[0] == 200
        assert queue.request("GET", "/", headers={"Knative-Serving-Tag": "blue"})[0] == 200
        assert queue.request("GET", "/?status=404")[0] == 404
        assert queue.request("GET", "/?status=503")[0] == 503
        families = scrape(metrics_address(queue))
        assert requests_total(families, response_class="2xx", route_tag="") == 3
        assert requests_total(families, response_class="2xx", route_tag="blue") == 1
        assert requests_total(families, response_class="4xx", route_tag="") == 1
        assert requests_total(families, response_class="5xx", route_tag="") == 1
        hist = "ebb_queue_request_duration_seconds"
        assert sample(families, hist, hist + "_count", response_class="2xx", **REV) == 4
        assert sample(families, hist, hist + "_bucket", response_class="2xx", le="+Inf", **REV) == 4
        assert sample(families, "ebb_queue_inflight_requests", **REV) == 0

        # One request in the app (CC=1), ten waiting (10 x CC), the twelfth refused.
        with ThreadPoolExecutor(11) as pool:
            held = [pool.submit(queue.request, "GET", "/?gate=obs")]
            wait_until(lambda: app.waiting("obs") == 1, what="the first request in the app")
            held += [pool.submit(queue.request, "GET", "/") for _ in range(10)]

            def ten_waiting():
                families = scrape(metrics_address(queue))
                return sample(families, "ebb_queue_queue_depth", **REV) == 10 and families

            families = wait_until(ten_waiting, what="ten requests waiting")
            assert sample(families, "ebb_queue_inflight_requests", **REV) == 1
            status, _, body = queue.request("GET", "/")
            assert status == 503 and body.startswith(b"overload")
            app.release("obs")
            assert [f.result()[0] for f in held] == [200] * 11
        families = scrape(metrics_address(queue))
        rejected = "ebb_queue_rejected"
        assert sample(families, rejected, rejected + "_total", reason="overload", **REV) == 1
        assert requests_total(families, response_class="2xx", route_tag="") == 3 + 11
        assert requests_total(families, response_class="5xx", route_tag="") == 2
        assert sample(families, "ebb_queue_queue_depth", **REV) == 0


def test_queue_timeouts_are_counted_by_kind(app, tmp_path):
    with run_queue(tmp_path, app.port, "--response-start-timeout-seconds", "200ms") as queue:
        status, _, body = queue.request("GET", "/?sleep=2000")
        assert status == 504 and b"responseStartTimeoutSeconds" in body
        families = scrape(metrics_address(queue))
        timeouts = "ebb_queue_timeouts"
        assert sample(families, timeouts, timeouts + "_total", kind="response_start", **REV) == 1
        assert sample(families, timeouts, timeouts + "_total", kind="request", **REV) == 0
        assert requests_total(families, response_class="5xx", route_tag="") == 1


# -- request logs


def request_lines(queue) -> list[dict]:
    lines = [json.loads(line) for line in queue.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "ebb.queue.request"]


@pytest.mark.parametrize(("args", "logged"), [((), True), (("--no-request-log",), False)])
def test_request_log_on_and_off(app, tmp_path, args, logged):
    with run_queue(tmp_path, app.port, *args) as queue:
        for i in range(5):
            assert queue.request("GET", f"/?status={200 + i}&secret=x")[0] == 200 + i
        assert queue.request("POST", "/echo", body=b"12345")[0] == 200
    # Stopped: the last lines were flushed at shutdown.
    lines = request_lines(queue)
    if not logged:
        assert lines == []
        return
    assert [line["status"] for line in lines] == [200, 201, 202, 203, 204, 200]
    assert {line["path"] for line in lines} == {"/", "/echo"}  # no query strings
    last = lines[-1]
    assert (last["method"], last["bytes_in"], last["bytes_out"]) == ("POST", 5, 5)
    assert (last["namespace"], last["revision"], last["instance"]) == (NS, REVISION, "test-instance")
    assert last["latency_ms"] > 0 and last["trace_id"] == ""


def test_request_log_carries_the_callers_trace_id_with_tracing_off(app, tmp_path):
    with run_queue(tmp_path, app.port) as queue:
        parent = f"00-{TRACE}-{GATEWAY_SPAN}-01"
        status, _, body = queue.request("GET", "/headers", headers={"traceparent": parent})
        assert status == 200
        assert json.loads(body)["traceparent"] == parent  # untouched when tracing is off
    (line,) = request_lines(queue)
    assert line["trace_id"] == TRACE


# -- traces: gateway -> activator -> queue -> app


class OtlpReceiver:
    """A minimal OTLP/gRPC trace receiver: the spans the processes export."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        spans = self.spans = []

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request, context):  # noqa: N802 (gRPC's naming)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        spans.extend((service["service.name"], span) for span in scope.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def http_spans(self, trace_id: str) -> dict[str, list]:
        """Server spans of HTTP requests in `trace_id`, by service name."""
        found: dict[str, list] = {}
        for service, span in self.spans:
            if span.trace_id.hex() == trace_id and span.name == "GET":
                found.setdefault(service, []).append(span)
        return found


@contextlib.asynccontextmanager
async def traced_env(monkeypatch):
    receiver = OtlpReceiver()
    await receiver.server.start()
    monkeypatch.setenv("EBB_TRACING", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: export soon after each request
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)  # each process names itself
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    try:
        yield receiver
    finally:
        await receiver.server.stop(0)


async def spans_of(receiver: OtlpReceiver, trace_id: str) -> tuple:
    """(activator span, queue span) of `trace_id`, once both have been exported."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while True:
        found = receiver.http_spans(trace_id)
        if "ebb-activator" in found and "ebb-queue" in found:
            (act,), (queue,) = found["ebb-activator"], found["ebb-queue"]
            return act, queue
        assert loop.time() < deadline, f"spans of {trace_id} not exported: {found}"
        await asyncio.sleep(0.05)


def gateway_get(act, path: str, headers: dict[str, str]):
    return act.get("r1", path, headers=headers)


async def test_one_trace_from_gateway_through_a_held_request_to_the_app(tmp_path, monkeypatch):
    fake = FakeController()
    fake.publish("r1")  # at zero: no instance yet
    async with (
        traced_env(monkeypatch) as receiver,
        controller_server(fake) as controller_port,
        fake_autoscaler() as (_, autoscaler_port, _),
        activator(tmp_path, controller_port, autoscaler_port) as act,
    ):
        await synced(act)  # its first snapshot names r1
        parent = f"00-{TRACE}-{GATEWAY_SPAN}-01"  # what the gateway sent
        held = asyncio.ensure_future(asyncio.to_thread(gateway_get, act, "/headers", {"traceparent": parent}))
        await asyncio.sleep(0.3)
        assert not held.done()  # the activator holds it
        async with instance(tmp_path) as (address, _, _):
            fake.publish("r1", ready=[address])
            status, _, body = await held
            assert status == 200, body
            seen = tr.parse_traceparent(json.loads(body)["traceparent"])  # what the app got
            act_span, queue_span = await spans_of(receiver, TRACE)
            # gateway -> activator -> queue -> app, each the parent of the next
            assert act_span.parent_span_id.hex() == GATEWAY_SPAN
            assert queue_span.parent_span_id.hex() == act_span.span_id.hex()
            assert (seen.trace_id, seen.span_id) == (TRACE, queue_span.span_id.hex())
            assert [event.name for event in act_span.events] == ["instance acquired"]

            # No traceparent from the caller: the activator starts the trace, the queue
            # continues it, the app sees it.
            status, _, body = await asyncio.to_thread(gateway_get, act, "/headers", {})
            assert status == 200
            seen = tr.parse_traceparent(json.loads(body)["traceparent"])
            act_span, queue_span = await spans_of(receiver, seen.trace_id)
            assert not act_span.parent_span_id
            assert (queue_span.parent_span_id, seen.span_id) == (act_span.span_id, queue_span.span_id.hex())


@pytest.mark.parametrize("bad", ["garbage", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{GATEWAY_SPAN}-01"])
async def test_a_malformed_traceparent_starts_a_new_trace_and_the_request_succeeds(tmp_path, monkeypatch, bad):
    fake = FakeController()
    async with traced_env(monkeypatch) as receiver, instance(tmp_path) as (address, _, _):
        fake.publish("r1", ready=[address])
        async with (
            controller_server(fake) as controller_port,
            fake_autoscaler() as (_, autoscaler_port, _),
            activator(tmp_path, controller_port, autoscaler_port) as act,
        ):
            await synced(act)  # its first snapshot names r1 and its instance
            await _malformed_request(receiver, act, bad)


async def _malformed_request(receiver: OtlpReceiver, act, bad: str) -> None:
    status, _, body = await asyncio.to_thread(gateway_get, act, "/headers", {"traceparent": bad})
    assert status == 200, body
    seen = tr.parse_traceparent(json.loads(body)["traceparent"])
    assert seen is not None and seen.trace_id != TRACE.lower()
    act_span, queue_span = await spans_of(receiver, seen.trace_id)
    assert not act_span.parent_span_id  # a new trace: the bad header was ignored
    assert queue_span.parent_span_id == act_span.span_id


async def test_queue_alone_traces_with_its_metrics_port_and_request_log(tmp_path, monkeypatch):
    """The queue as the first hop: it starts the trace; its log line names it."""
    async with traced_env(monkeypatch) as receiver:
        with run_app() as app, run_queue(tmp_path, app.port) as queue:
            status, _, body = await asyncio.to_thread(request, queue.http_port, "GET", "/headers")
            assert status == 200
            seen = tr.parse_traceparent(json.loads(body)["traceparent"])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + GUARD_S
            while "ebb-queue" not in receiver.http_spans(seen.trace_id):
                assert loop.time() < deadline, "the queue's span was not exported"
                await asyncio.sleep(0.05)
            (span,) = receiver.http_spans(seen.trace_id)["ebb-queue"]
            assert span.span_id.hex() == seen.span_id and not span.parent_span_id
        (line,) = request_lines(queue)
        assert line["trace_id"] == seen.trace_id
