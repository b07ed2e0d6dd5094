"""`ebb up` end to end: deploy through the CLI, serve through Envoy, delete, survive a
controller crash, and leave no process behind."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from helpers import SAMPLE_APP, wait_until
from mesh import Mesh

pytestmark = pytest.mark.e2e


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path / "ebb")
    with m.running():
        yield m


def _create_hello(mesh: Mesh, name: str = "hello") -> str:
    res = mesh.ebb("service", "create", name, "--cmd", f"{sys.executable} {SAMPLE_APP}", "--wait", "--wait-timeout", "60")
    return res.stdout.strip().splitlines()[-1]


def test_first_app_through_envoy_then_delete(mesh):
    url = _create_hello(mesh)
    assert url.endswith(f"hello.default.localhost:{mesh.ports['http']}")
    status, body = wait_until(
        lambda: (r := mesh.get("hello.default.localhost")) and r[0] == 200 and r, 30, message="200 via Envoy"
    )
    assert body == "Hello from hello-00001!\n"

    listed = json.loads(mesh.ebb("service", "list", "-o", "json").stdout)
    assert [s["metadata"]["name"] for s in listed] == ["hello"]
    revisions = json.loads(mesh.ebb("revision", "list", "-o", "json").stdout)
    assert revisions[0]["metadata"]["name"] == "hello-00001"
    assert revisions[0]["status"]["readyReplicas"] == 1

    mesh.ebb("service", "delete", "hello")
    wait_until(lambda: mesh.get("hello.default.localhost")[0] == 404, 30, message="404 after delete")
    # The instance is stopped too.
    wait_until(lambda: json.loads((mesh.data_dir / "instances.json").read_text()) == [], 30, message="instances gone")


def test_controller_crash_keeps_traffic_and_state(mesh):
    _create_hello(mesh)
    wait_until(lambda: mesh.get("hello.default.localhost")[0] == 200, 30, message="200 via Envoy")
    ready_file = mesh.data_dir / "run" / "controller.json"
    old_pid = json.loads(ready_file.read_text())["pid"]
    os.kill(old_pid, signal.SIGKILL)
    # While the controller is down (and while it restarts) Envoy keeps serving its last config.
    for _ in range(20):
        assert mesh.get("hello.default.localhost") == (200, "Hello from hello-00001!\n")
    wait_until(
        lambda: json.loads(ready_file.read_text())["pid"] != old_pid, 30, message="controller restarted by ebb up"
    )
    listed = json.loads(mesh.ebb("service", "list", "-o", "json").stdout)
    assert [s["metadata"]["name"] for s in listed] == ["hello"]
    # The restarted controller adopted the instance: still exactly one, still serving.
    wait_until(lambda: len(json.loads((mesh.data_dir / "instances.json").read_text())) == 1, 10, message="one instance")
    assert mesh.get("hello.default.localhost") == (200, "Hello from hello-00001!\n")
    # And it still reconciles: a second service comes up.
    _create_hello(mesh, "second")
    wait_until(lambda: mesh.get("second.default.localhost")[0] == 200, 30, message="second service")


def test_everything_stops_with_ebb_up(tmp_path):
    mesh = Mesh(tmp_path / "ebb")
    try:
        mesh.start()
        _create_hello(mesh)
        assert len(mesh.wait_gone(0.1)) >= 7  # up, 4 services, Envoy, app, queue
        assert mesh.stop() == 0
        assert mesh.wait_gone() == []
        assert not (mesh.data_dir / "mesh.json").exists()
    finally:
        mesh.stop()
        mesh.kill_leftovers()


def test_busy_port_is_a_one_line_error(tmp_path):
    import socket

    mesh = Mesh(tmp_path / "ebb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", mesh.ports["http"]))
        s.listen()
        try:
            with pytest.raises(AssertionError) as err:
                mesh.start(timeout_s=30)
            assert mesh.proc.returncode == 1
            lines = [ln for ln in mesh.log().splitlines() if ln.strip()]
            assert any(str(mesh.ports["http"]) in ln and "busy" in ln for ln in lines), err.value
        finally:
            mesh.stop()
            mesh.kill_leftovers()
