"""A/B of the Python hops' CPU per request: two source trees side by side, same run.

    python -m bench.hop --tree before=/tmp/old/services --tree after=services \
        [--conc 16,64] [--duration 3] [--repeat 2] [--envoy] [--unix after]

For each tree it starts, on loopback: `bench/app.py` (fast), a queue in front of it, an
activator (with a fake controller, in this process, that lists the queue as the one ready
instance of `default/bench`, CC 0, as `ebb up` does with target-burst-capacity=-1); the
app is shared. Then, for every concurrency, repeat and tree (in rotating order), wrk runs
against the activator (activator -> queue -> app) and against the queue alone, and the
CPU of each proxy process (utime + stime from /proc, all threads) is divided by the
requests served. `--envoy` adds the one-Envoy-hop baseline (static config, one worker).

Per-request CPU is what decides throughput on a 2-core machine where wrk, the app and the
proxies share the CPUs, and it is far steadier than req/s when other work shares the
machine. A tree is a directory holding the `ebb` package (put first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc

from bench import procs
from bench.envoy_config import start_static_envoy
from bench.wrk import DONE_LUA, parse_wrk, wrk_command
from ebb.api.networking.v1 import endpoints_pb2, endpoints_pb2_grpc

HOST = procs.HOST
APP = Path(__file__).with_name("app.py")
NAMESPACE, REVISION = "default", "bench"
ROUTE_HEADERS = {
    "Host": f"{REVISION}.{NAMESPACE}.localhost",
    "Knative-Serving-Namespace": NAMESPACE,
    "Knative-Serving-Revision": REVISION,
}


class _Endpoints(endpoints_pb2_grpc.EndpointsServiceServicer):
    """The controller's endpoints stream, reduced to one snapshot per activator: each
    listed revision has its queue as the one ready instance, CC 0."""

    def __init__(self, stop: threading.Event) -> None:
        self.revisions: list[endpoints_pb2.RevisionEndpoints] = []
        self._stop = stop

    def add(self, name: str, address: str) -> None:
        self.revisions.append(endpoints_pb2.RevisionEndpoints(
            revision=endpoints_pb2.RevisionKey(namespace=NAMESPACE, name=name),
            addresses=[address], timeout_seconds=60))

    def WatchEndpoints(self, request, context):  # noqa: N802 - gRPC's naming
        yield endpoints_pb2.WatchEndpointsResponse(revisions=list(self.revisions), snapshot=True)
        while not self._stop.wait(0.2) and context.is_active():
            pass


@contextlib.contextmanager
def fake_controller(trees: Sequence[str]) -> Iterator[tuple[int, _Endpoints]]:
    stop = threading.Event()
    servicer = _Endpoints(stop)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=len(trees) + 2))
    endpoints_pb2_grpc.add_EndpointsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield port, servicer
    finally:
        stop.set()
        server.stop(0.5)


def _env(tree: str) -> dict[str, str]:
    path = [str(Path(tree).resolve())]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(path)}


class Stack:
    """One tree's queue and activator in front of the shared app."""

    def __init__(self, name: str, tree: str, processes: procs.Processes, work: Path,
                 app_port: int, controller_port: int, endpoints: _Endpoints,
                 unix: bool = False) -> None:
        env = _env(tree)
        self.name = name
        self.queue_port = procs.free_port()
        ready = work / f"queue-{name}.json"
        socket_args = ["--unix-socket", str(work / f"queue-{name}.sock")] if unix else []
        self.queue = processes.start(f"queue-{name}", [
            sys.executable, "-m", "ebb.queue", "--http-port", str(self.queue_port),
            "--app-port", str(app_port), "--revision", f"{NAMESPACE}/{REVISION}",
            "--instance", name, "--ready-file", str(ready), "--log-level", "warning",
            *socket_args], env)
        procs.wait_file(self.queue, ready)
        procs.wait_http(self.queue, self.queue_port)
        # As `ebb up` lists a local queue: its unix socket when it has one.
        address = f"unix:{socket_args[1]}" if unix else f"{HOST}:{self.queue_port}"
        endpoints.add(f"{REVISION}-{name}", address)
        self.activator_port = procs.free_port()
        self.activator = processes.start(f"activator-{name}", [
            sys.executable, "-m", "ebb.activator", "--http-port", str(self.activator_port),
            "--grpc-port", "0", "--metrics-port", "0", "--controller",
            f"{HOST}:{controller_port}", "--log-level", "warning"], env)
        self.headers = {**ROUTE_HEADERS, "Knative-Serving-Revision": f"{REVISION}-{name}"}
        procs.wait_http(self.activator, self.activator_port, headers=self.headers)


