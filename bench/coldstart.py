"""`python -m bench.coldstart`: cold-start latency through a real `ebb up` (issue 4).

One run:

  1. `ebb up` on free 127.0.0.1 ports with short windows (stable-window 6s,
     scale-to-zero-grace-period 1s), then `ebb service create hello` with the sample app
     (samples/hello/app.py) and default autoscaling.
  2. Each trial: wait until the revision is at zero (`ebb revision list -o json`:
     actualReplicas 0, servingMode proxy), let the machine settle, then - in this order,
     so both see the same machine state -
       - baseline: start `python samples/hello/app.py` with PORT set and poll a TCP connect
         every millisecond until it answers (the app's own start-to-ready; also the first
         byte of a GET sent right then);
       - queue alone: an app already up, start `python -m ebb.queue` and poll its
         `K-Network-Probe: queue` health answer (the queue's own start-to-ready); then the
         same with a standby queue (`--standby`, given 1 s for its imports) handed its
         flags on stdin, as the local runtime starts instances;
       - cold request: GET / through the gateway (Envoy) with the service's Host, timing
         the first response byte; the request is held by the activator, which pokes the
         autoscaler, whose decision makes the controller start app + queue.
     The components' JSON logs (ms wall-clock stamps) then split the cold request into
     steps: decision, instance started, queue's proxy listening, app ready (queue's
     probe), queue's gRPC side up, the activator's probe answered, first byte.
  3. Prints the medians, overhead = median(cold first byte) - median(app start-to-ready),
     and the verdict against the target (<= 30 ms).

Also measured once per run: `python -c pass` (interpreter start) and importing the
queue's main module. Everything binds 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs
from bench.autoscaler import machine_line, time_summary
from bench.mesh import NAMESPACE, Mesh
from bench.procs import HOST, Processes, StartError
from bench.report import Verdict, markdown_table

REPO = Path(__file__).resolve().parent.parent
HELLO_APP = REPO / "samples" / "hello" / "app.py"
SERVICE = "hello"
CONFIG = "autoscaler:\n  stable-window: 6s\n  scale-to-zero-grace-period: 1s\n"
OVERHEAD_TARGET_MS = 30.0
KNATIVE_POD_READY_S = 3.1  # Knative's measured pod time-to-ready (mean), for scale
MAX_TRIALS = 50
ZERO_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 60.0
START_TIMEOUT_S = 20.0
POLL_S = 0.001


# ---------------------------------------------------------------------------------------
# Pure helpers


@dataclass(frozen=True)
class RevisionState:
    name: str
    actual: int
    ready: int
    desired: int
    mode: str

    @property
    def at_zero(self) -> bool:
        return self.actual == 0 and self.mode == "proxy"


def revision_states(listing: object) -> dict[str, RevisionState]:
    """From `ebb revision list -o json`: name -> state. Proto JSON leaves out zero values,
    so a missing actualReplicas is 0 (and a missing servingMode is '')."""
    items = listing if isinstance(listing, list) else (listing or {}).get("items", [])
    out = {}
    for item in items:
        name = item.get("metadata", {}).get("name", "")
        status = item.get("status", {}) or {}
        out[name] = RevisionState(name, int(status.get("actualReplicas", 0)),
                                  int(status.get("readyReplicas", 0)),
                                  int(status.get("desiredReplicas", 0)),
                                  str(status.get("servingMode", "")))
    return out


def parse_ts(text: str) -> float:
    """A log line's `ts` (`2026-11-26T19:14:21.123Z`, UTC) as epoch seconds."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {text!r}")
    whole, _, frac = text[:-1].partition(".")
    base = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return base + (float(f"0.{frac}") if frac else 0.0)


@dataclass(frozen=True)
class LogEvent:
    at: float  # epoch seconds
    msg: str
    fields: Mapping[str, object]


def log_events(lines: Iterable[str]) -> list[LogEvent]:
    """The JSON log lines among `lines` (others skipped) as events."""
    out = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            out.append(LogEvent(parse_ts(entry["ts"]), str(entry.get("msg", "")), entry))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def first_event(events: Iterable[LogEvent], since: float, msg: str,
                **match: object) -> LogEvent | None:
    """The earliest event at or after `since` (less 1 ms: stamps are truncated to the
    millisecond) with message `msg` whose fields hold `match`."""
    found = [e for e in events if e.at >= since - 0.001 and e.msg == msg
             and all(e.fields.get(k) == v for k, v in match.items())]
    return min(found, key=lambda e: e.at) if found else None


