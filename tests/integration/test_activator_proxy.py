"""The activator as a process (`python -m ebb.activator`) between clients and real queues.

Around it, in this test's event loop: a fake controller (EndpointsService, whose state the
test publishes) and a fake autoscaler (StatsService, recording every Stat). Behind it: the
hello sample app behind a real `python -m ebb.queue`. Blocking HTTP calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import hard_open_files_limit_below, low_open_files_limit, websocket_echo
from queue_helpers import (
    PYTHON,
    REPO,
    REVISION,
    RawResponseReader,
    free_port,
    request,
    run_app,
    run_queue,
    stop_process,
    wait_until,
)
from test_controller_endpoints import EndpointsState, serving
from test_queue_reporter import fake_autoscaler, until

from ebb.api.networking.v1 import endpoints_pb2, endpoints_pb2_grpc
from ebb.common.server import ServiceCore
from ebb.controller.runtime import RevisionKey

HELLO = f"Hello from {REVISION}!\n".encode()
NS = "default"
GUARD_S = 20.0  # hang guard, not a performance threshold
ENDPOINTS_SERVICE = endpoints_pb2.DESCRIPTOR.services_by_name["EndpointsService"].full_name


class FakeController(endpoints_pb2_grpc.EndpointsServiceServicer):
    """Endpoints the test publishes: a snapshot to each new stream, then every change."""

    def __init__(self) -> None:
        self.state: dict[str, endpoints_pb2.RevisionEndpoints] = {}
        self.watchers: set[asyncio.Queue] = set()
        self.streams = 0

    def publish(self, name: str, ready=(), not_ready=(), cc: int = 0, timeout_s: int = 60) -> None:
        rev = endpoints_pb2.RevisionEndpoints(
            revision=endpoints_pb2.RevisionKey(namespace=NS, name=name),
            addresses=list(ready),
            not_ready_addresses=list(not_ready),
            container_concurrency=cc,
            timeout_seconds=timeout_s,
        )
        self.state[name] = rev
        self._send(endpoints_pb2.WatchEndpointsResponse(revisions=[rev]))

    def remove(self, name: str) -> None:
        del self.state[name]
        self._send(endpoints_pb2.WatchEndpointsResponse(removed=[endpoints_pb2.RevisionKey(namespace=NS, name=name)]))

    def _send(self, msg) -> None:
        for watcher in self.watchers:
            watcher.put_nowait(msg)

    async def WatchEndpoints(self, request, context):  # noqa: N802 - gRPC's naming
        self.streams += 1
        updates: asyncio.Queue = asyncio.Queue()
        self.watchers.add(updates)
        try:
            yield endpoints_pb2.WatchEndpointsResponse(revisions=list(self.state.values()), snapshot=True)
            while True:
                yield await updates.get()
        finally:
            self.watchers.discard(updates)


@contextlib.asynccontextmanager
async def controller_server(fake: FakeController, port: int = 0):
    """The fake served the way the controller serves it (ServiceCore: health, reflection)."""
    core = ServiceCore("fake-controller", port=port, grace_s=0)
    core.add(partial(endpoints_pb2_grpc.add_EndpointsServiceServicer_to_server, fake), ENDPOINTS_SERVICE)
    await core.start()
    try:
        yield core.bound_port
    finally:
        await core.shutdown()


@dataclass
class ActivatorProcess:
    proc: subprocess.Popen
    http_port: int
    grpc: str
    log_path: Path

    def get(self, revision: str | None, path: str = "/", headers: dict[str, str] | None = None):
        """A request as the gateway sends it (the revision named in headers); blocking."""
        named = {} if revision is None else {"Knative-Serving-Namespace": NS, "Knative-Serving-Revision": revision}
        return request(self.http_port, "GET", path, headers={"Host": "hello.default.example", **named, **(headers or {})})

    async def aget(self, revision: str | None, path: str = "/", **kwargs):
        return await asyncio.to_thread(self.get, revision, path, **kwargs)


def spawn(ready: Path, log_path: Path, *args: str, preexec_fn=None) -> subprocess.Popen:
    argv = [PYTHON, "-m", "ebb.activator", "--http-port", "0", "--grpc-port", "0", "--ready-file", str(ready), *args]
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, stdout=log_file, stderr=log_file, cwd=REPO, preexec_fn=preexec_fn)


@contextlib.asynccontextmanager
async def activator(tmp_path: Path, controller_port: int, autoscaler_port: int, *args: str, preexec_fn=None):
    """`python -m ebb.activator` on free ports, until the block ends (SIGTERM, then kill)."""
    ready = tmp_path / f"activator-{free_port()}.json"
    log_path = ready.with_suffix(".log")
    peers = ("--controller", f"127.0.0.1:{controller_port}", "--autoscaler", f"127.0.0.1:{autoscaler_port}")
    proc = spawn(ready, log_path, *peers, "--drain-quiet-s", "0.05", *args, preexec_fn=preexec_fn)
    try:
        await asyncio.to_thread(wait_until, lambda: proc.poll() is not None or ready.exists(), what="the ready file")
        assert proc.poll() is None, log_path.read_text()
        bound = json.loads(ready.read_text())
        yield ActivatorProcess(proc, int(bound["http"].rsplit(":", 1)[1]), bound["grpc"], log_path)
    finally:
        await asyncio.to_thread(stop_process, proc)


@dataclass
class Mesh:
    controller: FakeController
    stats: object  # test_queue_reporter.FakeStatsService
    activator: ActivatorProcess


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, fake: FakeController | None = None, *activator_args: str, preexec_fn=None):
    """Fake controller and autoscaler, and the activator once it has the controller's
    snapshot (its own probe answers 200 only then): what `fake` holds is known to it."""
    fake = fake or FakeController()
    async with (
        controller_server(fake) as controller_port,
        fake_autoscaler() as (stats, autoscaler_port, _),
        activator(tmp_path, controller_port, autoscaler_port, *activator_args, preexec_fn=preexec_fn) as act,
    ):
        await synced(act)
        yield Mesh(fake, stats, act)


async def synced(act: ActivatorProcess) -> None:
    probe = {"K-Network-Probe": "activator"}
    await asyncio.to_thread(wait_until, lambda: act.get(None, headers=probe)[0] == 200, what="the activator to sync")


def controller_with(**revisions: dict) -> FakeController:
    fake = FakeController()
    for name, spec in revisions.items():
        fake.publish(name, **spec)
    return fake


@contextlib.asynccontextmanager
async def instance(tmp_path: Path, *queue_args: str, **app_env: str):
    """The hello app behind a real queue; yields the queue's address and the app."""
    with run_app(**app_env) as app:
        with run_queue(tmp_path, app.port, *queue_args) as queue:
            yield f"127.0.0.1:{queue.http_port}", app, queue


