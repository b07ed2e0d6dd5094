"""`python -m ebb.controller --backend kubernetes` as a real process against the API emulator,
driven with the same CLI a user would point at a port-forwarded controller (`--server`)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import free_port, wait_until
from k8s_emulator import KubernetesEmulator

SERVICE_YAML = """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/example/hello:1
"""


def test_kubernetes_backend_process_reconciles_a_service_applied_through_the_cli(tmp_path):
    emu = KubernetesEmulator()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": emu.url}}],
        "users": [{"name": "emu", "user": {}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
    }))
    port = free_port()
    ready = tmp_path / "ready.json"
    env = {
        "KUBECONFIG": str(kubeconfig),
        "EBB_QUEUE_SIDECAR_IMAGE": "ghcr.io/ebb/ebb:0.1.0",
        # --autoscaler-stats from the environment: what the queues stream to.
        "EBB_AUTOSCALER_STATS": "ebb-autoscaler.ebb-system.svc:8094",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebb.controller", "--backend", "kubernetes", "--grpc-port", str(port),
         "--gateway-port", "8080", "--ready-file", str(ready), "--data-dir", str(tmp_path / "data")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_until(ready.exists, 30, message="controller ready")
        manifest = tmp_path / "service.yaml"
        manifest.write_text(SERVICE_YAML)
        applied = subprocess.run(
            [sys.executable, "-m", "ebb.cli", "--server", f"127.0.0.1:{port}", "apply", "-f", str(manifest)],
            capture_output=True, text=True, timeout=30,
        )
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.strip() == "service.serving.knative.dev/hello created"
        # The Service is a custom resource; the reconcilers stamp the rest into the cluster.
        assert emu.get("serving.knative.dev/v1/services", "default", "hello") is not None
        wait_until(lambda: emu.get("serving.knative.dev/v1/revisions", "default", "hello-00001"), 20,
                   message="revision CR")
        deployment = wait_until(lambda: emu.get("apps/v1/deployments", "default", "hello-00001-deployment"), 20,
                                message="deployment")
        containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
        assert containers["user-container"]["image"] == "ghcr.io/example/hello:1"
        assert containers["queue-proxy"]["image"] == "ghcr.io/ebb/ebb:0.1.0"
        queue = containers["queue-proxy"]["args"]
        assert "--host" in queue
        assert queue[queue.index("--autoscaler") + 1] == "ebb-autoscaler.ebb-system.svc:8094"
        listed = subprocess.run(
            [sys.executable, "-m", "ebb.cli", "--server", f"127.0.0.1:{port}", "revision", "list", "-o", "json"],
            capture_output=True, text=True, timeout=30,
        )
        assert [r["metadata"]["name"] for r in json.loads(listed.stdout)] == ["hello-00001"]
        proc.terminate()
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
        # Stopping the controller leaves the cluster's workloads alone.
        assert emu.get("apps/v1/deployments", "default", "hello-00001-deployment") is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        emu.close()
