"""`python -m bench`: Ebb's data-plane benchmark, one command.

Starts on 127.0.0.1 what each path needs, runs bounded wrk loads (closed loop, fixed
duration per point) and a bounded constant-rate load, prints one table and writes a JSON
file. Paths (see BENCHMARKS.md):

  direct             wrk -> app
  envoy              wrk -> Envoy (one worker, static config) -> app
  queue              wrk -> queue -> app
  gateway            wrk -> Envoy (static config) -> queue -> app
  gateway-activator  wrk -> gateway of a real `ebb up` -> activator -> queue -> app
  activator          wrk -> activator of that `ebb up` (routing headers) -> queue -> app

Apps: "fast" answers a 15-byte body at once, "slow" after 100 ms. Everything started is
stopped at the end, on error and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs, report
from bench.envoy_config import start_static_envoy
from bench.mesh import Mesh, MeshService
from bench.procs import HOST, Processes, StartError
from bench.stats import Run, summarize
from bench.wrk import DONE_LUA, WrkParseError, WrkResult, parse_wrk, wrk_command

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
BENCH_APP = REPO / "bench" / "app.py"
HELLO_APP = REPO / "samples" / "hello" / "app.py"
APP_BODY = {"bench": b"Hello from ebb", "hello": b"Hello from"}

ALL_PATHS = ("direct", "envoy", "queue", "gateway", "gateway-activator", "activator")
MESH_PATHS = ("gateway-activator", "activator")
ALL_APPS = ("fast", "slow")
MAX_DURATION_S = 600.0
MAX_REPEAT = 20
MAX_CONCURRENCY = 1024
WRK_TIMEOUT_S = 5.0  # per request: a slower answer counts as a timeout error
WRK_GRACE_S = 30.0  # beyond -d before wrk itself is killed

WRK_MISSING = """\
bench: wrk is not installed (the load generator; Debian package `wrk`).
  install it:  sudo apt-get install -y wrk     (./scripts/bench.sh does this when run as root)
  then again:  python -m bench   (or tox -e bench)"""


class PathFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class BenchSettings:
    duration_s: float = 5.0
    warmup_s: float = 1.0
    repeat: int = 1
    concurrency: tuple[int, ...] = (1, 16, 64)
    apps: tuple[str, ...] = ALL_APPS
    paths: tuple[str, ...] = ALL_PATHS
    rate: float = 1000.0  # 0 = no constant-rate point
    rate_duration_s: float = 10.0
    rate_warmup_s: float = 1.0
    slow_delay_ms: float = 100.0
    fast_app: str = "bench"
    out: Path = DEFAULT_OUT
    wrk: str = "wrk"
    keep: bool = False
    quick: bool = False
    pin: bool = False  # proxies on the last CPU, load generator and apps on the others
    quiet_wait_s: float = 15.0  # before each point, wait at most this for other load to end
    queue_args: tuple[str, ...] = ()  # extra flags for the standalone queue
    report: Path | None = None  # only re-render this results file, measure nothing

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        data["report"] = None if self.report is None else str(self.report)
        return data


QUICK = {"duration_s": 1.0, "warmup_s": 0.0, "concurrency": (16,), "rate_duration_s": 2.0,
         "rate_warmup_s": 0.5, "quiet_wait_s": 0.0}
QUIET_CORES = 0.25  # CPU busy outside the benchmark below which the machine counts as quiet


def _csv(kind: type, allowed: Sequence[str] | None = None):
    def parse(text: str) -> tuple:
        values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"{', '.join(map(str, bad))} not in {', '.join(allowed)}")
        return values
    return parse


def parse_args(argv: Sequence[str] | None) -> BenchSettings:
    """Flags -> settings; --quick changes the defaults of the flags not given."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 s per point, concurrency 16, 2 s at constant rate")
    parser.add_argument("--duration", type=float, dest="duration_s",
                        help="seconds of load per point (default 5; whole seconds)")
    parser.add_argument("--warmup", type=float, dest="warmup_s",
                        help="seconds of unrecorded load per path before measuring (default 1)")
    parser.add_argument("--repeat", type=int, help="runs of every point; median and spread "
                        "are reported (default 1)")
    parser.add_argument("--concurrency", type=_csv(int), help="wrk connections, e.g. 1,16,64")
    parser.add_argument("--apps", type=_csv(str, ALL_APPS), help="fast,slow")
    parser.add_argument("--paths", type=_csv(str, ALL_PATHS), help=",".join(ALL_PATHS))
    parser.add_argument("--rate", type=float,
                        help="requests/s of the constant-rate point on the slow app "
                        "(default 1000; 0 = skip)")
    parser.add_argument("--rate-duration", type=float, dest="rate_duration_s",
                        help="measured seconds of the constant-rate point (default 10)")
    parser.add_argument("--rate-warmup", type=float, dest="rate_warmup_s")
    parser.add_argument("--slow-delay-ms", type=float, help="the slow app's delay (default 100)")
    parser.add_argument("--fast-app", choices=sorted(APP_BODY),
                        help="upstream implementation: bench (bench/app.py, uvloop + "
                        "httptools; default) or hello (samples/hello/app.py)")
    parser.add_argument("--out", type=Path, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--wrk", help="wrk binary (default: wrk on PATH)")
    parser.add_argument("--keep", action="store_true", default=None,
                        help="keep the work dir (logs, Envoy configs) after the run")
    parser.add_argument("--pin", action="store_true", default=None,
                        help="pin the proxies to the last CPU and the load generator and apps "
                        "to the others (needs 2+ CPUs)")
    parser.add_argument("--quiet-wait", type=float, dest="quiet_wait_s",
                        help="before each point wait up to this many seconds for CPU use "
                        "outside the benchmark to drop below "
                        f"{QUIET_CORES:g} cores (default 15; 0 = never wait)")
    parser.add_argument("--queue-args", type=shlex.split, metavar="'FLAGS'",
                        help="extra flags for the standalone queue (queue and gateway paths), "
                        "e.g. --queue-args='--no-request-log'; the queue under ebb up keeps "
                        "what the controller gives it")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: rebuild the tables and verdicts from the runs "
                        "in an earlier results file (written back to it, or to --out)")
    args = parser.parse_args(argv)
    if args.queue_args is not None:
        args.queue_args = tuple(args.queue_args)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "quick"}
    base = {**QUICK, "quick": True} if args.quick else {}
    settings = BenchSettings(**{**base, **given})
    problems = []
    if not 1 <= settings.duration_s <= MAX_DURATION_S:
        problems.append(f"duration = {settings.duration_s:g}, must be in 1..{MAX_DURATION_S:g} s")
    if not 0 <= settings.warmup_s <= MAX_DURATION_S:
        problems.append(f"warmup = {settings.warmup_s:g}, must be in 0..{MAX_DURATION_S:g} s")
    if not 1 <= settings.repeat <= MAX_REPEAT:
        problems.append(f"repeat = {settings.repeat}, must be in 1..{MAX_REPEAT}")
    if any(not 1 <= c <= MAX_CONCURRENCY for c in settings.concurrency):
        problems.append(f"concurrency must be in 1..{MAX_CONCURRENCY}")
    if not 0 <= settings.rate <= 20_000:
        problems.append(f"rate = {settings.rate:g}, must be in 0..20000")
    if not 0 < settings.rate_duration_s <= MAX_DURATION_S:
        problems.append(f"rate-duration must be in (0, {MAX_DURATION_S:g}] s")
    if not 0 <= settings.quiet_wait_s <= MAX_DURATION_S:
        problems.append(f"quiet-wait must be in 0..{MAX_DURATION_S:g} s")
    if not 0 <= settings.slow_delay_ms <= 10_000:
        problems.append("slow-delay-ms must be in 0..10000")
    if problems:
        parser.error("; ".join(problems))
    return settings


