"""The activator's observability without sockets: per-revision counts, holds, refusals and
timeouts, the families built from them, and the trace carried through a hold, driven
through the real activator with fake transports."""

from __future__ import annotations

import asyncio

import pytest
from helpers import ACTIVATOR_METRIC_NAMES
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_metrics_queue import GOOD, SPAN, TRACE, client, head_of, pooled_app, scrape, value

from ebb.activator.endpoints import RevisionSpec
from ebb.activator.metrics import ActivatorCollector
from ebb.activator.proxy import Activator
from ebb.activator.settings import load
from ebb.common import tracing as tr

ADDRESS = "127.0.0.1:41000"
R1 = {"namespace": "default", "revision": "r1"}
UNROUTED = {"namespace": "", "revision": ""}


def request(revision: str = "r1", extra: bytes = b"") -> bytes:
    return (
        b"GET /p HTTP/1.1\r\nHost: r1.default\r\nKnative-Serving-Namespace: default\r\n"
        b"Knative-Serving-Revision: " + revision.encode() + b"\r\n" + extra + b"\r\n"
    )


def activator_with(*specs: RevisionSpec, **kwargs) -> Activator:
    act = Activator(probe=_never, **kwargs)
    act.apply(list(specs), [], snapshot=True)
    return act


async def _never(host: str, port: int, timeout_s: float) -> bool:
    await asyncio.sleep(3600)
    return False


def instance_app(act: Activator, name: str = "r1"):
    """The fake app behind the revision's one instance (its pool's idle connection)."""
    (instance,) = act.revision("default", name).throttler.instances
    return pooled_app(instance.handle)


def test_metrics_port_flag():
    assert load([], {}).metrics_port == 0
    assert load(["--metrics-port", "9090"], {}).metrics_port == 9090
    assert load([], {"EBB_ACTIVATOR_METRICS_PORT": "9091"}).metrics_port == 9091


async def test_every_name_is_exported_with_per_revision_gauges():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,)), RevisionSpec("default", "r2"))
    families = scrape(ActivatorCollector(act))
    assert ACTIVATOR_METRIC_NAMES <= set(families)
    assert value(families, "ebb_activator_revisions") == 2
    assert value(families, "ebb_activator_instances", **R1) == 1
    assert value(families, "ebb_activator_instances", namespace="default", revision="r2") == 0
    total = "ebb_activator_rejected_total"
    for reason in ("not_synced", "unknown_revision", "removed"):
        assert value(families, "ebb_activator_rejected", total, reason=reason, **UNROUTED) == 0
    assert value(families, "ebb_activator_rejected", total, reason="overload", **R1) == 0
    assert value(families, "ebb_activator_timeouts", "ebb_activator_timeouts_total", kind="waiting", **R1) == 0


async def test_a_forwarded_request_is_counted_by_revision_class_and_tag():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,)))
    app = instance_app(act)
    conn, down = client(act)
    conn.data_received(request(extra=b"Knative-Serving-Tag: canary\r\n"))
    assert scrape(ActivatorCollector(act))["ebb_activator_inflight_requests"].samples[0].value == 1
    app.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert down.out.startswith(b"HTTP/1.1 404")
    families = scrape(ActivatorCollector(act))
    total = "ebb_activator_requests_total"
    assert value(families, "ebb_activator_requests", total, response_class="4xx", route_tag="canary", **R1) == 1
    hist = "ebb_activator_request_duration_seconds"
    assert value(families, hist, hist + "_count", response_class="4xx", **R1) == 1
    assert value(families, "ebb_activator_inflight_requests", **R1) == 0
    assert value(families, "ebb_activator_held_requests", "ebb_activator_held_requests_total", **R1) == 0


async def test_a_held_request_is_counted_then_its_hold_time_observed():
    act = activator_with(RevisionSpec("default", "r1"))  # at zero: no instance
    conn, down = client(act)
    conn.data_received(request())
    families = scrape(ActivatorCollector(act))
    assert value(families, "ebb_activator_queue_depth", **R1) == 1
    assert value(families, "ebb_activator_inflight_requests", **R1) == 0
    assert value(families, "ebb_activator_held_requests", "ebb_activator_held_requests_total", **R1) == 1
    act.apply([RevisionSpec("default", "r1", addresses=(ADDRESS,))], [], snapshot=False)  # it is up
    app = instance_app(act)
    await asyncio.sleep(0)  # the held request goes on the next turn of the loop
    assert head_of(app.transport.out)["k-proxy-request"] == "activator"
    app.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert down.out.endswith(b"ok")
    families = scrape(ActivatorCollector(act))
    assert value(families, "ebb_activator_queue_depth", **R1) == 0
    hold = "ebb_activator_hold_duration_seconds"
    assert value(families, hold, hold + "_count", **R1) == 1
    total = "ebb_activator_requests_total"
    assert value(families, "ebb_activator_requests", total, response_class="2xx", route_tag="", **R1) == 1


