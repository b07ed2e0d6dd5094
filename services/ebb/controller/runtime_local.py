"""Local runtime: each instance is two processes, the user's command and a `queue` in front.

Instances run in their own sessions, so they outlive a controller crash; their pids and ports
are kept in DATA_DIR/instances.json and a restarted controller adopts the ones still alive.

Cold starts: the runtime keeps one *standby* queue (`python -m ebb.queue --standby`) that has
already paid Python's start-up and imports and waits on its stdin for an instance's flags. A
new instance takes it (the app is spawned in the same breath) and a replacement starts a
little later, off the critical path; with no standby at hand the queue is started cold.
Processes are spawned with `subprocess.Popen` (vfork + exec, no copy of the controller's
page tables) and their exits are learned through a pidfd on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ebb.common.procs import pid_alive
from ebb.common.settings import MAX_UNIX_PATH_BYTES
from ebb.controller.reconcile import InstanceView
from ebb.controller.runtime import (
    Address,
    InstanceSpec,
    RevisionKey,
    queue_drain_max_s,
    revision_queue_args,
)

log = logging.getLogger(__name__)

PROBE_FAST_S = 0.05  # Knative probes aggressively until the first success
PROBE_SLOW_S = 1.0
PROBE_TIMEOUT_S = 0.3
START_DEADLINE_S = 120.0  # an instance not ready by then is failed and replaced
BACKOFF_MAX_S = 30.0
# The crash backoff starts over only once an instance has served this long (Kubernetes'
# CrashLoopBackOff: 10 minutes). Reset at the first ready probe, an app that crashes a
# few seconds after it starts was restarted about once a second forever.
BACKOFF_RESET_S = 600.0
QUEUE_DRAIN_MAX_S = 30.0  # the queue's own --drain-max-s default
APP_STOP_GRACE_S = 5.0
# A replacement standby waits this long after one is taken, so its imports (CPU) do not
# compete with the instance that is starting.
STANDBY_RESPAWN_DELAY_S = 1.0
STANDBY_FLAG = "--standby"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, sig)


class Child:
    """A process we started and must reap: `pid`, `returncode` (None while it runs), `wait()`.

    The exit is learned through a pidfd the event loop watches, so no child watcher thread
    and no SIGCHLD handling are involved.
    """

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = popen.stdin
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        self._loop.add_reader(self._pidfd, self._on_readable)

    @classmethod
    def spawn(cls, args, **popen_args) -> Child:
        """Start `args` in a new session (a group we can signal as a whole)."""
        return cls(subprocess.Popen(args, start_new_session=True, **popen_args))

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def _on_readable(self) -> None:
        code = self._popen.poll()
        if code is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        """The exit code, once it has exited (cancelling the wait leaves the watch in place)."""
        return await asyncio.shield(self._exited)


async def probe_queue(address: Address, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Knative's network probe: `K-Network-Probe: queue` must answer 200 with body `queue`."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(
            f"GET /healthz HTTP/1.1\r\nHost: {address}\r\nK-Network-Probe: queue\r\n"
            "User-Agent: ebb-controller-probe\r\nConnection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(reader.read(4096), timeout_s)
        while data and b"\r\n\r\n" in data and not data.split(b"\r\n\r\n", 1)[1]:
            more = await asyncio.wait_for(reader.read(4096), timeout_s)
            if not more:
                break
            data += more
        return data.startswith(b"HTTP/1.1 200") and data.split(b"\r\n\r\n", 1)[-1].startswith(b"queue")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


PERSISTED = (
    "id", "namespace", "revision", "app_port", "queue_port", "app_pid", "queue_pid", "started_at_s",
    "spec_hash", "queue_unix", "drain_max_s",
)  # fmt: skip


@dataclass
class Instance:
    """One running instance; persisted so a restarted controller can adopt it."""

    id: str
    namespace: str
    revision: str
    app_port: int
    queue_port: int
    app_pid: int = 0
    queue_pid: int = 0
    started_at_s: float = 0.0
    spec_hash: str = ""
    # The queue also listens on this unix socket ("" = TCP only): the activator, on the
    # same machine, forwards through it (half the kernel's cost of a loopback TCP hop).
    queue_unix: str = ""
    # How long its queue may drain after SIGTERM (`queue_drain_max_s`; the default is for
    # instances saved by a controller that did not record it).
    drain_max_s: float = QUEUE_DRAIN_MAX_S
    # runtime-only state
    ready: bool = field(default=False, compare=False)
    ready_since: float = field(default=0.0, compare=False)  # loop time it last became ready
    stopping: bool = field(default=False, compare=False)
    failed: str = field(default="", compare=False)
    failed_message: str = field(default="", compare=False)
    task: asyncio.Task | None = field(default=None, compare=False, repr=False)
    app_proc: Child | None = field(default=None, compare=False, repr=False)
    queue_proc: Child | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.namespace, self.revision)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.queue_port, self.queue_unix)

    def record(self) -> dict:
        return {name: getattr(self, name) for name in PERSISTED}


@dataclass
class _RevisionState:
    instances: list[Instance] = field(default_factory=list)
    ever_ready: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    consecutive_failures: int = 0
    next_start_s: float = 0.0
    desired: int = 0


class LocalRuntime:
    """Runs revision instances as local processes under DATA_DIR."""

    def __init__(
        self,
        data_dir: Path,
        *,
        autoscaler: str = "",  # where the queues stream stats (the autoscaler's stats port)
        queue_command: tuple[str, ...] = (sys.executable, "-m", "ebb.queue"),
        extra_queue_args: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        metrics=None,
    ) -> None:
        self._metrics = metrics  # ControllerMetrics or None
        # Backoff deadlines use the same wall clock the controller passes to ensure(now_s).
        self._clock = clock
        self._data_dir = Path(data_dir)
        self._state_file = self._data_dir / "instances.json"
        self._logs = self._data_dir / "logs" / "revisions"
        self._autoscaler = autoscaler
        self._queue_command = queue_command
        self._extra_queue_args = extra_queue_args
        self._revs: dict[RevisionKey, _RevisionState] = {}
        self._listener: Callable[[], None] = lambda: None
        self._closing = False
        self._stop_tasks: set[asyncio.Task] = set()
        self._standby: Child | None = None
        self._standby_due_s = 0.0  # monotonic time before which no standby is started
        self._standby_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ interface

    def set_listener(self, callback: Callable[[], None]) -> None:
        self._listener = callback

    def revisions(self) -> set[RevisionKey]:
        return {k for k, st in self._revs.items() if st.instances}

    def view(self, key: RevisionKey) -> InstanceView:
        st = self._revs.get(key)
        if st is None:
            return InstanceView()
        live = [i for i in st.instances if not i.stopping]
        return InstanceView(
            desired=st.desired,
            actual=len(live),
            ready=sum(1 for i in live if i.ready),
            ever_ready=st.ever_ready,
            failure_reason=st.failure_reason,
            failure_message=st.failure_message,
        )

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        st = self._revs.get(key)
        return [i.address for i in st.instances if i.ready and not i.stopping] if st else []

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        st = self._revs.get(key)
        return [i.address for i in st.instances if not i.ready and not i.stopping] if st else []

    async def ensure(self, key: RevisionKey, spec: InstanceSpec, count: int, *, now_s: float) -> None:
        st = self._revs.setdefault(key, _RevisionState())
        st.desired = count
        self._keep_standby()
        live = [i for i in st.instances if not i.stopping]
        if len(live) < count and now_s >= st.next_start_s and not self._closing:
            for _ in range(count - len(live)):
                await self._start(key, spec, st, now_s)
        elif len(live) > count:
            # Drain the not-ready ones first, then the youngest.
            surplus = sorted(live, key=lambda i: (i.ready, -i.started_at_s))[: len(live) - count]
            for inst in surplus:
                self._begin_stop(inst)

    async def remove(self, key: RevisionKey) -> None:
        st = self._revs.get(key)
        if not st:
            return
        st.desired = 0
        for inst in list(st.instances):
            self._begin_stop(inst)

    async def close(self, *, stop_instances: bool) -> None:
        self._closing = True
        insts = [i for st in self._revs.values() for i in st.instances]
        for inst in insts:
            if inst.task:
                inst.task.cancel()
        if stop_instances:
            for inst in insts:
                self._begin_stop(inst)
            if self._stop_tasks:
                await asyncio.gather(*self._stop_tasks, return_exceptions=True)
            self._save()
        await self._drop_standby()

    # ------------------------------------------------------------ adoption

    async def adopt(self) -> int:
        """Take over instances a previous controller left running; returns how many."""
        try:
            records = json.loads(self._state_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0
        adopted = 0
        for rec in records:
            try:
                inst = Instance(**rec)
            except TypeError:
                continue
            if not (pid_alive(inst.app_pid) and pid_alive(inst.queue_pid)):
                kill_group(inst.app_pid, signal.SIGKILL)
                kill_group(inst.queue_pid, signal.SIGKILL)
                continue
            st = self._revs.setdefault(inst.key, _RevisionState())
            st.instances.append(inst)
            inst.ready = await probe_queue(inst.address)
            st.ever_ready = st.ever_ready or inst.ready
            inst.task = asyncio.ensure_future(self._watch(inst, st))
            adopted += 1
        log.info("adopted instances", extra={"count": adopted})
        self._save()
        return adopted

    def _save(self) -> None:
        records = [i.record() for st in self._revs.values() for i in st.instances]
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(self._state_file)

    # ------------------------------------------------------------ lifecycle

    async def _start(self, key: RevisionKey, spec: InstanceSpec, st: _RevisionState, now_s: float) -> None:
        inst_id = f"{spec.revision}-{uuid.uuid4().hex[:6]}"
        app_port = spec.container_port or free_port()
        queue_port = free_port()
        inst = Instance(
            inst_id, key.namespace, key.name, app_port, queue_port, started_at_s=now_s,
            queue_unix=self._queue_socket(inst_id), drain_max_s=queue_drain_max_s(spec),
        )  # fmt: skip
        log_dir = self._logs / key.namespace / key.name
        log_dir.mkdir(parents=True, exist_ok=True)
        queue_log = log_dir / f"{inst_id}.queue.log"
        # The queue first: a standby takes its flags in microseconds and starts listening
        # while the app is still being spawned.
        queue_args = self._queue_args(key, spec, inst)
        queue_proc = self._hand_to_standby(queue_args, queue_log)
        queue_from = "standby" if queue_proc is not None else "cold"
        inst.queue_proc = queue_proc or self._spawn_queue(queue_args, queue_log)
        inst.queue_pid = inst.queue_proc.pid
        try:
            with open(log_dir / f"{inst_id}.app.log", "ab") as out:  # noqa: ASYNC230 - local file, opened once
                inst.app_proc = Child.spawn(
                    spec.command,
                    env=self._app_env(spec, app_port),
                    cwd=spec.working_dir or str(self._data_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            kill_group(inst.queue_pid, signal.SIGKILL)
            self._fail_start(st, now_s, "ExitCode127", f"cannot start {spec.command[0] if spec.command else '<none>'}: {exc}")
            return
        inst.app_pid = inst.app_proc.pid
        st.instances.append(inst)
        inst.task = asyncio.ensure_future(self._watch(inst, st))
        self._save()
        log.info(
            "instance started",
            extra={"instance": inst_id, "app_port": app_port, "queue_port": queue_port, "queue": queue_from},
        )
        if self._metrics is not None:
            self._metrics.instance_started()
        self._listener()

    @staticmethod
    def _app_env(spec: InstanceSpec, app_port: int) -> dict[str, str]:
        """The controller's environment (minus its tracing service name, which is not the
        app's), the revision's env, and Knative's PORT and K_* variables."""
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
        env.update(dict(spec.env))
        env.update(
            PORT=str(app_port),
            K_SERVICE=spec.service,
            K_CONFIGURATION=spec.configuration,
            K_REVISION=spec.revision,
        )
        return env

    @staticmethod
    def _queue_env() -> dict[str, str]:
        """Tracing settings (EBB_TRACING, OTEL_*) pass through from the controller's
        environment; the spans are the queue's own."""
        return {**os.environ, "OTEL_SERVICE_NAME": "ebb-queue"}

    def _queue_args(self, key: RevisionKey, spec: InstanceSpec, inst: Instance) -> list[str]:
        """The queue's flags for this instance (without the command that runs it)."""
        # The queue writes its addresses (http, grpc, metrics) to a ready file under the
        # data dir, where `ebb` and the tests find its metrics port; it removes it at exit.
        ready_dir = self._data_dir / "run" / "queues"
        ready_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "--http-port", str(inst.queue_port),
            "--admin-port", "0",
            "--metrics-port", "0",
            "--ready-file", str(ready_dir / f"{inst.id}.json"),
            "--app-port", str(inst.app_port),
            "--revision", f"{key.namespace}/{key.name}",
            "--instance", inst.id,
            *revision_queue_args(spec),
            *self._extra_queue_args,
        ]
        if self._autoscaler:
            args += ["--autoscaler", self._autoscaler]
        if inst.queue_unix:
            args += ["--unix-socket", inst.queue_unix]
        return args

    def _queue_socket(self, inst_id: str) -> str:
        """The unix socket path of an instance's queue, beside its ready file; "" (TCP
        only) when the data dir is too deep for a socket path."""
        path = str((self._data_dir / "run" / "queues" / f"{inst_id}.sock").absolute())
        return path if len(path.encode()) <= MAX_UNIX_PATH_BYTES else ""

    def _spawn_queue(self, queue_args: list[str], log_path: Path) -> Child:
        """A cold queue: a fresh interpreter that imports everything before it listens."""
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - local file, opened once
            return Child.spawn(
                [*self._queue_command, *queue_args],
                env=self._queue_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    # ------------------------------------------------------------ standby queue

    def _keep_standby(self) -> None:
        """Start a standby queue unless one is waiting, one was taken a moment ago, or we
        are closing."""
        if self._closing or (self._standby is not None and self._standby.returncode is None):
            return
        if self._standby is not None:  # it died waiting
            self._standby.stdin.close()
            self._standby = None
        now = time.monotonic()
        if now < self._standby_due_s:
            if self._standby_timer is None:
                self._standby_timer = asyncio.get_running_loop().call_later(
                    self._standby_due_s - now, self._standby_timer_fired
                )
            return
        self._standby_due_s = now + STANDBY_RESPAWN_DELAY_S  # a crashing standby: once a delay
        log_dir = self._data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_dir / "queue-standby.log", "ab") as out:
                self._standby = Child.spawn(
                    [*self._queue_command, STANDBY_FLAG],
                    env=self._queue_env(),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            self._standby = None
            log.warning("cannot start a standby queue", extra={"error": str(exc)})

    def _standby_timer_fired(self) -> None:
        self._standby_timer = None
        self._keep_standby()

    def _hand_to_standby(self, queue_args: list[str], log_path: Path) -> Child | None:
        """Give the waiting standby this instance's flags; None when there is none alive."""
        standby, self._standby = self._standby, None
        if standby is None:
            return None
        self._standby_due_s = time.monotonic() + STANDBY_RESPAWN_DELAY_S
        self._keep_standby()  # arms the timer for the replacement
        order = json.dumps({"argv": queue_args, "log": str(log_path)}) + "\n"
        try:
            if standby.returncode is not None:
                raise BrokenPipeError("the standby queue has exited")
            standby.stdin.write(order.encode())
            standby.stdin.close()
        except OSError as exc:
            log.warning("standby queue unusable, starting one cold", extra={"error": str(exc)})
            kill_group(standby.pid, signal.SIGKILL)
            return None
        return standby

    async def _drop_standby(self) -> None:
        """Stop the waiting standby (it would also exit by itself at the end of its stdin)."""
        if self._standby_timer is not None:
            self._standby_timer.cancel()
            self._standby_timer = None
        standby, self._standby = self._standby, None
        if standby is None:
            return
        kill_group(standby.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(standby.wait(), 5.0)
        standby.stdin.close()

    def _fail_start(self, st: _RevisionState, now_s: float, reason: str, message: str) -> None:
        st.failure_reason, st.failure_message = reason, message
        st.consecutive_failures += 1
        st.next_start_s = now_s + min(BACKOFF_MAX_S, 2.0 ** (st.consecutive_failures - 1))
        self._listener()

    async def _watch(self, inst: Instance, st: _RevisionState) -> None:
        """Probe the instance (fast until ready, then slow) and notice when its app dies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE_S
        try:
            while not inst.stopping:
                code = self._exit_code(inst)
                if code is not None:
                    self._on_exit(inst, st, code, self._clock())
                    return
                ok = await probe_queue(inst.address)
                if ok != inst.ready and not inst.stopping:
                    inst.ready = ok
                    if ok:
                        inst.ready_since = loop.time()
                        st.ever_ready = True
                        st.failure_reason = st.failure_message = ""
                    self._listener()
                elif ok and st.failure_reason and not inst.stopping:
                    # An instance serves: an earlier crash of another one is over, and must
                    # not read as a crash loop when the revision next starts from zero.
                    st.failure_reason = st.failure_message = ""
                    self._listener()
                if inst.ready and st.consecutive_failures and loop.time() - inst.ready_since >= BACKOFF_RESET_S:
                    st.consecutive_failures = 0  # it has served long enough: crashes start over
                if not inst.ready and not st.ever_ready and loop.time() > deadline:
                    self._fail(
                        inst, st, "ProgressDeadlineExceeded", "Instance did not become ready in time.", self._clock()
                    )
                    return
                await asyncio.sleep(PROBE_SLOW_S if inst.ready else PROBE_FAST_S)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("instance watcher failed", extra={"instance": inst.id})

    def _exit_code(self, inst: Instance) -> int | None:
        if inst.app_proc is not None:
            return inst.app_proc.returncode
        return None if pid_alive(inst.app_pid) else -1

    def _on_exit(self, inst: Instance, st: _RevisionState, code: int, now_s: float) -> None:
        tail = self._log_tail(inst)
        reason = f"ExitCode{code}" if code >= 0 else "Terminated"
        message = f"Container exited with code {code}." + (f" Last output: {tail}" if tail else "")
        self._fail(inst, st, reason, message, now_s)

    def _fail(self, inst: Instance, st: _RevisionState, reason: str, message: str, now_s: float) -> None:
        log.warning("instance failed", extra={"instance": inst.id, "reason": reason})
        inst.ready = False
        self._begin_stop(inst)
        self._fail_start(st, now_s, reason, message)

    def _log_tail(self, inst: Instance) -> str:
        path = self._logs / inst.namespace / inst.revision / f"{inst.id}.app.log"
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    def _begin_stop(self, inst: Instance) -> None:
        if inst.stopping:
            return
        inst.stopping = True
        inst.ready = False
        if inst.task and inst.task is not asyncio.current_task():
            inst.task.cancel()
        task = asyncio.ensure_future(self._stop(inst))
        self._stop_tasks.add(task)
        task.add_done_callback(self._stop_tasks.discard)
        self._listener()

    async def _stop(self, inst: Instance) -> None:
        """Queue first (it drains accepted requests), then the app, then SIGKILL leftovers."""
        kill_group(inst.queue_pid, signal.SIGTERM)
        await self._wait_exit(inst.queue_proc, inst.queue_pid, inst.drain_max_s + 5)
        kill_group(inst.queue_pid, signal.SIGKILL)
        kill_group(inst.app_pid, signal.SIGTERM)
        await self._wait_exit(inst.app_proc, inst.app_pid, APP_STOP_GRACE_S)
        kill_group(inst.app_pid, signal.SIGKILL)
        await self._wait_exit(inst.app_proc, inst.app_pid, 1.0)
        st = self._revs.get(inst.key)
        if st and inst in st.instances:
            st.instances.remove(inst)
        self._save()
        log.info("instance stopped", extra={"instance": inst.id})
        if self._metrics is not None:
            self._metrics.instance_stopped()
        self._listener()

    @staticmethod
    async def _wait_exit(proc: Child | None, pid: int, timeout_s: float) -> None:
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout_s)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pid_alive(pid) and loop.time() < deadline:  # noqa: ASYNC110 - an adopted pid has no waitable handle
            await asyncio.sleep(0.05)
