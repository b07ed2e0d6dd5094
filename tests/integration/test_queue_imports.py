"""What a started queue has imported: tracing's OpenTelemetry only when tracing is on.

Every queue instance pays for what it imports in resident memory (OpenTelemetry's SDK,
instrumentation and OTLP exporter add about 7 MB to an idle queue), so with tracing off
none of it may be imported, on either start path: a cold `python -m ebb.queue` and a
standby (`--standby`, imports first, flags later) that `ebb up` hands an instance to.
The queue runs in its own interpreter (this test process has imported everything);
a thread there lists `sys.modules` once the ready file is written, then stops it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from queue_helpers import PYTHON, REPO, START_TIMEOUT_S, free_port

# Runs inside the queue's interpreter: argv = ready file, output file, mode, queue flags.
_PROBE = """
import io, json, os, signal, sys, threading, time
from ebb.queue import main as queue_main
ready, out, mode, *argv = sys.argv[1:]

def watch():
    while not os.path.exists(ready):
        time.sleep(0.01)
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
if mode == "standby":
    sys.exit(queue_main.standby(io.StringIO(json.dumps({"argv": argv}) + "\\n")))
sys.exit(queue_main.main(argv))
"""


def _started_queue_modules(tmp_path, mode: str, *extra_flags: str, **env: str) -> list[str]:
    ready = tmp_path / "queue.json"
    out = tmp_path / "modules.json"
    flags = [
        "--app-port", str(free_port()),  # nothing listens: the queue starts all the same
        "--revision", "default/imports-00001",
        "--instance", "imports-test",
        "--ready-file", str(ready),
        "--drain-quiet-s", "0.1",
        *extra_flags,
    ]  # fmt: skip
    environment = {
        k: v for k, v in os.environ.items() if k != "EBB_TRACING" and not k.startswith("OTEL_")
    }
    res = subprocess.run(
        [PYTHON, "-c", _PROBE, str(ready), str(out), mode, *flags],
        env={**environment, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    modules = json.loads(out.read_text())
    assert "ebb.queue.reporter" in modules, "listed before the admin side started"
    return modules


def _opentelemetry(modules: list[str]) -> list[str]:
    return [m for m in modules if m == "opentelemetry" or m.startswith("opentelemetry.")]


@pytest.mark.parametrize("mode", ["cold", "standby"])
def test_a_queue_without_tracing_never_imports_opentelemetry(tmp_path, mode):
    assert _opentelemetry(_started_queue_modules(tmp_path, mode)) == []


def test_a_queue_with_tracing_imports_it(tmp_path):
    # The check above can fail: with tracing on, the same listing does show OpenTelemetry.
    modules = _started_queue_modules(tmp_path, "cold", EBB_TRACING="1", OTEL_TRACES_EXPORTER="none")
    assert "opentelemetry.sdk.trace" in modules


@pytest.mark.parametrize("mode", ["cold", "standby"])
def test_a_queue_streaming_its_stats_never_imports_grpc(tmp_path, mode):
    # grpcio is ~12 MB of an idle queue's memory (issue #8); the stats stream is
    # ebb.common.h2client. Nothing listens at the autoscaler's address: the stream keeps
    # trying, which is enough to have imported all it uses.
    autoscaler = f"127.0.0.1:{free_port()}"
    modules = _started_queue_modules(tmp_path, mode, "--autoscaler", autoscaler)
    assert "ebb.common.h2client" in modules  # the stats stream started
    assert [m for m in modules if m == "grpc" or m.startswith("grpc.")] == []