def pokes(stats) -> list:
    """Stats sent at once rather than per period (period 0): the activator's pokes."""
    return [s for s in stats.stats if s.instance.startswith("activator-") and s.period_seconds == 0]


# -- routing


async def test_unknown_revision_and_missing_headers_are_404(tmp_path):
    async with mesh(tmp_path, controller_with(known={})) as m:
        status, _, body = await m.activator.aget("nope")
        assert status == 404
        assert body == b"not found: unknown revision default/nope (not in the controller's endpoints)\n"
        status, _, body = await m.activator.aget(None)
        assert status == 404 and b"Knative-Serving-Revision" in body


async def test_more_clients_than_a_low_soft_open_files_limit_are_served(tmp_path):
    # Started with a soft limit of 128 open files, the activator raises its own to the
    # hard limit: 300 client connections held open, and a new client is still answered.
    if hard_open_files_limit_below(1024):
        pytest.skip("the hard limit on open files is too low here")
    async with mesh(tmp_path, controller_with(known={}), preexec_fn=low_open_files_limit(128)) as m:
        held = []
        try:
            for _ in range(300):
                held.append(socket.create_connection(("127.0.0.1", m.activator.http_port), timeout=10))
            await asyncio.sleep(0.5)  # let the activator accept them all
            status, _, _ = await m.activator.aget("nope")
            assert status == 404
        finally:
            for sock in held:
                sock.close()
        assert '"open_files_limit": ' in m.activator.log_path.read_text()