# The steps of a cold request, in order: (key, label, component log, message, match).
STEPS = (
    ("decision", "autoscaler decides desired ≥ 1 (poke)", "autoscaler", "scale decision", {}),
    ("instance_started", "controller started app + queue (the standby queue when one waits)",
     "controller", "instance started", {}),
    ("proxy_listening", "queue's proxy listening", "queue", "proxy listening", {}),
    ("app_ready", "queue sees the app ready (5 ms probes at first)", "queue", "app ready", {}),
    ("queue_serving", "queue's gRPC admin and metrics up (off the request path)", "queue",
     "queue serving", {}),
    ("activator_probe", "activator's probe answered (5 ms probes at first; or the "
     "controller's 50 ms probe and endpoints stream told it)", "activator",
     "instance answered its probe", {}),
)


def step_times(events: Mapping[str, Sequence[LogEvent]], sent_at: float,
               revision: str) -> dict[str, float | None]:
    """Seconds from `sent_at` to each step in STEPS (None when not in the logs)."""
    out: dict[str, float | None] = {}
    for key, _, component, msg, match in STEPS:
        pool = events.get(component, ())
        if key == "decision":
            hits = [e for e in pool if e.at >= sent_at - 0.001 and e.msg == msg
                    and str(e.fields.get("revision", "")).endswith(f"/{revision}")
                    and int(e.fields.get("desired", 0) or 0) >= 1]
            event = min(hits, key=lambda e: e.at) if hits else None
        else:
            event = first_event(pool, sent_at, msg, **match)
        out[key] = None if event is None else event.at - sent_at
    return out


