"""Polyglot proof: a Node.js client, sharing only protos/ with Ebb, drives the real autoscaler.

The client (examples/stats-client-node) loads autoscaler.proto at run time with
@grpc/proto-loader, registers a revision, streams stats and watches decisions. Here it
talks to a real `python -m ebb.autoscaler` process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, free_port, wait_until

EXAMPLE = REPO / "examples" / "stats-client-node"
CLIENT = EXAMPLE / "stats-client.js"
NPM_CI_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 30

NODE = shutil.which("node")
NPM = shutil.which("npm")
needs_node = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="Node.js (`node` and `npm`) not on PATH: the polyglot client cannot run",
)


@pytest.fixture(scope="module")
def node_client() -> Path:
    """The example with its locked dependencies installed (`npm ci` once, if needed)."""
    if (
        not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir()
        or not (EXAMPLE / "node_modules" / "@grpc" / "proto-loader").is_dir()
    ):
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return CLIENT


@pytest.fixture(scope="module")
def autoscaler_ports(tmp_path_factory) -> dict:
    """A real autoscaler process deciding every 0.5 s; yields its ready file (`grpc`,
    `stats`: the StreamStats-only HTTP/2 port, `metrics`)."""
    ready = tmp_path_factory.mktemp("autoscaler") / "ready.json"
    log = ready.with_name("autoscaler.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ebb.autoscaler",
                "--grpc-port",
                str(free_port()),
                "--stats-port",
                "0",
                "--ready-file",
                str(ready),
                "--tick-interval-s",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            info = wait_until(
                lambda: proc.poll() is None and ready.exists() and json.loads(ready.read_text()),
                30,
                message="autoscaler ready file",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; autoscaler rc={proc.poll()}, log:\n{log.read_text()}"
            ) from None
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def autoscaler(autoscaler_ports) -> str:
    return autoscaler_ports["grpc"]


def _run_client(client: Path, address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(client), "--address", address, *args],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )


def _stream_summary(stderr: str) -> dict:
    """The client's closing `StreamStats closed` log line (accepted/dropped from the server)."""
    for line in stderr.splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == "StreamStats closed":
            return json.loads(line)
    raise AssertionError(f"no StreamStats summary in client stderr:\n{stderr}")


def test_example_shares_only_the_protos():
    """No copied .proto files and no generated code in the example: it reads protos/ itself."""
    ours = [p for p in EXAMPLE.rglob("*") if "node_modules" not in p.parts and p.is_file()]
    assert not [p for p in ours if p.suffix in {".proto", ".py"} or p.name.endswith("_pb.js")]
    assert "protos" in CLIENT.read_text()
    lock = json.loads((EXAMPLE / "package-lock.json").read_text())
    pinned = json.loads((EXAMPLE / "package.json").read_text())["dependencies"]
    assert set(pinned) == {"@grpc/grpc-js", "@grpc/proto-loader"}
    for name, version in pinned.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


@needs_node
@pytest.mark.parametrize("stats_port", ["grpc", "stats"])
def test_node_client_scales_a_revision(node_client, autoscaler_ports, stats_port):
    # Knative KPA with default settings: target 10 x utilization 0.7 = 7 per instance;
    # 50 in flight -> ceil(50 / 7) = 8 instances. One ready instance seeing 8 wanted is
    # 8 >= 2 x 1 (panic threshold 200 %), so the decision is in panic, and the excess
    # burst capacity is floor(1 x 10 - 211 - 50) = -251 (TBC default 211).
    # The stats go to the gRPC port or to the stats port (grpc-js's own HTTP/2 and HPACK
    # against Ebb's); the registration and the decisions always use the gRPC port.
    name = f"node-{stats_port}-00001"
    done = _run_client(
        node_client,
        autoscaler_ports["grpc"],
        "--stats-address",
        autoscaler_ports[stats_port],
        "--namespace",
        "polyglot",
        "--name",
        name,
        "--target",
        "10",
        "--concurrency",
        "50",
        "--interval-ms",
        "200",
        "--until-desired",
        "8",
        "--max-seconds",
        "20",
    )
    assert done.returncode == 0, (
        f"client rc={done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    decisions = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert decisions, done.stderr
    assert all(
        set(d) == {"revision", "desiredScale", "panic", "excessBurstCapacity"} for d in decisions
    )
    assert all(d["revision"] == f"polyglot/{name}" for d in decisions)
    # Anything before the load was seen is the decider's "unknown yet" (-1).
    assert all(d["desiredScale"] in (-1, 8) for d in decisions), decisions
    assert decisions[-1] == {
        "revision": f"polyglot/{name}",
        "desiredScale": 8,
        "panic": True,
        "excessBurstCapacity": -251,
    }
    summary = _stream_summary(done.stderr)
    assert summary["accepted"] >= 1 and summary["dropped"] == 0, summary
    starting = next(json.loads(line) for line in done.stderr.splitlines() if '"starting"' in line)
    assert starting["statsAddress"] == autoscaler_ports[stats_port]


@needs_node
def test_node_client_gives_up_after_max_seconds(node_client, autoscaler):
    # No load: the revision never wants more than the one instance it has (0 or 1,
    # depending on scale-to-zero timing), so `--until-desired 2` is never reached.
    done = _run_client(
        node_client,
        autoscaler,
        "--namespace",
        "polyglot",
        "--name",
        "idle-00001",
        "--concurrency",
        "0",
        "--interval-ms",
        "200",
        "--until-desired",
        "2",
        "--max-seconds",
        "2",
    )
    assert done.returncode == 2, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    decisions = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert all(
        d["revision"] == "polyglot/idle-00001" and d["desiredScale"] < 2 for d in decisions
    ), decisions
    assert _stream_summary(done.stderr)["dropped"] == 0