@dataclass
class Target:
    """Where a path is entered, and whose CPU it costs."""

    key: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    proxies: dict[str, int] = field(default_factory=dict)  # name -> pid
    app_pid: int | None = None


def _idle(pid: int) -> dict[str, float]:
    return {f"idle_after_start_{k}_mb": v for k, v in procs.memory_mb(pid).items()}


def _cpu(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: procs.cpu_seconds(pid) for name, pid in pids.items()}


def machine_info(wrk: str, envoy: str | None) -> dict:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (res.stdout or res.stderr).strip()
            return text.splitlines()[0] if text else ""
        return ""

    versions = {}
    for module in ("uvloop", "httptools"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions[module] = version(module)
    return {
        **procs.machine_info(),
        "wrk": first_line([wrk, "-v"]),
        "envoy": first_line([envoy, "--version"]) if envoy else None,
        # "+dirty": the work tree had uncommitted changes (what ran is not exactly HEAD).
        "git": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty=+dirty"]),
        **versions,
    }


class Bench:
    def __init__(self, settings: BenchSettings, processes: Processes, work: Path, wrk: str,
                 envoy: str | None) -> None:
        self.s = settings
        self.processes = processes
        self.work = work
        self.wrk = wrk
        self.envoy = envoy
        self.lua = work / "done.lua"
        self.lua.write_text(DONE_LUA)
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        self.runs: list[dict] = []
        self.open_runs: list[dict] = []
        self.memory: dict[str, dict] = {}
        self.mesh: Mesh | None = None
        self.mesh_services: dict[str, MeshService] = {}
        self.mesh_details: dict = {}
        self.stack_procs: list[procs.Proc] = []  # the current app's stack, stopped after it
        cpus = sorted(os.sched_getaffinity(0))
        if settings.pin and len(cpus) >= 2:
            self.proxy_cpus: set[int] | None = {cpus[-1]}
            self.load_cpus: set[int] | None = set(cpus[:-1])
        else:
            self.proxy_cpus = self.load_cpus = None

    # -- the apps --

    def app_argv(self, app: str, port: int | None) -> tuple[list[str], dict[str, str], str]:
        """argv, extra env and request path of `app` ("fast" or "slow"); port None: the
        platform passes it in $PORT."""
        delay = 0.0 if app == "fast" else self.s.slow_delay_ms
        if self.s.fast_app == "hello":
            path = "/" if delay == 0 else f"/?sleep={delay:g}"
            env = {"PORT": str(port)} if port is not None else {}
            return [sys.executable, str(HELLO_APP)], env, path
        argv = [sys.executable, str(BENCH_APP), "--delay-ms", f"{delay:g}"]
        if port is not None:
            argv += ["--port", str(port)]
        return argv, {}, "/"

    def log(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    # -- starting things --

    def start_envoy(self, name: str, upstream_port: int, path: str) -> tuple[procs.Proc, int]:
        assert self.envoy is not None
        proc, listen = start_static_envoy(self.processes, self.envoy, self.work / f"{name}.json",
                                          upstream_port, name=name, path=path, cpus=self.proxy_cpus)
        self.stack_procs.append(proc)
        return proc, listen

    def start_stack(self, app: str) -> dict[str, Target]:
        """The app and the static paths in front of it."""
        wanted = set(self.s.paths)
        port = procs.free_port()
        argv, env, path = self.app_argv(app, port)
        app_proc = self.processes.start(f"app-{app}", argv, env, cpus=self.load_cpus)
        self.stack_procs.append(app_proc)
        procs.wait_http(app_proc, port, path, timeout_s=30)
        targets = {"direct": Target("direct", f"http://{HOST}:{port}{path}",
                                    app_pid=app_proc.pid)}
        if "envoy" in wanted:
            envoy, listen = self.start_envoy(f"envoy-{app}", port, path)
            targets["envoy"] = Target("envoy", f"http://{HOST}:{listen}{path}",
                                      proxies={"envoy": envoy.pid}, app_pid=app_proc.pid)
            self.memory[f"Envoy hop ({app} app)"] = _idle(envoy.pid)
        if wanted & {"queue", "gateway"}:
            qport = procs.free_port()
            ready = self.work / f"queue-{app}.ready.json"
            queue = self.processes.start(f"queue-{app}", [
                sys.executable, "-m", "ebb.queue", "--http-port", str(qport),
                "--app-port", str(port), "--revision", "default/bench", "--instance", "b1",
                "--ready-file", str(ready), *self.s.queue_args], cpus=self.proxy_cpus)
            self.stack_procs.append(queue)
            procs.wait_file(queue, ready)
            time.sleep(1.0)  # settle; no request has reached it yet
            self.memory[f"queue ({app} app)"] = _idle(queue.pid)
            procs.wait_http(queue, qport, path, timeout_s=30)  # 503 until the app probes ok
            targets["queue"] = Target("queue", f"http://{HOST}:{qport}{path}",
                                      proxies={"queue": queue.pid}, app_pid=app_proc.pid)
            if "gateway" in wanted:
                gateway, listen = self.start_envoy(f"gateway-{app}", qport, path)
                targets["gateway"] = Target(
                    "gateway", f"http://{HOST}:{listen}{path}",
                    proxies={"envoy": gateway.pid, "queue": queue.pid}, app_pid=app_proc.pid)
        for key in MESH_PATHS:
            if key in wanted and key not in self.unavailable and app in self.mesh_services:
                targets[key] = self.mesh_target(key, self.mesh_services[app])
        return {k: v for k, v in targets.items() if k in wanted}

    def start_mesh(self) -> None:
        """`ebb up`, one service per app; marks the activator paths n/a unless the activator
        really serves them (and stops the mesh then: it would only add noise)."""
        self.mesh = Mesh(self.processes, self.work)
        try:
            self.log("starting ebb up for the activator paths")
            self.mesh.start()
            for app in self.s.apps:
                argv, env, _ = self.app_argv(app, None)
                if env:
                    raise StartError("--fast-app hello is not supported on the mesh paths")
                service = self.mesh.create_service(f"bench-{app}", argv)
                self.mesh_services[app] = service
                if service.queue_idle_memory is not None:
                    self.memory[f"queue under ebb up, with stats reporter ({app} app)"] = {
                        f"idle_after_start_{k}_mb": v
                        for k, v in service.queue_idle_memory.items()}
            if self.proxy_cpus and self.load_cpus:
                self.pin_mesh()
            first = self.mesh_services[self.s.apps[0]]
            body = APP_BODY[self.s.fast_app]
            direct, gateway, details = self.mesh.check_activator(first, body)
            self.mesh_details = details
            for key, reason in (("activator", direct), ("gateway-activator", gateway)):
                if reason is not None:
                    self.unavailable[key] = reason
        except (StartError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            self.log(f"ebb up path failed: {exc}")
            self.mesh_details["error"] = str(exc)[-2000:]
            for key in MESH_PATHS:
                self.unavailable.setdefault(key, "n/a (ebb up failed; see JSON)")
        if all(key in self.unavailable for key in MESH_PATHS):
            self.log(f"activator paths: {self.unavailable.get('activator')}; stopping ebb up")
            self.mesh.stop()
            self.mesh = None

    def pin_mesh(self) -> None:
        """Gateway, activator and queues on the proxy CPU, the apps on the load CPUs (the
        controller, autoscaler and webhook are left to the scheduler)."""
        assert self.mesh is not None and self.proxy_cpus and self.load_cpus
        for pid in filter(None, [self.mesh.envoy_pid(), self.mesh.activator_pid(),
                                 *(s.queue_pid for s in self.mesh_services.values())]):
            procs.pin(pid, self.proxy_cpus)
        for pid in procs.marked_pids(self.processes.mark):
            if str(BENCH_APP) in procs.cmdline(pid):
                procs.pin(pid, self.load_cpus)

    def mesh_target(self, key: str, service: MeshService) -> Target:
        assert self.mesh is not None
        activator = self.mesh.activator_pid()
        proxies = {}
        if key == "gateway-activator":
            envoy = self.mesh.envoy_pid()
            if envoy is not None:
                proxies["envoy"] = envoy
            if activator is not None:
                proxies["activator"] = activator
            url, headers = f"http://{HOST}:{self.mesh.ports['http']}/", {"Host": service.host}
        else:
            if activator is not None:
                proxies["activator"] = activator
            url = f"http://{HOST}:{self.mesh.ports['activator']}/"
            headers = self.mesh.activator_headers(service)
        if service.queue_pid is not None:
            proxies["queue"] = service.queue_pid
        return Target(key, url, headers, proxies, app_pid=service.app_pid)

    # -- measuring --

    def wrk_run(self, target: Target, connections: int, duration_s: float) -> WrkResult:
        argv = wrk_command(target.url, connections=connections, duration_s=duration_s,
                           timeout_s=WRK_TIMEOUT_S, headers=target.headers,
                           script=str(self.lua), binary=self.wrk)
        try:
            res = subprocess.run(argv, capture_output=True, text=True,
                                 timeout=duration_s + WRK_GRACE_S, stdin=subprocess.DEVNULL,
                                 preexec_fn=procs.affinity(self.load_cpus))
        except subprocess.TimeoutExpired:
            raise PathFailed(f"wrk did not finish within {duration_s + WRK_GRACE_S:g}s") from None
        try:
            return parse_wrk(res.stdout)
        except WrkParseError as exc:
            raise PathFailed(f"{exc}; wrk said: {(res.stderr or res.stdout)[-500:]}") from None

    def wait_quiet(self) -> float:
        """Wait (at most quiet_wait_s) until the machine is quiet apart from us; the CPU
        cores busy in the last half second (everything between points is idle, so this is
        other people's load plus the idle mesh)."""
        deadline = time.monotonic() + self.s.quiet_wait_s
        while True:
            before = procs.busy_now()
            time.sleep(0.5)
            cores = (procs.busy_now() - before) / 0.5
            if cores < QUIET_CORES or time.monotonic() >= deadline:
                return cores

    def closed_point(self, app: str, target: Target, connections: int, repeat: int) -> None:
        background = self.wait_quiet()
        pids = dict(target.proxies)
        if target.app_pid:
            pids["app"] = target.app_pid
        cpu0 = _cpu(pids)
        machine0 = procs.cpu_now()
        tasks0 = procs.process_ticks()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.wrk_run(target, connections, self.s.duration_s)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = {k: v - machine0[k] for k, v in procs.cpu_now().items()}
        # Processes off the path that ran meanwhile (other people's work, the idle mesh):
        # the noise gauge.
        other = procs.foreign_cpu_s(tasks0, procs.process_ticks(),
                                    {os.getpid(), *pids.values()})
        used = {n: v - cpu0[n] for n, v in _cpu(pids).items()}
        app_cpu = used.pop("app", None)
        wrk_cpu = (children1.ru_utime + children1.ru_stime
                   - children0.ru_utime - children0.ru_stime)
        # The kernel's interrupt and softirq time (mostly the loopback network stack
        # working for this very load) and steal are recorded apart.
        self.runs.append({"app": app, "path": target.key, "concurrency": connections,
                          "repeat": repeat, "wrk": result.to_dict(),
                          "proxy_cpu_s": used, "app_cpu_s": app_cpu, "wrk_cpu_s": wrk_cpu,
                          "other_cpu_s": round(other, 3),
                          "irq_softirq_cpu_s": round(machine["irq"], 3),
                          "steal_cpu_s": round(machine["steal"], 3),
                          "background_cores_before": round(background, 3)})
        errors = f", {result.error_count} errors" if result.error_count else ""
        self.log(f"[{app}] {target.key:<17} c={connections:<3} rep {repeat + 1}: "
                 f"{result.rps:>9,.0f} req/s  p50 {report.fmt_ms(result.p50_ms)} ms  "
                 f"p99 {report.fmt_ms(result.p99_ms)} ms  proxy cpu {sum(used.values()):.2f} s"
                 f"  other cpu {other:.2f} s{errors}")

    def open_point(self, target: Target, repeat: int) -> None:
        argv = [sys.executable, "-m", "bench.openloop", "--url", target.url,
                "--rate", f"{self.s.rate:g}", "--duration", f"{self.s.rate_duration_s:g}",
                "--warmup", f"{self.s.rate_warmup_s:g}"]
        for name, value in target.headers.items():
            argv += ["-H", f"{name}: {value}"]
        bound = self.s.rate_duration_s + self.s.rate_warmup_s + 30
        background = self.wait_quiet()
        cpu0 = _cpu(target.proxies)
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=bound,
                                 cwd=str(REPO), stdin=subprocess.DEVNULL,
                                 preexec_fn=procs.affinity(self.load_cpus))
        except subprocess.TimeoutExpired:
            raise PathFailed(f"open-loop generator did not finish within {bound:g}s") from None
        cpu = {n: v - cpu0[n] for n, v in _cpu(target.proxies).items()}
        try:
            result = json.loads(res.stdout)
        except ValueError:
            raise PathFailed(f"open-loop generator failed: {res.stderr[-800:]}") from None
        self.open_runs.append({"path": target.key, "repeat": repeat, "result": result,
                               "proxy_cpu_s": cpu,
                               "background_cores_before": round(background, 3)})
        lat = result["latency_ms"]
        self.log(f"[rate {self.s.rate:g}/s] {target.key:<17} rep {repeat + 1}: "
                 f"p50 {report.fmt_ms(lat.get('p50'))} p95 {report.fmt_ms(lat.get('p95'))} "
                 f"p99 {report.fmt_ms(lat.get('p99'))} ms, ok {result['ok']}/"
                 f"{result['scheduled']}, send lag p99 "
                 f"{report.fmt_ms(result['send_lag_ms'].get('p99'))} ms")

    def guarded(self, target: Target, action) -> None:
        """Run one measurement; a path whose processes died or whose load failed is marked
        n/a for the rest of the run instead of ending it."""
        try:
            action()
        except (PathFailed, OSError, ValueError) as exc:
            reason = f"n/a (failed: {str(exc).splitlines()[0][:80]})"
            self.log(f"{target.key}: {exc}")
            self.unavailable.setdefault(target.key, reason)

    def run(self) -> None:
        if set(self.s.paths) & set(MESH_PATHS):
            self.start_mesh()
        for app in self.s.apps:
            self.log(f"[{app}] starting the app and the proxies in front of it")
            stack = self.start_stack(app)
            order = [k for k in self.s.paths if k in stack]
            if self.s.warmup_s > 0:
                for key in order:
                    with contextlib.suppress(PathFailed):
                        self.wrk_run(stack[key], 16, self.s.warmup_s)
            for repeat in range(self.s.repeat):
                # Rotate the order each repeat so no path always runs first or last.
                shift = repeat % len(order)
                rotated = order[shift:] + order[:shift]
                for connections in self.s.concurrency:
                    for key in rotated:
                        if key in self.unavailable:
                            continue
                        self.guarded(stack[key], lambda a=app, t=stack[key], c=connections,
                                     r=repeat: self.closed_point(a, t, c, r))
            if app == "slow" and self.s.rate > 0:
                for repeat in range(self.s.repeat):
                    shift = repeat % len(order)
                    for key in order[shift:] + order[:shift]:
                        if key not in self.unavailable:
                            self.guarded(stack[key], lambda t=stack[key], r=repeat:
                                         self.open_point(t, r))
            time.sleep(1.0)  # idle again before the after-load RSS
            for label, pid_key in ((f"queue ({app} app)", "queue"),
                                   (f"Envoy hop ({app} app)", "envoy")):
                target = stack.get(pid_key)
                if target is not None and label in self.memory:
                    pid = next(iter(target.proxies.values()))
                    with contextlib.suppress(OSError, ValueError):
                        self.memory[label]["idle_after_load_rss_mb"] = procs.rss_bytes(pid) / 2**20
            for proc in reversed(self.stack_procs):
                self.processes.stop(proc)
            self.stack_procs.clear()
        if self.mesh is not None:
            self.mesh.stop()
            self.mesh = None


def build_result(bench: Bench | Recorded, settings: BenchSettings, machine: dict, started: str,
                 argv: Sequence[str]) -> tuple[dict, str]:
    """The JSON document and the printed report."""
    runs = [Run(app=r["app"], path=r["path"], concurrency=r["concurrency"],
                repeat=r["repeat"], rps=r["wrk"]["rps"], p50_ms=r["wrk"]["p50_ms"],
                p99_ms=r["wrk"]["p99_ms"], requests=r["wrk"]["requests"],
                errors=sum(r["wrk"]["errors"].values()), proxy_cpu_s=r["proxy_cpu_s"],
                other_cpu_s=r.get("other_cpu_s"))
            for r in bench.runs]
    summaries = summarize(runs)
    open_summaries = report.summarize_open_loop(bench.open_runs)
    queue_rss = {label: values["idle_after_start_rss_mb"]
                 for label, values in bench.memory.items()
                 if label.startswith("queue") and "idle_after_start_rss_mb" in values}
    verdicts = report.evaluate_targets(summaries, open_summaries, queue_rss, bench.unavailable)
    paths = [p for p in ALL_PATHS if p in settings.paths]
    spread_note = (f"median of {settings.repeat} runs, ± half the range" if settings.repeat > 1
                   else "one run per point")
    lines = [
        f"Ebb data-plane benchmark — {machine['nproc']} CPU ({machine['cpu_model']}), "
        f"{settings.duration_s:g} s per point, {spread_note}; ratios are paired per run, "
        "then the median",
        "",
        report.closed_loop_table(summaries, bench.unavailable, list(settings.apps), paths),
    ]
    if bench.open_runs or (settings.rate > 0 and "slow" in settings.apps):
        lines += ["", f"Constant rate, slow app ({settings.slow_delay_ms:g} ms), "
                  f"{settings.rate:g} req/s for {settings.rate_duration_s:g} s (open loop, "
                  "latency from when each request was due):", "",
                  report.open_loop_table(open_summaries, bench.unavailable, paths)]
    if bench.memory:
        def cell(values: Mapping[str, float], key: str) -> str:
            return f"{values[key]:.1f}" if key in values else "-"

        rows = [(label, cell(v, "idle_after_start_rss_mb"), cell(v, "idle_after_start_uss_mb"),
                 cell(v, "idle_after_load_rss_mb")) for label, v in bench.memory.items()]
        lines += ["", "Memory (MiB; USS = pages no other process shares, what one more "
                  "instance costs):", "",
                  report.markdown_table(("process", "RSS idle after start",
                                         "USS idle after start", "RSS idle after load"),
                                        rows, (False, True, True, True))]
    lines += ["", "Targets:", "", report.targets_table(verdicts)]
    if note := report.reference_note(summaries, bench.unavailable):
        lines += ["", note]
    text = "\n".join(lines)
    document = {
        "version": 1,
        "started_at": started,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *argv],
        "settings": settings.to_dict(),
        "machine": machine,
        "paths": {k: {"label": report.LABELS[k], "proxies": report.PROXIES[k],
                      "available": k not in bench.unavailable,
                      "note": bench.unavailable.get(k, "")} for k in paths},
        "mesh": bench.mesh_details,
        "runs": bench.runs,
        "summary": [s.to_dict() for s in summaries],
        "open_loop": {"rate": settings.rate, "duration_s": settings.rate_duration_s,
                      "runs": bench.open_runs,
                      "summary": [s.to_dict() for s in open_summaries]},
        "memory_mb": bench.memory,
        "targets": [{"target": v.target, "measured": v.measured, "met": v.met}
                    for v in verdicts],
        "report": text,
    }
    return document, text


@dataclass
class Recorded:
    """What build_result needs from a Bench, read back from a results file."""

    runs: list
    open_runs: list
    memory: dict
    unavailable: dict
    mesh_details: dict


def rerender(path: Path, out: Path) -> int:
    """--report: the tables and verdicts of an earlier run, from its recorded runs."""
    try:
        document = json.loads(path.read_text())
        saved = dict(document["settings"])
        for key in ("concurrency", "apps", "paths", "queue_args"):
            saved[key] = tuple(saved.get(key) or ())
        saved["out"] = out
        saved["report"] = None
        known = {f for f in BenchSettings.__dataclass_fields__}
        settings = BenchSettings(**{k: v for k, v in saved.items() if k in known})
        recorded = Recorded(
            runs=document["runs"], open_runs=document["open_loop"]["runs"],
            memory=document.get("memory_mb", {}),
            unavailable={k: v["note"] for k, v in document["paths"].items()
                         if not v["available"]},
            mesh_details=document.get("mesh", {}))
        rebuilt, text = build_result(recorded, settings, document["machine"],
                                     document["started_at"], document["command"][3:])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"bench: cannot re-render {path}: {exc}", file=sys.stderr)
        return 1
    rebuilt["finished_at"] = document.get("finished_at", rebuilt["finished_at"])
    rebuilt["rerendered_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rebuilt, indent=1) + "\n")
    print(text)
    print(f"\nJSON: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv)
    if settings.report is not None:
        explicit_out = any(a == "--out" or a.startswith("--out=") for a in argv)
        return rerender(settings.report, settings.out if explicit_out else settings.report)
    wrk = shutil.which(settings.wrk)
    if wrk is None:
        print(WRK_MISSING, file=sys.stderr)
        return 3
    envoy = None
    if set(settings.paths) & {"envoy", "gateway"}:
        from ebb.common.envoy import find_envoy

        try:
            envoy = find_envoy()
        except FileNotFoundError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 3
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = machine_info(wrk, envoy)
    work = Path(tempfile.mkdtemp(prefix="ebb-bench-"))
    processes = Processes(work, uuid.uuid4().hex)
    bench = Bench(settings, processes, work, wrk, envoy)
    code = procs.run_guarded("bench", processes, bench.run, (StartError,))
    if code == 0 or bench.runs:
        document, text = build_result(bench, settings, machine, started, argv)
        document["exit_code"] = code  # 130: interrupted, 1: failed; the runs are partial
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        settings.out.write_text(json.dumps(document, indent=1) + "\n")
        print(text)
        print(f"\nJSON: {settings.out}")
    if settings.keep or code:
        print(f"bench: logs and configs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code