def measure(wrk: str, lua: Path, url: str, headers: dict[str, str], conc: int,
            duration_s: float, pids: dict[str, int]) -> dict:
    """One wrk run; req/s, p50 and CPU µs per request of each process in `pids`."""
    before = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    argv = wrk_command(url, connections=conc, duration_s=duration_s, headers=headers,
                       script=str(lua), binary=wrk)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30,
                         check=True).stdout
    after = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    result = parse_wrk(out)
    requests = max(result.requests, 1)
    return {
        "rps": result.rps, "p50_ms": result.p50_ms, "errors": result.error_count,
        "cpu_us": {name: (after[name] - before[name]) * 1e6 / requests for name in pids},
    }


def run(args: argparse.Namespace) -> dict:
    trees = dict(t.split("=", 1) for t in args.tree)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.hop: wrk not found (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="ebb-hop-"))
    lua = work / "done.lua"
    lua.write_text(DONE_LUA)
    processes = procs.Processes(work, uuid.uuid4().hex)
    procs.compile_bytecode([Path(tree) / "ebb" for tree in trees.values()])
    rows: list[dict] = []
    try:
        app_port = procs.free_port()
        app = processes.start("app", [sys.executable, str(APP), "--port", str(app_port)])
        procs.wait_http(app, app_port)
        with fake_controller(list(trees)) as (controller_port, endpoints):
            stacks = [Stack(name, tree, processes, work, app_port, controller_port, endpoints,
                            unix=name in args.unix)
                      for name, tree in trees.items()]
            points = []
            for stack in stacks:
                base = {"queue": stack.queue.pid}
                points.append((stack.name, "activator", f"http://{HOST}:{stack.activator_port}/",
                               stack.headers, {"activator": stack.activator.pid, **base}))
                points.append((stack.name, "queue", f"http://{HOST}:{stack.queue_port}/",
                               ROUTE_HEADERS, base))
            if args.envoy:
                from ebb.common.envoy import find_envoy

                envoy, listen = start_static_envoy(processes, find_envoy(), work / "envoy.json", app_port)
                points.append(("-", "envoy", f"http://{HOST}:{listen}/", ROUTE_HEADERS,
                               {"envoy": envoy.pid}))
            for point in points:  # warm-up, not recorded
                measure(wrk, lua, point[2], point[3], 16, 1, point[4])
            for conc in args.conc:
                for rep in range(args.repeat):
                    shift = rep % len(points)
                    for tree, path, url, headers, pids in points[shift:] + points[:shift]:
                        row = {"tree": tree, "path": path, "conc": conc, "repeat": rep,
                               **measure(wrk, lua, url, headers, conc, args.duration, pids)}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows}


def table(rows: Sequence[dict]) -> str:
    """Medians per (tree, path, concurrency)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["path"], row["conc"], row["tree"]), []).append(row)
    lines = ["| path | conc | tree | req/s | p50 ms | CPU µs/req by process |",
             "|---|---:|---|---:|---:|---|"]
    for (path, conc, tree), group in sorted(groups.items()):
        med = lambda values: sorted(values)[len(values) // 2]  # noqa: E731 - local helper
        cpu = ", ".join(f"{name} {med([g['cpu_us'][name] for g in group]):.0f}"
                        for name in group[0]["cpu_us"])
        lines.append(f"| {path} | {conc} | {tree} | {med([g['rps'] for g in group]):,.0f} | "
                     f"{med([g['p50_ms'] for g in group]):.3f} | {cpu} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True,
                        help="NAME=DIR: a directory holding the `ebb` package (repeatable)")
    parser.add_argument("--conc", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--envoy", action="store_true", help="add the one-Envoy-hop baseline")
    parser.add_argument("--unix", action="append", default=[], metavar="NAME",
                        help="tree NAME's activator reaches its queue through the queue's unix "
                             "socket, as under `ebb up` (repeatable; default: TCP)")
    parser.add_argument("--out", type=Path, help="write every run as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
