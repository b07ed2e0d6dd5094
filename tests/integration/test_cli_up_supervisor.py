"""`ebb up`'s supervisor with fake components: start order, ready files, mesh.json, signals,
clean stop, a component dying, and no orphans left behind.

The fake "python" is a script that understands `-m ebb.<name> ... --ready-file F`; its
behaviour per component is chosen with env FAKE_MODE (e.g. `controller=crash`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import hard_open_files_limit_below, low_open_files_limit

FAKE_COMPONENT = textwrap.dedent(
    """\
    import json, os, signal, socket, subprocess, sys, time
    args = sys.argv[1:]
    assert args[0] == "-m", args
    name = args[1].split(".")[-1]
    def flag(key):
        return args[args.index(key) + 1] if key in args else None
    modes = dict(item.split("=") for item in os.environ.get("FAKE_MODE", "").split(",") if item)
    mode = modes.get(name, "ok")
    record = os.environ["FAKE_RECORD"]
    with open(record, "a") as handle:
        handle.write(json.dumps({"name": name, "pid": os.getpid(), "argv": args}) + "\\n")
    if mode == "crash":
        print(json.dumps({"level": "error", "msg": "cannot start", "exc": "Traceback...\\nValueError: bad flag"}))
        sys.exit(3)
    port = int(flag("--grpc-port") or 0)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    if mode == "orphan":
        # An app the controller "forgets": its own session, so only the sweep can find it.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        with open(record, "a") as handle:
            handle.write(json.dumps({"name": "orphan", "pid": child.pid}) + "\\n")
    stopping = []
    def on_term(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGTERM, on_term if mode == "stubborn" else signal.SIG_DFL)
    ready = {"pid": os.getpid(), "grpc": "127.0.0.1:%d" % listener.getsockname()[1]}
    with open(flag("--ready-file") + ".tmp", "w") as handle:
        json.dump(ready, handle)
    os.replace(flag("--ready-file") + ".tmp", flag("--ready-file"))
    print("ready", flush=True)
    if mode == "die-once":
        marker = record + "." + name + ".died"
        if os.path.exists(marker):
            mode = "ok"
        else:
            open(marker, "w").close()
    deadline = time.monotonic() + (1.0 if mode in ("die-later", "die-once") else 600)
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(7)
    """
)

FAKE_ENVOY = textwrap.dedent(
    """\
    import http.server, os, resource, sys, json
    port = int(sys.argv[1])
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with open(os.environ["FAKE_RECORD"], "a") as handle:
        handle.write(json.dumps({"name": "envoy", "pid": os.getpid(), "argv": sys.argv[1:], "nofile": nofile}) + "\\n")
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ready" else 404)
            self.end_headers()
            self.wfile.write(b"LIVE\\n")
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)