async def test_refusals_by_reason():
    act = Activator(probe=_never, queue_depth=0)
    conn, down = client(act)
    conn.data_received(request())  # before the controller's snapshot
    assert down.out.startswith(b"HTTP/1.1 503")
    act.apply([RevisionSpec("default", "r1")], [], snapshot=True)
    for name in ("nope", "r1"):  # unknown; then known, at zero, with no room to wait
        conn, down = client(act)
        conn.data_received(request(name))
        assert down.out.startswith(b"HTTP/1.1 404" if name == "nope" else b"HTTP/1.1 503")
    families = scrape(ActivatorCollector(act))
    total = "ebb_activator_rejected_total"
    assert value(families, "ebb_activator_rejected", total, reason="not_synced", **UNROUTED) == 1
    assert value(families, "ebb_activator_rejected", total, reason="unknown_revision", **UNROUTED) == 1
    assert value(families, "ebb_activator_rejected", total, reason="overload", **R1) == 1
    # Unrouted refusals are not requests of a revision: no series with a made-up name.
    requests = families["ebb_activator_requests"].samples
    assert [(s.labels["revision"], s.labels["response_class"]) for s in requests] == [("r1", "5xx")]


async def test_a_hold_that_outlasts_timeout_seconds_is_a_waiting_timeout():
    act = activator_with(RevisionSpec("default", "r1", timeout_s=1))
    conn, down = client(act)
    conn.data_received(request())
    ex = conn.active
    ex.t_start -= 1.0  # a second has passed (the test does not wait for the loop's timer)
    conn._on_timer()  # the connection's timer checks its active exchange
    assert down.out.startswith(b"HTTP/1.1 504")
    families = scrape(ActivatorCollector(act))
    assert value(families, "ebb_activator_timeouts", "ebb_activator_timeouts_total", kind="waiting", **R1) == 1
    assert value(families, "ebb_activator_queue_depth", **R1) == 0


async def test_a_held_request_keeps_its_trace_and_the_queue_gets_the_activators_span():
    exporter = InMemorySpanExporter()
    t = tr.setup("activator", {"EBB_TRACING": "1"}, exporter=exporter, set_global=False)
    act = activator_with(RevisionSpec("default", "r1"))
    act.tracing = t
    conn, down = client(act)
    conn.data_received(request(extra=b"traceparent: " + GOOD.encode() + b"\r\n"))
    act.apply([RevisionSpec("default", "r1", addresses=(ADDRESS,))], [], snapshot=False)
    app = instance_app(act)
    await asyncio.sleep(0)
    sent = head_of(app.transport.out)
    app.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE and f"{span.parent.span_id:016x}" == SPAN
    assert (span.attributes["ebb.namespace"], span.attributes["ebb.revision"]) == ("default", "r1")
    (event,) = span.events
    assert event.name == "instance acquired" and event.attributes["ebb.instance"] == ADDRESS
    to_queue = tr.parse_traceparent(sent["traceparent"])
    assert (to_queue.trace_id, to_queue.span_id) == (TRACE, f"{span.context.span_id:016x}")
    t.shutdown()


@pytest.mark.parametrize("bad", [b"garbage", b"00-xyz-01"])
async def test_a_malformed_traceparent_does_not_fail_the_request(bad):
    t = tr.setup("activator", {"EBB_TRACING": "1"}, exporter=InMemorySpanExporter(), set_global=False)
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,)))
    act.tracing = t
    app = instance_app(act)
    conn, down = client(act)
    conn.data_received(request(extra=b"traceparent: " + bad + b"\r\n"))
    assert tr.parse_traceparent(head_of(app.transport.out)["traceparent"]) is not None
    app.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert down.out.startswith(b"HTTP/1.1 200")
    t.shutdown()


async def test_with_two_activators_each_uses_its_own_instances_and_all_with_fewer():
    two = (RevisionSpec("default", "r1", addresses=("127.0.0.1:41001", "127.0.0.1:41002"),
                        container_concurrency=10),)
    act = activator_with(*two)
    assert [i.address for i in act.revision("default", "r1").throttler.instances] == [
        "127.0.0.1:41001", "127.0.0.1:41002"
    ]
    act.apply([], [], False, (1, 2))  # a second activator joined; this one is number 1
    throttler = act.revision("default", "r1").throttler
    assert [(i.address, i.capacity) for i in throttler.instances] == [("127.0.0.1:41002", 10)]
    act.apply([], [], False, (1, 3))  # a third: fewer instances than activators
    assert [(i.address, i.capacity) for i in throttler.instances] == [
        ("127.0.0.1:41002", 4), ("127.0.0.1:41001", 4)
    ]
    act.apply([], [], False, (0, 1))  # alone again
    assert sorted((i.address, i.capacity) for i in throttler.instances) == [
        ("127.0.0.1:41001", 10), ("127.0.0.1:41002", 10)
    ]