async def test_forwards_with_host_kept_and_proxy_header_added(tmp_path):
    async with instance(tmp_path) as (address, _, _), mesh(tmp_path, controller_with(r1={"ready": [address]})) as m:
        status, _, body = await m.activator.aget(
            "r1", "/headers", headers={"K-Proxy-Request": "spoofed", "X-Forwarded-For": "203.0.113.9"}
        )
        assert status == 200, body
        seen = {k.lower(): v for k, v in json.loads(body).items()}
        assert seen["host"] == "hello.default.example"
        assert seen["k-proxy-request"] == "activator"
        # the routing pair went on to the queue, which keeps it from the app
        assert "knative-serving-namespace" not in seen and "knative-serving-revision" not in seen
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1, 127.0.0.1"  # client, activator hop, queue hop
        assert seen["forwarded"] == "for=203.0.113.9, for=127.0.0.1"  # the chain the queue got
        assert "x-forwarded-proto" not in seen
        assert (await m.activator.aget("r1"))[::2] == (200, HELLO)
        payload = bytes(range(256)) * 12_000  # 3 MB each way, streamed
        named = {"Knative-Serving-Namespace": NS, "Knative-Serving-Revision": "r1"}
        status, _, echoed = await asyncio.to_thread(
            request, m.activator.http_port, "POST", "/echo", body=payload, headers=named
        )
        assert (status, echoed == payload) == (200, True)


# -- holding and waking


async def test_held_until_the_controller_lists_an_instance_and_the_poke_is_sent_at_once(tmp_path):
    async with instance(tmp_path) as (address, _, _), mesh(tmp_path, controller_with(r1={})) as m:
        held = asyncio.ensure_future(m.activator.aget("r1"))  # at zero: no instance
        await until(lambda: pokes(m.stats), "the poke")
        poke = pokes(m.stats)[0]
        assert not held.done()
        assert (poke.revision.namespace, poke.revision.name) == (NS, "r1")
        assert (poke.average_concurrency, poke.request_count) == (1.0, 1.0)
        m.controller.publish("r1", ready=[address])
        assert (await held)[::2] == (200, HELLO)
        # the per-second stats carry the activator's load for r1 too, under the same id
        def periodic():
            return [s for s in m.stats.stats if s.period_seconds > 0 and s.revision.name == "r1"]

        await until(periodic, "a periodic stat")
        periodic = periodic()
        assert periodic[0].instance == poke.instance
        assert sum(s.request_count for s in periodic) >= 1
        assert len(pokes(m.stats)) == 1


async def test_held_until_its_own_probe_finds_a_not_ready_instance_up(tmp_path):
    """The controller only ever lists the address as not ready: the activator's own probes
    find the queue up and forward."""
    port = free_port()
    async with mesh(tmp_path, controller_with(r1={"not_ready": [f"127.0.0.1:{port}"]})) as m:
        held = asyncio.ensure_future(m.activator.aget("r1"))
        await until(lambda: pokes(m.stats), "the poke")
        async with instance(tmp_path, "--http-port", str(port)):
            assert (await held)[::2] == (200, HELLO)
            assert (await m.activator.aget("r1"))[::2] == (200, HELLO)


