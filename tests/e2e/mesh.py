"""Runs `ebb up` as a real process tree on free ports and talks to it like a user would."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from helpers import free_port

EBB = [sys.executable, "-m", "ebb.cli"]


def marked_pids(mark: str) -> list[int]:
    """Pids of live processes whose environment carries EBB_TEST_MARK=mark."""
    needle = f"EBB_TEST_MARK={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


class Mesh:
    """One `ebb up` in a temp data dir; every process it starts carries a marker env var."""

    def __init__(self, data_dir: Path, config: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args  # more `ebb up` flags, e.g. ("--tracing",)
        self.mark = uuid.uuid4().hex
        self.ports = {
            "http": free_port(),
            "admin": free_port(),
            "controller": free_port(),
            "autoscaler": free_port(),
            "autoscaler-stats": free_port(),
            "activator": free_port(),
            "activator-grpc": free_port(),
            "webhook": free_port(),
        }
        self.env = dict(os.environ, EBB_TEST_MARK=self.mark, EBB_HOME=str(data_dir), PYTHONUNBUFFERED="1")
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "up.log"

    def start(self, timeout_s: float = 60.0) -> dict:
        args = [
            *EBB, "up", "--data-dir", str(self.data_dir),
            "--http-port", str(self.ports["http"]),
            "--admin-port", str(self.ports["admin"]),
            "--controller-port", str(self.ports["controller"]),
            "--autoscaler-port", str(self.ports["autoscaler"]),
            "--autoscaler-stats-port", str(self.ports["autoscaler-stats"]),
            "--activator-port", str(self.ports["activator"]),
            "--activator-grpc-port", str(self.ports["activator-grpc"]),
            "--webhook-port", str(self.ports["webhook"]),
        ]
        if self.config:
            args += ["--config", str(self.config)]
        args += self.extra_args
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        mesh_file = self.data_dir / "mesh.json"

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ebb up exited {self.proc.returncode}: {self.log()}")
            if mesh_file.exists():
                with contextlib.suppress(ValueError):
                    return json.loads(mesh_file.read_text())
            time.sleep(0.1)
        raise AssertionError(f"ebb up did not write mesh.json within {timeout_s}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def ebb(self, *args: str, check: bool = True, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [*EBB, *args, "--data-dir", str(self.data_dir)] if args and args[0] != "up" else [*EBB, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout_s,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"ebb {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
        return res

    def get(self, host: str, path: str = "/", timeout_s: float = 10.0) -> tuple[int, str]:
        """GET through the Envoy gateway with the given Host header."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=timeout_s)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGINT (Ctrl-C) to `ebb up`; then make sure nothing marked survives."""
        code = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                code = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        elif self.proc:
            code = self.proc.returncode
        return code

    @contextlib.contextmanager
    def running(self, timeout_s: float = 60.0):
        """`ebb up` for the length of a `with` block (a fixture's body); stopped, and every
        marked process killed, however the block ends."""
        try:
            self.start(timeout_s)
            yield self
        finally:
            self.stop()
            self.kill_leftovers()

    def revision(self, name: str) -> dict:
        """The revision `name` as `ebb revision list -o json` shows it."""
        revisions = json.loads(self.ebb("revision", "list", "-o", "json").stdout)
        return next(r for r in revisions if r["metadata"]["name"] == name)

    def kill_leftovers(self) -> list[int]:
        left = marked_pids(self.mark)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._log.close()
        return left

    def wait_gone(self, timeout_s: float = 15.0) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = marked_pids(self.mark)
            if not left:
                return []
            time.sleep(0.2)
        return marked_pids(self.mark)
