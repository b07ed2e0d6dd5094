"""The local runtime with real processes: the standby queue, its cold fallback, adoption
after a controller crash, the app's environment, and nothing left running at close."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from ebb.common.procs import pid_alive
from ebb.controller import runtime_local
from ebb.controller.runtime import InstanceSpec, RevisionKey
from ebb.controller.runtime_local import LocalRuntime

ROOT = Path(__file__).resolve().parents[2]
KEY = RevisionKey("default", "hello-00001")
SPEC = InstanceSpec(
    service="hello",
    configuration="hello",
    revision="hello-00001",
    namespace="default",
    command=(sys.executable, str(ROOT / "samples" / "hello" / "app.py")),
    env=(("GREETING_ENV", "yes"),),
)
WAIT_S = 30.0


@pytest.fixture(autouse=True)
def quick_respawn(monkeypatch):
    monkeypatch.setattr(runtime_local, "STANDBY_RESPAWN_DELAY_S", 0.05)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ebb-controller")


async def eventually(condition, what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_unix(path: str) -> tuple[int, bytes]:
    """GET / through a queue's unix socket."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(10)
    conn.sock.connect(path)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def absent(path: str) -> bool:
    return not Path(path).exists()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def kill_all(pids) -> None:
    for pid in pids:
        if pid and pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


