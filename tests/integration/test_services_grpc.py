"""Every service is its own process whose gRPC server answers health and reflection (grpcurl)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SAMPLE_APP, free_port, wait_until

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")

SERVICES = {
    "controller": ["ebb.api.serving.v1.ServingService", "envoy.service.discovery.v3.AggregatedDiscoveryService",
                   "ebb.api.networking.v1.EndpointsService"],
    "autoscaler": ["ebb.api.autoscaler.v1.StatsService", "ebb.api.autoscaler.v1.ScalingService"],
    "webhook": ["ebb.api.webhook.v1.AdmissionService"],
    "activator": [],
    "queue": [],
}


def _grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("component", sorted(SERVICES))
def test_health_and_reflection(component, tmp_path):
    ready = tmp_path / "ready.json"
    args = [sys.executable, "-m", f"ebb.{component}", "--ready-file", str(ready)]
    app = None
    if component == "queue":
        app_port = free_port()
        app = subprocess.Popen([sys.executable, str(SAMPLE_APP)], env={"PORT": str(app_port), "K_REVISION": "r"})
        args += ["--http-port", str(free_port()), "--admin-port", str(free_port()), "--app-port", str(app_port),
                 "--revision", "default/r", "--instance", "r-1"]
    elif component == "activator":
        args += ["--grpc-port", str(free_port()), "--http-port", str(free_port())]
    elif component == "controller":
        args += ["--grpc-port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--gateway-port", str(free_port())]
    elif component == "autoscaler":
        args += ["--grpc-port", str(free_port()), "--stats-port", "0"]
    else:
        args += ["--grpc-port", str(free_port())]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        info = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 30, message=f"{component} ready")
        address = info["grpc"]
        listed = _grpcurl(address, "list")
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        for name in ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", *SERVICES[component]]:
            assert name in names
        health = wait_until(
            lambda: (h := _grpcurl(address, "grpc.health.v1.Health/Check")).returncode == 0
            and json.loads(h.stdout)["status"] == "SERVING" and h,
            10,
            message=f"{component} SERVING",
        )
        assert health
        for name in SERVICES[component]:
            described = _grpcurl(address, "describe", name)
            assert described.returncode == 0 and "service" in described.stdout, described.stderr
        proc.terminate()
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        for p in (proc, app):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        if proc.stderr:
            proc.stderr.close()