async def test_a_unix_socket_instance_is_probed_and_served_through_its_socket(tmp_path):
    """The local runtime lists a queue as `unix:PATH`: the activator probes it there and
    forwards there, with the same headers as over TCP. Only the socket is listed, so a 200
    can only have come through it."""
    path = str(tmp_path / "q.sock")
    async with (
        instance(tmp_path, "--unix-socket", path),
        mesh(tmp_path, controller_with(r1={"not_ready": [f"unix:{path}"]})) as m,
    ):
        status, _, body = await m.activator.aget("r1", "/headers", headers={"X-Forwarded-For": "203.0.113.9"})
        assert status == 200, body
        seen = {k.lower(): v for k, v in json.loads(body).items()}
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1, 127.0.0.1"
        assert seen["k-proxy-request"] == "activator"
        for _ in range(3):
            assert (await m.activator.aget("r1"))[::2] == (200, HELLO)
        assert f"unix:{path}" in m.activator.log_path.read_text()  # "instance answered its probe"


async def test_a_websocket_goes_through_the_activator_and_a_queue_on_its_socket(tmp_path):
    path = str(tmp_path / "q.sock")
    big = bytes(range(256)) * 400
    async with (
        instance(tmp_path, "--unix-socket", path),
        mesh(tmp_path, controller_with(r1={"ready": [f"unix:{path}"]})) as m,
    ):
        named = {"Knative-Serving-Namespace": NS, "Knative-Serving-Revision": "r1"}
        status, echoes, _ = await asyncio.to_thread(
            websocket_echo, m.activator.http_port, "hello.default.example", [b"hi", big], headers=named
        )
        assert (status, echoes) == (101, [b"hi", big])
        assert (await m.activator.aget("r1"))[::2] == (200, HELLO)


async def test_two_activators_each_send_to_their_own_instance(tmp_path):
    """With the real EndpointsServicer, two activators learn they are two (from the ids
    they watch with) and split a CC 1 revision's two instances: one each, so together
    they never send an instance two requests at once."""

    async with instance(tmp_path, K_REVISION="one") as (one, _, _), instance(tmp_path, K_REVISION="two") as (two, _, _):
        view = SimpleNamespace(
            addresses=[one, two], not_ready_addresses=[], container_concurrency=1, timeout_s=60,
            response_start_timeout_s=0, idle_timeout_s=0,
        )
        controller = EndpointsState({RevisionKey(NS, "r1"): view})
        async with (
            serving(controller) as controller_port,
            fake_autoscaler() as (_, autoscaler_port, _),
            activator(tmp_path, controller_port, autoscaler_port) as first,
            activator(tmp_path, controller_port, autoscaler_port) as second,
        ):
            for act in (first, second):
                await synced(act)
                await asyncio.to_thread(
                    wait_until, lambda act=act: '"count": 2' in act.log_path.read_text(), what="two activators"
                )
            answered = []
            for act in (first, second):
                bodies = {(await act.aget("r1"))[2] for _ in range(6)}
                answered.append(bodies)
            assert all(len(bodies) == 1 for bodies in answered), answered
            assert answered[0] | answered[1] == {b"Hello from one!\n", b"Hello from two!\n"}


async def test_a_started_response_outlives_the_revisions_timeout_seconds(tmp_path):
    """timeoutSeconds=1, and the app streams for 1.6 s: the activator (as the queue) lets a
    response that started in time run to its end."""
    async with (
        instance(tmp_path) as (address, _, _),
        mesh(tmp_path, controller_with(r1={"ready": [address], "timeout_s": 1})) as m,
    ):
        def stream() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", m.activator.http_port), timeout=10) as sock:
                sock.sendall(
                    b"GET /?chunks=5&chunk_delay=400 HTTP/1.1\r\nHost: hello.default.example\r\n"
                    b"Knative-Serving-Namespace: default\r\nKnative-Serving-Revision: r1\r\n\r\n"
                )
                reader = RawResponseReader(sock)
                assert reader.head()[0] == 200
                return [reader.next_chunk() for _ in range(6)]

        assert await asyncio.to_thread(stream) == [b"chunk %d\n" % i for i in range(5)] + [b""]
        status, _, body = await m.activator.aget("r1", "/?sleep=3000")  # not started: a 504
        assert status == 504 and b"timeoutSeconds=1" in body