DRIVER = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from ebb.cli import up
    data_dir, fake_python, fake_envoy, max_restarts = sys.argv[1:5]
    ports = {name: 0 for name in up.DEFAULT_PORTS}
    settings = up.UpSettings(data_dir=Path(data_dir), ports=ports, start_timeout_s=10, stop_timeout_s=1.0,
                             controller_stop_timeout_s=2.0, hint_data_dir=True,
                             max_restarts=int(max_restarts))
    def envoy(settings):
        return [sys.executable, fake_envoy, str(settings.ports["envoy-admin"])]
    sys.exit(up.run_up(settings, python=fake_python, envoy=envoy))
    """
)


@pytest.fixture
def fakes(tmp_path):
    component = tmp_path / "fakepython"
    component.write_text(f"#!{sys.executable}\n{FAKE_COMPONENT}")
    component.chmod(0o755)
    envoy = tmp_path / "fake_envoy.py"
    envoy.write_text(FAKE_ENVOY)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return component, envoy, driver


def start_up(
    tmp_path: Path, fakes, mode: str = "", max_restarts: int = 5, preexec_fn=None
) -> tuple[subprocess.Popen, Path, Path]:
    component, envoy, driver = fakes
    data_dir = tmp_path / "data"
    record = tmp_path / "record.jsonl"
    env = {**os.environ, "FAKE_MODE": mode, "FAKE_RECORD": str(record)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(data_dir), str(component), str(envoy), str(max_restarts)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec_fn,
    )
    return proc, data_dir, record


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_up_starts_in_order_writes_mesh_json_and_stops_clean_on_sigint(tmp_path, fakes):
    proc, data_dir, record = start_up(tmp_path, fakes, mode="controller=orphan,activator=stubborn")
    try:
        mesh_path = data_dir / "mesh.json"
        wait_for(mesh_path.exists)
        mesh = json.loads(mesh_path.read_text())
        assert mesh["pid"] == proc.pid and mesh["data_dir"] == str(data_dir)
        for key in ("gateway", "envoy_admin", "controller", "autoscaler", "autoscaler_stats",
                    "activator", "activator_grpc", "webhook"):
            assert mesh[key].startswith("127.0.0.1:") and int(mesh[key].rsplit(":", 1)[1]) > 0
        started = records(record)
        order = [r["name"] for r in started if r["name"] != "orphan"]
        assert set(order[:2]) == {"webhook", "autoscaler"}
        assert order[2:] == ["controller", "activator", "envoy"]
        argv = {r["name"]: r["argv"] for r in started if r["name"] != "orphan"}

        def flag(name: str, key: str) -> str:
            return argv[name][argv[name].index(key) + 1]

        assert flag("controller", "--autoscaler") == mesh["autoscaler"]
        # Stats go to the stats port: the queues' (the controller passes it on) and the activator's.
        assert flag("controller", "--autoscaler-stats") == mesh["autoscaler_stats"]
        assert flag("activator", "--autoscaler") == mesh["autoscaler_stats"]
        stats_port = flag("autoscaler", "--stats-port")
        assert mesh["autoscaler_stats"] == f"127.0.0.1:{stats_port}" != mesh["autoscaler"]
        assert flag("controller", "--gateway-port") == mesh["gateway"].rsplit(":", 1)[1]
        for r in started:  # each component leads its own process group
            if r["name"] != "orphan":
                assert os.getpgid(r["pid"]) == r["pid"]
        assert (data_dir / "logs" / "controller.log").read_text().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Ebb is up. The gateway listens on http://" + mesh["gateway"] in out
    assert 'ebb service create hello --data-dir' in out
    assert not (data_dir / "mesh.json").exists()
    # Every component, the stubborn activator (SIGKILLed after its 1 s stop timeout) and
    # the app the controller left behind in its own session are gone.
    for r in records(record):
        wait_for(lambda r=r: gone(r["pid"]), timeout_s=15)
    assert "ebb up: activator did not stop within 1s; killing it" in err
    assert "stopped 1 leftover process" in err


def test_everything_up_starts_inherits_a_raised_open_files_limit(tmp_path, fakes):
    # `ebb up` started with a soft limit of 128 open files raises it before it starts
    # anything, so Envoy (which does not raise its own) gets the hard limit too.
    if hard_open_files_limit_below(1024):
        pytest.skip("the hard limit on open files is too low here")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc, _, record = start_up(tmp_path, fakes, preexec_fn=low_open_files_limit(128))
    try:
        wait_for(lambda: any(r["name"] == "envoy" for r in records(record)))
        envoy = next(r for r in records(record) if r["name"] == "envoy")
        assert envoy["nofile"] > 128
        assert hard == resource.RLIM_INFINITY or envoy["nofile"] == hard
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def test_component_crashing_at_start_fails_with_its_log_tail(tmp_path, fakes):
    proc, data_dir, record = start_up(tmp_path, fakes, mode="controller=crash")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.splitlines()
    assert lines[0].startswith("ebb up: controller exited with code 3 while starting (log: ")
    assert "  error cannot start | ValueError: bad flag" in lines
    assert not (data_dir / "mesh.json").exists()
    names = [r["name"] for r in records(record)]
    assert "activator" not in names and "envoy" not in names
    for r in records(record):
        assert gone(r["pid"])


def test_component_dying_is_restarted_and_keeps_its_ready_file(tmp_path, fakes):
    proc, data_dir, record = start_up(tmp_path, fakes, mode="controller=die-once")
    try:
        wait_for((data_dir / "mesh.json").exists)
        ready = data_dir / "run" / "controller.json"
        first = json.loads(ready.read_text())["pid"]
        # It dies after a second; `ebb up` starts it again and the new one rewrites the file.
        wait_for(lambda: json.loads(ready.read_text())["pid"] != first, timeout_s=15)
        assert [r["name"] for r in records(record)].count("controller") == 2
        assert proc.poll() is None
        log = (data_dir / "logs" / "controller.log").read_text()
        assert "--- ebb up: restarting controller ---" in log
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "ebb up: controller exited unexpectedly with code 7; restarting it in 0.5s" in err
    for r in records(record):
        wait_for(lambda r=r: gone(r["pid"]), timeout_s=15)


def test_component_dying_too_often_stops_the_mesh_with_exit_1(tmp_path, fakes):
    proc, data_dir, record = start_up(tmp_path, fakes, mode="activator=die-later", max_restarts=1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "ebb up: activator exited unexpectedly with code 7; restarting it in 0.5s" in err
    assert "ebb up: activator exited unexpectedly with code 7 (2 times within 60s); stopping the mesh" in err
    assert not (data_dir / "mesh.json").exists()
    for r in records(record):
        wait_for(lambda r=r: gone(r["pid"]), timeout_s=15)


def test_no_restarts_means_the_first_death_stops_the_mesh(tmp_path, fakes):
    proc, data_dir, record = start_up(tmp_path, fakes, mode="webhook=die-later", max_restarts=0)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "ebb up: webhook exited unexpectedly with code 7; stopping the mesh" in err
    for r in records(record):
        wait_for(lambda r=r: gone(r["pid"]), timeout_s=15)


def test_second_up_on_the_same_data_dir_is_refused(tmp_path, fakes):
    proc, data_dir, _ = start_up(tmp_path, fakes)
    try:
        wait_for((data_dir / "mesh.json").exists)
        second = subprocess.run(
            [sys.executable, "-m", "ebb.cli", "up", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 1
        assert second.stderr == (
            f"ebb up: a mesh is already running from {data_dir} (pid {proc.pid}); stop it or use --data-dir\n"
        )
        proc.terminate()
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
