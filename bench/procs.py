"""Processes the benchmark starts: spawn, wait until ready, CPU time and RSS from /proc,
stop. The /proc parsers are pure; the rest touches the system.

Every process started here (and everything it starts, e.g. the apps and queues of an
`ebb up`) carries BENCH_MARK=<run id> in its environment, so a final sweep finds and stops
whatever is left even if a supervisor died.
"""

from __future__ import annotations

import compileall
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ebb.api
import ebb.common

HOST = "127.0.0.1"
# The `ebb` sources: the services, and the generated API (a namespace package of its own).
EBB_PACKAGE_DIRS = [Path(ebb.common.__file__).parent.parent] + [
    Path(p) for p in ebb.api.__path__ if Path(p).is_dir()
]
MARK_VAR = "BENCH_MARK"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stat_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat. The command name
    (field 2) may hold spaces and parentheses, so fields are counted after the last ')';
    utime and stime are fields 14 and 15."""
    rest = stat_text.rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    return int(rest[11]) + int(rest[12])


def status_rss_bytes(status_text: str) -> int:
    """VmRSS from the text of /proc/PID/status, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            if unit != "kb":
                raise ValueError(f"unexpected VmRSS unit: {line!r}")
            return int(parts[1]) * 1024
    raise ValueError("no VmRSS line (a kernel thread or a zombie?)")


PF_KTHREAD = 0x00200000


def stat_task(stat_text: str) -> tuple[int, int, bool]:
    """(start time, utime + stime, is a kernel thread) from the text of /proc/PID/stat:
    flags is field 9, starttime field 22."""
    rest = stat_text.rsplit(")", 1)[1].split()
    return int(rest[19]), int(rest[11]) + int(rest[12]), bool(int(rest[6]) & PF_KTHREAD)


def process_ticks() -> dict[tuple[int, int], int]:
    """utime + stime of every live user-space process, keyed by (pid, start time) so a
    reused pid is not mistaken for the old process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            start, ticks, kthread = stat_task((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if not kthread:
            out[(int(entry.name), start)] = ticks
    return out


def foreign_cpu_s(before: Mapping[tuple[int, int], int], after: Mapping[tuple[int, int], int],
                  exclude: set[int]) -> float:
    """CPU seconds used between two `process_ticks` snapshots by processes whose pid is not
    in `exclude`; a process born in between counts whole. Processes that ended in between
    are not seen, so this is a lower bound."""
    ticks = sum(t - before.get(key, 0) for key, t in after.items() if key[0] not in exclude)
    return ticks / CLK_TCK


def smaps_rollup_kb(text: str) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup: Rss, Pss, Private_Clean, Private_Dirty, ..."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
            out[parts[0][:-1]] = int(parts[1])
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, and USS (pages only this process holds: what one more instance costs) and PSS
    when the kernel has smaps_rollup; in MiB."""
    out = {"rss": rss_bytes(pid) / 2**20}
    with contextlib.suppress(OSError):
        fields = smaps_rollup_kb(Path(f"/proc/{pid}/smaps_rollup").read_text())
        if "Private_Clean" in fields and "Private_Dirty" in fields:
            out["uss"] = (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024
        if "Pss" in fields:
            out["pss"] = fields["Pss"] / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far; its threads included."""
    return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return status_rss_bytes(Path(f"/proc/{pid}/status").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def marked_pids(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds BENCH_MARK=mark."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def affinity(cpus: set[int] | None):
    """A preexec_fn pinning the child to `cpus` (None: no pinning, no preexec_fn)."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class StartError(RuntimeError):
    """A process did not come up."""


class Processes:
    """Starts processes (own session each, output to a log file) and stops them all."""

    def __init__(self, log_dir: Path, mark: str, base_env: Mapping[str, str] | None = None
                 ) -> None:
        self.log_dir = log_dir
        self.mark = mark
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.started: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | None = None, cpus: set[int] | None = None) -> Proc:
        """Start argv in its own session, output to LOG_DIR/name.log; pinned to `cpus`
        (all its threads) when given."""
        log_path = self.log_dir / f"{name}.log"
        environment = {**self.base_env, **(env or {}), MARK_VAR: self.mark}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=environment, cwd=cwd, start_new_session=True,
                preexec_fn=affinity(cpus),
            )
        proc = Proc(name, popen, log_path)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        if proc.alive():
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, sig)
            try:
                proc.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever else it left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> list[int]:
        """Stop in reverse start order, then SIGKILL any marked process still alive; the
        pids of those leftovers."""
        for proc in reversed(list(self.started)):
            self.stop(proc)
        leftovers = marked_pids(self.mark)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return leftovers