async def test_hold_longer_than_timeout_seconds_is_504(tmp_path):
    async with mesh(tmp_path, controller_with(r1={"timeout_s": 1})) as m:
        status, _, body = await m.activator.aget("r1")
        assert status == 504
        assert body == b"timeout: no instance of revision default/r1 could take the request within timeoutSeconds=1\n"


async def test_queue_depth_full_is_503_and_the_held_ones_are_served(tmp_path):
    async with (
        instance(tmp_path) as (address, _, _),
        mesh(tmp_path, controller_with(r1={}), "--queue-depth", "2") as m,
    ):
        calls = [asyncio.ensure_future(m.activator.aget("r1")) for _ in range(3)]
        done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED, timeout=GUARD_S)
        (refused,) = done
        status, _, body = refused.result()
        assert (status, body) == (503, b"overload: activator queue full (revision default/r1, queue-depth=2)\n")
        m.controller.publish("r1", ready=[address])
        results = await asyncio.gather(*(c for c in calls if c is not refused))
        assert [r[::2] for r in results] == [(200, HELLO)] * 2


async def test_removed_revision_answers_its_held_requests_404(tmp_path):
    async with mesh(tmp_path, controller_with(r1={})) as m:
        held = asyncio.ensure_future(m.activator.aget("r1"))
        await until(lambda: pokes(m.stats), "the poke")
        m.controller.remove("r1")
        assert (await held)[::2] == (404, b"not found: revision default/r1 was removed\n")
        assert (await m.activator.aget("r1"))[0] == 404


# -- throttling


async def test_container_concurrency_1_never_overlaps_in_the_app(tmp_path):
    # The queue itself is unlimited here, so only the activator's throttle keeps the app to
    # one request at a time; the app answers 500 "overlap" when two meet.
    async with (
        instance(tmp_path, DETECT_OVERLAP="1") as (address, _, queue),
        mesh(tmp_path, controller_with(r1={"ready": [address], "cc": 1})) as m,
    ):
        with ThreadPoolExecutor(5) as pool:
            direct = await asyncio.to_thread(lambda: list(pool.map(lambda _: queue.request("GET", "/?sleep=200")[2], range(5))))
            assert b"overlap\n" in direct  # the app does detect overlap without a throttle
            results = await asyncio.to_thread(lambda: list(pool.map(lambda _: m.activator.get("r1", "/?sleep=20"), range(25))))
        assert [(status, body) for status, _, body in results] == [(200, HELLO)] * 25


# -- failures


