"""A real `ebb up` for the paths through the activator: start it on free ports, deploy
the benchmark apps as services whose activator is always in the path
(target-burst-capacity -1, Knative's switch for that), find the processes to measure, and
tell honestly whether the activator really serves them.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.procs import HOST, Processes, StartError

NAMESPACE = "default"
ANNOTATIONS = (
    # One instance, always there: the queue measured is the one that serves.
    "autoscaling.knative.dev/min-scale=1",
    "autoscaling.knative.dev/max-scale=1",
    # -1: the activator stays in the request path whatever the spare capacity.
    "autoscaling.knative.dev/target-burst-capacity=-1",
)
PORT_NAMES = ("http", "admin", "controller", "autoscaler", "autoscaler-stats", "activator",
              "activator-grpc", "webhook")
START_TIMEOUT_S = 90.0
CREATE_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
ACTIVATOR_NOT_READY = "n/a (activator not ready)"
NOT_ROUTED = "n/a (gateway does not route via the activator)"


def activator_hosts(clusters_text: str, address: str) -> dict[str, int]:
    """From Envoy's admin /clusters text: for each cluster that has `address` (HOST:PORT)
    as an endpoint, that endpoint's rq_total + cx_connect_fail (requests sent there, or
    tried). Lines look like `default/hello-00001::127.0.0.1:8012::rq_total::5`."""
    found: dict[str, int] = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) != 4 or parts[1] != address:
            continue
        cluster, _, stat, value = parts
        if stat in ("rq_total", "cx_connect_fail"):
            with contextlib.suppress(ValueError):
                found[cluster] = found.get(cluster, 0) + int(value)
    return found


@dataclass
class MeshService:
    name: str
    revision: str
    host: str  # Host header the gateway routes on
    queue_pid: int | None
    queue_idle_memory: dict[str, float] | None  # procs.memory_mb before any traffic
    app_pid: int | None = None  # the instance's app (its CPU is the app's, not "other")


class Mesh:
    def __init__(self, processes: Processes, work: Path, python: str = sys.executable, *,
                 config: Path | None = None, log_level: str = "warning") -> None:
        self.processes = processes
        self.data_dir = work / "mesh"
        self.python = python
        self.config = config  # `ebb up --config FILE`
        self.log_level = log_level
        self.ports = {name: procs.free_port() for name in PORT_NAMES}
        self.proc: procs.Proc | None = None
        self.info: dict = {}

    def _ebb(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        env = {**self.processes.base_env, "EBB_HOME": str(self.data_dir),
               procs.MARK_VAR: self.processes.mark}
        res = subprocess.run([self.python, "-m", "ebb.cli", *args, "--data-dir",
                              str(self.data_dir)], env=env, capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise StartError(f"ebb {' '.join(args[:3])} failed ({res.returncode}): "
                             f"{res.stderr.strip()[-1500:]}{res.stdout.strip()[-500:]}")
        return res

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        argv = [self.python, "-m", "ebb.cli", "up", "--data-dir", str(self.data_dir),
                "--http-port", str(p["http"]), "--admin-port", str(p["admin"]),
                "--controller-port", str(p["controller"]),
                "--autoscaler-port", str(p["autoscaler"]),
                "--autoscaler-stats-port", str(p["autoscaler-stats"]),
                "--activator-port", str(p["activator"]),
                "--activator-grpc-port", str(p["activator-grpc"]),
                "--webhook-port", str(p["webhook"]), "--log-level", self.log_level]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        self.proc = self.processes.start("ebb-up", argv, env={"EBB_HOME": str(self.data_dir)})
        mesh_file = self.data_dir / "mesh.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise StartError(f"ebb up exited with code {self.proc.popen.returncode}:\n"
                                 f"{self.proc.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.info = json.loads(mesh_file.read_text())
                return
            time.sleep(0.1)
        raise StartError(f"ebb up wrote no mesh.json in {START_TIMEOUT_S:g}s:\n"
                         f"{self.proc.log_tail()}")

    def create_service(self, name: str, app_argv: Sequence[str]) -> MeshService:
        args = ["service", "create", name, "--cmd", shlex.join(app_argv), "--force", "--wait",
                "--wait-timeout", f"{CREATE_TIMEOUT_S:g}"]
        for annotation in ANNOTATIONS:
            args += ["-a", annotation]
        self._ebb(*args, timeout_s=CREATE_TIMEOUT_S + 30)
        listing = json.loads(self._ebb("revision", "list", "--service", name, "-o",
                                       "json").stdout)
        items = listing if isinstance(listing, list) else listing.get("items", [])
        names = sorted(item["metadata"]["name"] for item in items)
        if not names:
            raise StartError(f"service {name} has no revision")
        revision = names[-1]
        queue_pid = self.queue_pid(revision)
        memory = None
        if queue_pid is not None:
            time.sleep(1.0)  # let it settle; no traffic has reached it yet
            with contextlib.suppress(OSError, ValueError):
                memory = procs.memory_mb(queue_pid)
        return MeshService(name, revision, f"{name}.{NAMESPACE}.localhost", queue_pid, memory,
                           self.app_pid(revision))

    def app_pid(self, revision: str) -> int | None:
        """The app of `revision`'s instance, from the local runtime's instances.json."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            for record in json.loads((self.data_dir / "instances.json").read_text()):
                if record["revision"] == revision and record["app_pid"] in self._marked():
                    return int(record["app_pid"])
        return None

    def _marked(self) -> list[int]:
        return procs.marked_pids(self.processes.mark)

    def queue_pid(self, revision: str, timeout_s: float = 10.0) -> int | None:
        """The queue serving `revision`, from its ready file (run/queues/INSTANCE.json,
        INSTANCE = REVISION-xxxxxx). Not from its command line: a queue the local runtime
        made of its standby was started as `python -m ebb.queue --standby`."""
        ready_files = self.data_dir / "run" / "queues"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            marked = set(self._marked())
            for path in sorted(ready_files.glob(f"{revision}-??????.json")):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    pid = int(json.loads(path.read_text())["pid"])
                    if pid in marked:
                        return pid
            time.sleep(0.2)
        return None

    def envoy_pid(self) -> int | None:
        config = str(self.data_dir / "envoy.json")
        for pid in self._marked():
            argv = procs.cmdline(pid)
            if argv and Path(argv[0]).name.startswith("envoy") and config in argv:
                return pid
        return None

    def activator_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pid = int(json.loads((self.data_dir / "run" / "activator.json").read_text())["pid"])
            if pid in procs.marked_pids(self.processes.mark):
                return pid
        return None

    @property
    def activator_address(self) -> str:
        return f"{HOST}:{self.ports['activator']}"

    def clusters_text(self) -> str:
        url = f"http://{HOST}:{self.ports['admin']}/clusters"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read().decode(errors="replace")

    def activator_headers(self, service: MeshService) -> dict[str, str]:
        return {"Knative-Serving-Namespace": NAMESPACE,
                "Knative-Serving-Revision": service.revision}

    def check_activator(self, service: MeshService, expect: bytes, timeout_s: float = 20.0
                        ) -> tuple[str | None, str | None, dict]:
        """Whether the activator really serves `service`: (reason the activator path is
        n/a or None, reason the gateway → activator path is n/a or None, details)."""
        details: dict = {}
        deadline = time.monotonic() + timeout_s
        direct_ok = False
        refused_since = None
        while time.monotonic() < deadline:
            try:
                status, body = procs.http_get(self.ports["activator"], "/",
                                              self.activator_headers(service), timeout_s=5)
                details["activator_probe"] = f"HTTP {status}"
                if status == 200 and expect in body:
                    direct_ok = True
                    break
            except OSError as exc:
                details["activator_probe"] = str(exc)
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > 5.0:  # nothing listens there
                    break
            time.sleep(0.25)
        before = sum(activator_hosts(self.clusters_text(), self.activator_address).values())
        gateway_ok = False
        for _ in range(10):
            try:
                status, body = procs.http_get(self.ports["http"], "/", {"Host": service.host},
                                              timeout_s=5)
                details["gateway_probe"] = f"HTTP {status}: {body[:120]!r}"
                gateway_ok = status == 200 and expect in body
            except OSError as exc:
                details["gateway_probe"] = str(exc)
        routed = activator_hosts(self.clusters_text(), self.activator_address)
        details["gateway_clusters_with_activator"] = routed
        details["gateway_requests_at_activator"] = sum(routed.values()) - before
        in_path = sum(routed.values()) - before >= 10
        details["activator_in_gateway_path"] = in_path
        direct_reason = None if direct_ok else ACTIVATOR_NOT_READY
        if in_path and gateway_ok:
            gateway_reason = None
        elif in_path or not direct_ok:
            gateway_reason = ACTIVATOR_NOT_READY
        else:
            gateway_reason = NOT_ROUTED
        return direct_reason, gateway_reason, details

    def stop(self) -> None:
        """SIGINT to `ebb up` (it stops its components and their apps and queues); what
        is left is swept by Processes.stop_all."""
        if self.proc is None:
            return
        if self.proc.alive():
            with contextlib.suppress(OSError):
                self.proc.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(STOP_TIMEOUT_S)
        self.processes.stop(self.proc)
        self.proc = None