class Runtime:
    """A LocalRuntime plus every pid it showed us, killed at the end whatever happens."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.seen: set[int] = set()

    def new(self) -> LocalRuntime:
        return LocalRuntime(self.data_dir)

    def note(self, runtime: LocalRuntime) -> None:
        standby = runtime._standby
        if standby is not None:
            self.seen.add(standby.pid)
        for st in runtime._revs.values():
            for inst in st.instances:
                self.seen.update((inst.app_pid, inst.queue_pid))

    def instances(self, runtime: LocalRuntime):
        self.note(runtime)
        return [i for i in runtime._revs[KEY].instances if not i.stopping]


@pytest.fixture
def rt(tmp_path):
    holder = Runtime(tmp_path)
    yield holder
    kill_all(holder.seen)


async def start_ready(rt: Runtime, runtime: LocalRuntime, count: int):
    await runtime.ensure(KEY, SPEC, count, now_s=0.0)
    await eventually(lambda: runtime.view(KEY).ready == count, f"{count} ready instances")
    return rt.instances(runtime)


async def standby_waiting(rt: Runtime, runtime: LocalRuntime) -> int:
    await eventually(lambda: runtime._standby is not None, "a standby queue")
    rt.note(runtime)
    return runtime._standby.pid


async def test_instances_take_the_standby_queue_and_a_new_one_replaces_it(rt):
    runtime = rt.new()
    try:
        await runtime.ensure(KEY, SPEC, 0, now_s=0.0)  # a known revision keeps a standby
        first_standby = await standby_waiting(rt, runtime)
        (inst,) = await start_ready(rt, runtime, 1)
        assert inst.queue_pid == first_standby
        assert get(inst.queue_port) == (200, b"Hello from hello-00001!\n")
        # The activator is told the queue's unix socket; the queue serves there too.
        assert inst.queue_unix == str(rt.data_dir / "run" / "queues" / f"{inst.id}.sock")
        assert runtime.ready_addresses(KEY)[0].dial() == f"unix:{inst.queue_unix}"
        assert get_unix(inst.queue_unix) == (200, b"Hello from hello-00001!\n")
        assert (rt.data_dir / "run" / "queues" / f"{inst.id}.json").exists()
        queue_log = rt.data_dir / "logs" / "revisions" / "default" / "hello-00001" / f"{inst.id}.queue.log"
        assert b"queue serving" in queue_log.read_bytes()

        second_standby = await standby_waiting(rt, runtime)
        assert second_standby != first_standby
        two = await start_ready(rt, runtime, 2)
        assert {i.queue_pid for i in two} == {first_standby, second_standby}
    finally:
        await runtime.close(stop_instances=True)
    assert [pid for pid in rt.seen if pid_alive(pid)] == []


async def test_a_dead_standby_means_a_cold_queue(rt):
    runtime = rt.new()
    try:
        await runtime.ensure(KEY, SPEC, 0, now_s=0.0)
        standby = await standby_waiting(rt, runtime)
        os.killpg(standby, signal.SIGKILL)
        await eventually(lambda: runtime._standby.returncode is not None, "the standby's exit")
        (inst,) = await start_ready(rt, runtime, 1)
        assert inst.queue_pid != standby
        assert get(inst.queue_port)[0] == 200
        assert get_unix(inst.queue_unix)[0] == 200
    finally:
        await runtime.close(stop_instances=True)
    assert [pid for pid in rt.seen if pid_alive(pid)] == []


async def test_app_env_has_the_revision_env_but_not_the_controllers_service_name(rt):
    runtime = rt.new()
    try:
        (inst,) = await start_ready(rt, runtime, 1)
        app_env = environ_of(inst.app_pid)
        assert "OTEL_SERVICE_NAME" not in app_env
        assert app_env["GREETING_ENV"] == "yes"
        assert app_env["PORT"] == str(inst.app_port)
        assert app_env["K_REVISION"] == "hello-00001"
        assert environ_of(inst.queue_pid)["OTEL_SERVICE_NAME"] == "ebb-queue"
    finally:
        await runtime.close(stop_instances=True)


async def test_a_restarted_controller_adopts_an_instance_whose_queue_was_a_standby(rt):
    first = rt.new()
    try:
        await first.ensure(KEY, SPEC, 0, now_s=0.0)
        standby = await standby_waiting(rt, first)
        (inst,) = await start_ready(rt, first, 1)
        assert inst.queue_pid == standby
        replacement = await standby_waiting(rt, first)
    finally:
        await first.close(stop_instances=False)  # as a crashed controller: instances stay
    assert not pid_alive(replacement)
    assert pid_alive(inst.app_pid) and pid_alive(inst.queue_pid)

    second = rt.new()
    try:
        assert await second.adopt() == 1
        (adopted,) = rt.instances(second)
        assert (adopted.queue_pid, adopted.app_pid) == (inst.queue_pid, inst.app_pid)
        assert adopted.ready
        assert get(adopted.queue_port)[0] == 200
        assert adopted.address.dial() == f"unix:{inst.queue_unix}"  # persisted with the instance
    finally:
        await second.close(stop_instances=True)
    assert [pid for pid in rt.seen if pid_alive(pid)] == []
    assert absent(inst.queue_unix)  # the stopped queue removed its socket


async def test_a_data_dir_too_deep_for_a_socket_path_means_tcp_only(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    runtime = LocalRuntime(deep)
    assert runtime._queue_socket("hello-00001-abcdef") == ""
    assert LocalRuntime(tmp_path)._queue_socket("hello-00001-abcdef").endswith("/run/queues/hello-00001-abcdef.sock")


async def test_a_standby_exits_by_itself_when_its_controller_is_gone(tmp_path):
    """The controller dies without closing: its end of the standby's stdin closes."""
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'ebb.queue', '--standby'],"
        " stdin=subprocess.PIPE, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    standby = int(out.split()[0])
    try:
        await eventually(lambda: not pid_alive(standby), "the orphaned standby's exit")
    finally:
        kill_all([standby])


async def test_an_app_that_cannot_start_takes_its_queue_down(rt):
    runtime = rt.new()
    broken = InstanceSpec(
        service="hello", configuration="hello", revision="hello-00001", namespace="default",
        command=(str(rt.data_dir / "no-such-program"),),
    )
    try:
        await runtime.ensure(KEY, broken, 0, now_s=0.0)
        standby = await standby_waiting(rt, runtime)
        await runtime.ensure(KEY, broken, 1, now_s=0.0)
        view = runtime.view(KEY)
        assert (view.actual, view.failure_reason) == (0, "ExitCode127")
        assert "no-such-program" in view.failure_message
        await eventually(lambda: not pid_alive(standby), "the queue it was given to stopping")
    finally:
        await runtime.close(stop_instances=True)
    assert [pid for pid in rt.seen if pid_alive(pid)] == []