async def test_instance_dies_mid_request_is_502_and_a_refused_connect_is_502(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    async with instance(tmp_path) as (address, app, queue):
        async with mesh(tmp_path, controller_with(r1={"ready": [address]}, r2={"ready": [dead]})) as m:
            pending = asyncio.ensure_future(m.activator.aget("r1", "/?gate=die"))
            await asyncio.to_thread(wait_until, lambda: app.waiting("die") == 1, what="the request to reach the app")
            queue.proc.send_signal(signal.SIGKILL)
            status, _, body = await pending
            assert (status, body) == (502, b"upstream: the instance closed the connection before answering\n")
            app.release("die")
            status, _, body = await m.activator.aget("r2")
            assert status == 502
            assert body.startswith(f"upstream: cannot connect to the instance at {dead}".encode())


async def test_controller_restart_keeps_the_last_state_then_takes_the_new_snapshot(tmp_path):
    fake = controller_with()
    port = free_port()
    async with instance(tmp_path) as (address, _, _), fake_autoscaler() as (_, autoscaler_port, _):
        fake.publish("r1", ready=[address])
        fake.publish("old", ready=[address])
        async with contextlib.AsyncExitStack() as first_controller:
            await first_controller.enter_async_context(controller_server(fake, port))
            async with activator(tmp_path, port, autoscaler_port) as act:
                await synced(act)
                await first_controller.aclose()  # the controller goes away
                assert (await act.aget("r1"))[::2] == (200, HELLO)  # what it knew still routes
                assert (await act.aget("old"))[::2] == (200, HELLO)
                fake.remove("old")  # while it is down
                fake.publish("r2", ready=[address])
                async with controller_server(fake, port):
                    await until(lambda: fake.streams >= 2, "the activator to reconnect")
                    await asyncio.to_thread(wait_until, lambda: act.get("old")[0] == 404, what="the new snapshot")
                    assert (await act.aget("r2"))[::2] == (200, HELLO)
                    assert (await act.aget("r1"))[::2] == (200, HELLO)


def _raw(port: int, *pieces: bytes, half_close: bool = False) -> bytes:
    """Send `pieces` a moment apart on one connection; what comes back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.1)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


async def test_a_malformed_or_cut_short_body_frees_the_revisions_only_slot_at_once(tmp_path):
    head = (
        b"POST /echo HTTP/1.1\r\nHost: hello.default.example\r\nKnative-Serving-Namespace: default\r\n"
        b"Knative-Serving-Revision: r1\r\n"
    )
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
    async with (
        instance(tmp_path) as (address, _, _),
        mesh(tmp_path, controller_with(r1={"ready": [address], "cc": 1})) as m,
    ):
        port = m.activator.http_port
        answer = await asyncio.to_thread(_raw, port, chunked + b"3\r\nabc\r\n", b"zz\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        cut = head + b"Content-Length: 100\r\n\r\n" + b"x" * 40
        assert await asyncio.to_thread(_raw, port, cut, half_close=True) == b""
        answer = await asyncio.to_thread(
            _raw, port, head + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
        # the only slot is free: answered now, not after timeoutSeconds
        status, _, body = await asyncio.wait_for(m.activator.aget("r1"), 10)
        assert (status, body) == (200, HELLO)


# -- the process


async def test_sigterm_drains_accepted_requests_then_exits_0(tmp_path):
    async with instance(tmp_path) as (address, app, _), mesh(tmp_path, controller_with(r1={"ready": [address]})) as m:
        act = m.activator
        ready = json.loads(next(tmp_path.glob("activator-*.json")).read_text())
        assert set(ready) == {"grpc", "http", "metrics", "pid"} and ready["pid"] == act.proc.pid
        async with grpc.aio.insecure_channel(act.grpc) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert (await check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
            slow = asyncio.ensure_future(act.aget("r1", "/?gate=drain"))
            await asyncio.to_thread(wait_until, lambda: app.waiting("drain") == 1, what="the request in the app")
            act.proc.send_signal(signal.SIGTERM)
            probe = {"K-Network-Probe": "activator"}
            await asyncio.to_thread(wait_until, lambda: act.get(None, headers=probe)[0] == 503, what="draining")
            assert (await check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING
            app.release("drain")
            assert (await slow)[::2] == (200, HELLO)
        assert await asyncio.to_thread(act.proc.wait, GUARD_S) == 0
    log = act.log_path.read_text()
    assert '"msg": "draining"' in log and '"msg": "stopped"' in log


async def test_before_the_controller_answers_requests_are_503_and_health_not_serving(tmp_path):
    async with fake_autoscaler() as (_, autoscaler_port, _), activator(tmp_path, free_port(), autoscaler_port) as act:
        status, _, body = await act.aget("r1")
        assert (status, body) == (503, b"unavailable: the activator has not heard from the controller yet\n")
        assert (await act.aget(None, headers={"K-Network-Probe": "activator"}))[0] == 503
        async with grpc.aio.insecure_channel(act.grpc) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