def median_or_none(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def overhead_ms(cold_ms: Sequence[float], app_ms: Sequence[float]) -> float | None:
    """median(cold first byte) - median(app start-to-ready), in ms; None if either is empty."""
    if not cold_ms or not app_ms:
        return None
    return statistics.median(cold_ms) - statistics.median(app_ms)


def http_status(head: bytes) -> int | None:
    """The status code of an HTTP/1.x response head (`HTTP/1.1 200 OK...`)."""
    first = head.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        return int(first[1])
    return None


# ---------------------------------------------------------------------------------------
# Measurements that touch the system


def timed_get(port: int, host_header: str, timeout_s: float = REQUEST_TIMEOUT_S
              ) -> tuple[float, int | None, bytes]:
    """GET / on 127.0.0.1:port: (seconds to the first response byte, status, response)."""
    request = (f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench.coldstart\r\n"
               "Connection: close\r\n\r\n").encode()
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        first = sock.recv(65536)
        elapsed = time.perf_counter() - started
        data = first
        while first:
            first = sock.recv(65536)
            data += first
    return elapsed, http_status(data), data


def wait_connect(port: int, started: float, proc: subprocess.Popen, timeout_s: float) -> float:
    """Poll a TCP connect every POLL_S until it succeeds: seconds since `started`."""
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return time.perf_counter() - started
        except OSError:
            if proc.poll() is not None:
                raise StartError(f"process exited with {proc.returncode} before listening") from None
            time.sleep(POLL_S)
    raise StartError(f"nothing listening on {port} after {timeout_s:g}s")


def probe_queue(port: int) -> bool:
    try:
        status, body = procs.http_get(port, "/healthz", {"K-Network-Probe": "queue"},
                                      timeout_s=0.5)
    except OSError:
        return False
    return status == 200 and b"queue" in body


def stop_popen(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Baselines:
    """Direct starts of the sample app and of the queue, outside the mesh."""

    def __init__(self, processes: Processes, work: Path) -> None:
        self.processes = processes
        self.work = work
        self.standby_warmup_s = 1.0
        self.env = {**processes.base_env, procs.MARK_VAR: processes.mark,
                    "K_SERVICE": SERVICE, "K_CONFIGURATION": SERVICE,
                    "K_REVISION": "hello-baseline"}

    def _popen(self, argv: Sequence[str], env: Mapping[str, str], name: str,
               stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "ab")  # the child keeps its own copy
        try:
            return subprocess.Popen(list(argv), env=dict(env), stdin=stdin,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(REPO))
        finally:
            log.close()

    def app(self) -> dict[str, float]:
        """Start the sample app: seconds to a TCP connect, and to the first byte of a GET
        sent right after."""
        port = procs.free_port()
        started = time.perf_counter()
        proc = self._popen([sys.executable, str(HELLO_APP)], {**self.env, "PORT": str(port)},
                           "baseline-app")
        try:
            ready = wait_connect(port, started, proc, START_TIMEOUT_S)
            timed_get(port, "localhost", timeout_s=5)
            first_byte = time.perf_counter() - started
        finally:
            stop_popen(proc)
        return {"ready_s": ready, "first_byte_s": first_byte}

    def queue(self, *, standby: bool = False) -> dict[str, float]:
        """With an app already up: start the queue; seconds until it listens, and until its
        `K-Network-Probe: queue` answer is 200 `queue` (it has seen the app).

        standby: the queue is first started with `--standby` and left to do its imports
        (one settle period), then handed its flags on stdin, as the local runtime does;
        the clock starts at the hand-over."""
        app_port = procs.free_port()
        app = self._popen([sys.executable, str(HELLO_APP)], {**self.env, "PORT": str(app_port)},
                          "baseline-queue-app")
        try:
            wait_connect(app_port, time.perf_counter(), app, START_TIMEOUT_S)
            port = procs.free_port()
            flags = ["--http-port", str(port), "--app-port", str(app_port), "--revision",
                     f"{NAMESPACE}/hello-baseline", "--instance", "baseline",
                     "--no-request-log", "--log-level", "warning"]
            queue_cmd = [sys.executable, "-m", "ebb.queue"]
            if standby:
                queue = self._popen([*queue_cmd, "--standby"], self.env, "baseline-standby",
                                    stdin=subprocess.PIPE)
                time.sleep(self.standby_warmup_s)
                started = time.perf_counter()
                queue.stdin.write((json.dumps({"argv": flags}) + "\n").encode())
                queue.stdin.close()
            else:
                started = time.perf_counter()
                queue = self._popen([*queue_cmd, *flags], self.env, "baseline-queue")
            try:
                listening = wait_connect(port, started, queue, START_TIMEOUT_S)
                deadline = started + START_TIMEOUT_S
                while not probe_queue(port):
                    if time.perf_counter() > deadline or queue.poll() is not None:
                        raise StartError("the queue never answered its probe")
                    time.sleep(POLL_S)
                healthy = time.perf_counter() - started
            finally:
                stop_popen(queue)
        finally:
            stop_popen(app)
        return {"listening_s": listening, "healthy_s": healthy}

    def python(self, code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=str(REPO),
                       timeout=30)
        return time.perf_counter() - started


class ColdMesh(Mesh):
    """bench.mesh.Mesh started with a config file and info-level logs (the logs carry the
    step timestamps)."""

    def __init__(self, processes: Processes, work: Path, config: Path) -> None:
        super().__init__(processes, work, config=config, log_level="info")

    def deploy(self) -> str:
        self._ebb("service", "create", SERVICE, "--cmd",
                  f"{self.python} {HELLO_APP}", "--force", "--wait", "--wait-timeout", "90",
                  timeout_s=150)
        states = self.states()
        if not states:
            raise StartError(f"service {SERVICE} has no revision")
        return sorted(states)[-1]

    def states(self) -> dict[str, RevisionState]:
        res = self._ebb("revision", "list", "--service", SERVICE, "-o", "json", timeout_s=30)
        return revision_states(json.loads(res.stdout))

    def wait_zero(self, revision: str, timeout_s: float = ZERO_TIMEOUT_S) -> float:
        """Until the revision is at zero; seconds waited."""
        started = time.monotonic()
        last = None
        while time.monotonic() - started < timeout_s:
            if self.proc is not None and not self.proc.alive():
                raise StartError(f"ebb up exited:\n{self.proc.log_tail()}")
            last = self.states().get(revision)
            if last is not None and last.at_zero:
                return time.monotonic() - started
            time.sleep(0.5)
        raise StartError(f"{revision} not at zero after {timeout_s:g}s (last: {last})")

    def events(self) -> dict[str, list[LogEvent]]:
        logs = self.data_dir / "logs"
        out: dict[str, list[LogEvent]] = {}
        for component in ("autoscaler", "controller", "activator"):
            with contextlib.suppress(OSError):
                out[component] = log_events(
                    (logs / f"{component}.log").read_text(errors="replace").splitlines())
        queue: list[LogEvent] = []
        for path in (logs / "revisions").rglob("*.queue.log"):
            with contextlib.suppress(OSError):
                queue += log_events(path.read_text(errors="replace").splitlines())
        out["queue"] = queue
        return out


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class Settings:
    trials: int = 10
    settle_s: float = 1.0
    keep: bool = False
    out: Path | None = None


@dataclass
class Results:
    machine: dict = field(default_factory=dict)
    python_start_s: list[float] = field(default_factory=list)
    queue_import_s: list[float] = field(default_factory=list)
    app: list[dict] = field(default_factory=list)
    queue: list[dict] = field(default_factory=list)
    standby_queue: list[dict] = field(default_factory=list)
    cold: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(text: str) -> None:
    print(f"[bench.coldstart] {text}", file=sys.stderr, flush=True)


def run(s: Settings, processes: Processes, work: Path, res: Results) -> None:
    base = Baselines(processes, work)
    for _ in range(5):
        res.python_start_s.append(base.python("pass"))
        res.queue_import_s.append(base.python("import ebb.queue.main"))
    config = work / "config.yaml"
    config.write_text(CONFIG)
    mesh = ColdMesh(processes, work, config)
    mesh.start()
    try:
        revision = mesh.deploy()
        host = f"{SERVICE}.{NAMESPACE}.localhost"
        log(f"deployed {revision}; waiting for it to scale to zero")
        for trial in range(s.trials):
            waited = mesh.wait_zero(revision)
            time.sleep(s.settle_s)
            res.app.append(base.app())
            res.queue.append(base.queue())
            res.standby_queue.append(base.queue(standby=True))
            time.sleep(s.settle_s)
            sent_at = time.time()
            first_byte, status, data = timed_get(mesh.ports["http"], host)
            time.sleep(0.5)  # let the components flush their log lines
            steps = step_times(mesh.events(), sent_at, revision)
            res.cold.append({"first_byte_s": first_byte, "status": status,
                             "body_ok": b"Hello from" in data, "waited_for_zero_s": waited,
                             "steps_s": steps})
            log(f"trial {trial + 1}: cold {first_byte * 1000:.0f} ms (HTTP {status}); "
                f"app {res.app[-1]['ready_s'] * 1000:.0f} ms; queue "
                f"{res.queue[-1]['healthy_s'] * 1000:.0f} ms; standby queue "
                f"{res.standby_queue[-1]['healthy_s'] * 1000:.0f} ms; steps "
                + ", ".join(f"{k} {v * 1000:.0f}" for k, v in steps.items() if v is not None))
    finally:
        mesh.stop()


def figures(res: Results) -> dict:
    ok = [c for c in res.cold if c["status"] == 200 and c["body_ok"]]
    cold_ms = [c["first_byte_s"] * 1000 for c in ok]
    app_ms = [a["ready_s"] * 1000 for a in res.app]
    return {
        "cold_first_byte_ms": time_summary(cold_ms),
        "app_ready_ms": time_summary(app_ms),
        "app_first_byte_ms": time_summary([a["first_byte_s"] * 1000 for a in res.app]),
        "queue_listening_ms": time_summary([q["listening_s"] * 1000 for q in res.queue]),
        "queue_healthy_ms": time_summary([q["healthy_s"] * 1000 for q in res.queue]),
        "standby_listening_ms": time_summary(
            [q["listening_s"] * 1000 for q in res.standby_queue]),
        "standby_healthy_ms": time_summary([q["healthy_s"] * 1000 for q in res.standby_queue]),
        "python_start_ms": time_summary([v * 1000 for v in res.python_start_s]),
        "queue_import_ms": time_summary([v * 1000 for v in res.queue_import_s]),
        "overhead_ms": overhead_ms(cold_ms, app_ms),
        "failed_trials": len(res.cold) - len(ok),
        "steps_median_ms": {key: (None if (m := median_or_none(
            c["steps_s"].get(key) for c in ok)) is None else m * 1000)
            for key, *_ in STEPS},
        "steps_seen": {key: sum(1 for c in ok if c["steps_s"].get(key) is not None)
                       for key, *_ in STEPS},
    }


def render(res: Results) -> str:
    f = figures(res)
    lines = [f"Ebb cold-start benchmark — {machine_line(res.machine)}", ""]

    def row(label: str, key: str) -> list[str]:
        t = f[key]
        if not t:
            return [label, "0", "-", "-", "-", "-"]
        return [label, str(t["n"]), f"{t['median']:.1f}", f"{t['p95']:.1f}",
                f"{t['min']:.1f}", f"{t['max']:.1f}"]

    rows = [row("cold request through the gateway, first byte", "cold_first_byte_ms"),
            row("sample app alone: start → TCP connect", "app_ready_ms"),
            row("sample app alone: start → first byte of a GET", "app_first_byte_ms"),
            row("queue alone: start → listening", "queue_listening_ms"),
            row("queue alone: start → probe answers `queue`", "queue_healthy_ms"),
            row("standby queue alone: flags handed → listening", "standby_listening_ms"),
            row("standby queue alone: flags handed → probe answers `queue`",
                "standby_healthy_ms"),
            row("`python -c pass`", "python_start_ms"),
            row("`python -c 'import ebb.queue.main'`", "queue_import_ms")]
    lines += ["Cold start (ms)", "",
              markdown_table(("measure", "n", "median", "p95", "min", "max"), rows,
                             (False, True, True, True, True, True)), ""]
    steps, seen = f["steps_median_ms"], f["steps_seen"]
    cold = f["cold_first_byte_ms"]
    trials = cold.get("n", 0) if cold else 0
    step_rows = [[label, "-" if steps[key] is None else f"{steps[key]:.0f}",
                  f"{seen[key]}/{trials}"] for key, label, *_ in STEPS]
    step_rows.append(["first byte at the client", f"{cold['median']:.0f}" if cold else "-",
                      f"{trials}/{trials}"])
    lines += ["Where a cold request's time goes (median ms after the request was sent, from "
              "the components' logs)", "",
              markdown_table(("step", "ms", "seen in"), step_rows, (False, True, True)), ""]
    over = f["overhead_ms"]
    verdict = Verdict(f"cold-start overhead ≤ {OVERHEAD_TARGET_MS:g} ms beyond the app's own "
                      "start-to-ready",
                      "-" if over is None else
                      f"{over:+.0f} ms (cold {cold['median']:.0f} ms − app "
                      f"{f['app_ready_ms']['median']:.0f} ms; {f['failed_trials']} failed)",
                      None if over is None else over <= OVERHEAD_TARGET_MS
                      and f["failed_trials"] == 0)
    lines += [markdown_table(("target (issue 4)", "measured", "verdict"),
                             [(verdict.target, verdict.measured, verdict.mark)]), "",
              f"For scale: Knative's measured pod time-to-ready is ~{KNATIVE_POD_READY_S:g} s."]
    lines += res.notes
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--trials", type=int, default=10, help="cold requests (10)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds of quiet before each measurement (1)")
    parser.add_argument("--quick", action="store_true", help="3 trials")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    trials = 3 if args.quick else args.trials
    if not 1 <= trials <= MAX_TRIALS:
        parser.error(f"trials must be in 1..{MAX_TRIALS}")
    if not 0 <= args.settle <= 30:
        parser.error("settle must be in 0..30 s")
    return Settings(trials=trials, settle_s=args.settle, keep=args.keep, out=args.out)


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(list(sys.argv[1:] if argv is None else argv))
    work = Path(tempfile.mkdtemp(prefix="ebb-bench-coldstart-"))
    processes = Processes(work, uuid.uuid4().hex)
    res = Results(machine=procs.machine_info())
    busy0, wall0 = procs.busy_now(), time.monotonic()

    code = procs.run_guarded(
        "bench.coldstart", processes, lambda: run(s, processes, work, res),
        (StartError, OSError, ValueError, subprocess.SubprocessError),
    )
    res.machine["busy_cores"] = (procs.busy_now() - busy0) / max(1e-9, time.monotonic() - wall0)
    if res.cold or res.app:
        print(render(res))
    if s.out is not None:
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(json.dumps({**asdict(res), "figures": figures(res)}, indent=1,
                                    default=str) + "\n")
        print(f"\nJSON: {s.out}")
    if s.keep or code:
        print(f"bench.coldstart: logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