async def test_the_revisions_http_readiness_probe_decides_when_an_instance_is_ready(rt):
    import dataclasses
    import json

    spec = dataclasses.replace(
        SPEC, env=(("HELLO_SICK", "1"),), readiness_probe='{"httpGet":{"path":"/healthz"}}'
    )
    runtime = rt.new()
    try:
        await runtime.ensure(KEY, spec, 1, now_s=0.0)
        await eventually(lambda: rt.instances(runtime), "an instance")
        (inst,) = rt.instances(runtime)

        def probes() -> int:
            try:
                return json.loads(get(inst.app_port, "/sick")[1])["probes"]
            except OSError:
                return 0

        # the app listens, but answers its health path with 503: the queue keeps it unready
        await eventually(lambda: probes() >= 3, "the queue to probe /healthz")
        assert runtime.view(KEY).ready == 0
        assert get(inst.app_port, "/sick?on=0")[0] == 200
        await eventually(lambda: runtime.view(KEY).ready == 1, "ready once /healthz says 200")
    finally:
        await runtime.close(stop_instances=True)


# Serves on PORT for 3 s, then exits with code 3: every instance of it, every time.
CRASHING_APP = (
    "import http.server, os, threading\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.BaseHTTPRequestHandler)\n"
    "threading.Timer(3.0, lambda: os._exit(3)).start()\n"
    "server.serve_forever()\n"
)


async def test_a_revision_that_was_ready_and_then_crash_loops_is_reported_not_ready(rt):
    """What the runtime reports of an app that exits after serving makes the revision
    Ready=False (ContainerHealthy ExitCode3) while no instance is ready, and Ready again when
    the restarted one is (Knative: reconcileDeployment's crash-loop check)."""
    import dataclasses
    import time

    from ebb.controller.reconcile import revision_status
    from ebb.controller.resources import condition, new

    spec = dataclasses.replace(SPEC, command=(sys.executable, "-c", CRASHING_APP), env=())
    rev = new("Revision")
    rev.metadata.name, rev.metadata.namespace = KEY.name, KEY.namespace

    def status() -> tuple[str, str, str]:
        out = revision_status(rev, runtime.view(KEY), now_s=time.time())
        ready, healthy = condition(out, "Ready"), condition(out, "ContainerHealthy")
        return ready.status, healthy.status, healthy.reason

    runtime = rt.new()
    try:
        await runtime.ensure(KEY, spec, 1, now_s=time.time())
        await eventually(lambda: runtime.view(KEY).ready == 1, "the instance to be ready")
        rt.note(runtime)
        assert status() == ("True", "True", "")

        await eventually(lambda: runtime.view(KEY).failure_reason == "ExitCode3", "the app to exit")
        view = runtime.view(KEY)
        assert (view.desired, view.ready, view.ever_ready) == (1, 0, True)
        assert status() == ("False", "False", "ExitCode3")
        assert "exited with code 3" in view.failure_message

        # The controller asks again once the crash backoff (1 s after a first failure) is over.
        await runtime.ensure(KEY, spec, 1, now_s=time.time() + 2.0)
        await eventually(lambda: runtime.view(KEY).ready == 1, "the restarted instance to be ready")
        rt.note(runtime)
        assert status() == ("True", "True", "")

        # Serving a few seconds does not start the backoff over (only BACKOFF_RESET_S of it
        # does, as Kubernetes' 10 minutes): the second crash waits 2 s, not 1 s again.
        state = runtime._revs[KEY]
        await eventually(lambda: state.failure_reason == "ExitCode3", "the app to exit again")
        assert state.consecutive_failures == 2
    finally:
        await runtime.close(stop_instances=True)
    assert [pid for pid in rt.seen if pid_alive(pid)] == []