def http_get(port: int, path: str = "/", headers: Mapping[str, str] | None = None,
             timeout_s: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def wait_http(proc: Proc | None, port: int, path: str = "/", *, timeout_s: float = 30.0,
              headers: Mapping[str, str] | None = None, expect: bytes | None = None) -> None:
    """Until GET path answers 200 (and, when given, a body holding `expect`); StartError
    when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise StartError(f"{proc.name} exited with code {proc.popen.returncode}:\n"
                             f"{proc.log_tail()}")
        try:
            status, body = http_get(port, path, headers, timeout_s=2.0)
            if status == 200 and (expect is None or expect in body):
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    name = proc.name if proc is not None else f"port {port}"
    tail = f"\n{proc.log_tail()}" if proc is not None else ""
    raise StartError(f"{name} not answering 200 on :{port}{path} after {timeout_s:g}s "
                     f"({last}){tail}")


def wait_file(proc: Proc, path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        if not proc.alive():
            raise StartError(f"{proc.name} exited with code {proc.popen.returncode}:\n"
                             f"{proc.log_tail()}")
        time.sleep(0.05)
    raise StartError(f"{proc.name} wrote no {path} within {timeout_s:g}s:\n{proc.log_tail()}")


def machine_cpu_s(stat_text: str) -> dict[str, float]:
    """CPU seconds since boot, all CPUs, from /proc/stat's first line (`cpu user nice system
    idle iowait irq softirq steal guest guest_nice`, clock ticks), as
    {"tasks": user + nice + system (what processes' utime + stime add up to),
     "irq": irq + softirq (interrupts, and the loopback network stack's receive work,
     which no process is charged for), "steal": taken by the hypervisor}. Guest time is
    already inside user and nice."""
    first = stat_text.splitlines()[0].split()
    if first[0] != "cpu":
        raise ValueError("not /proc/stat")
    ticks = [int(v) for v in first[1:]] + [0] * 8
    return {"tasks": (ticks[0] + ticks[1] + ticks[2]) / CLK_TCK,
            "irq": (ticks[5] + ticks[6]) / CLK_TCK,
            "steal": ticks[7] / CLK_TCK}


def machine_busy_s(stat_text: str) -> float:
    """All busy CPU seconds since boot (tasks + irq + steal)."""
    return sum(machine_cpu_s(stat_text).values())


def cpu_now() -> dict[str, float]:
    return machine_cpu_s(Path("/proc/stat").read_text())


def busy_now() -> float:
    return machine_busy_s(Path("/proc/stat").read_text())


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (threads it creates later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def compile_bytecode(package_dirs: Sequence[Path]) -> None:
    """Write the .pyc of every module under `package_dirs`, as an installed package has.

    A service started from a source tree whose .pyc are missing or older than the sources
    compiles those modules at every start, and the compiler's memory stays in the heap:
    2.8 MB more RSS for the queue when `ebb.common.http1` alone was stale. With
    PYTHONDONTWRITEBYTECODE set (common in containers and CI) nothing ever refreshes them,
    so the memory and start-up figures would depend on when the tree was last edited.
    py_compile writes regardless of that variable."""
    for directory in package_dirs:
        compileall.compile_dir(str(directory), quiet=1)


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived during a benchmark run."""


def run_guarded(prog: str, processes: Processes, body, errors: tuple[type[BaseException], ...]) -> int:
    """Run `body()` with SIGTERM/SIGHUP turned into `Interrupted`; whatever happens, stop
    every process started meanwhile. Returns the exit code: 0, 130 when interrupted, 1 on
    one of `errors` (printed as one line)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        compile_bytecode(EBB_PACKAGE_DIRS)
        body()
    except (Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted; stopping everything", file=sys.stderr)
        code = 130
    except errors as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = 1
    finally:
        leftovers = processes.stop_all()
        if leftovers:
            print(f"{prog}: killed {len(leftovers)} leftover process(es)", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def machine_info() -> dict:
    """CPUs, CPU model, memory, kernel, Python and load average: the machine a run saw."""
    import platform

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = round(int(line.split()[1]) / 1024)
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": cpu_model, "mem_total_mb": mem_total_mb,
        "kernel": platform.release(), "python": platform.python_version(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists() else None,
    }
