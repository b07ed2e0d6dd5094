"""Helpers for the queue's integration tests: run the hello app and the queue as processes.

Every process started here is stopped in a `finally`, whatever the test does.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers import hello_module  # noqa: F401 - the tests take it from here too

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "samples" / "hello" / "app.py"
PYTHON = sys.executable
REVISION = "hello-00001"
START_TIMEOUT_S = 20.0  # a guard against hangs, not a performance threshold


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout_s: float = START_TIMEOUT_S, what: str = "condition", interval_s: float = 0.02):
    """Poll `condition()` until truthy; fails the test after timeout_s (a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class App:
    port: int
    proc: subprocess.Popen

    def get(self, path: str) -> tuple[int, bytes]:
        """A request straight to the app (not through the queue)."""
        status, _, body = request(self.port, "GET", path)
        return status, body

    def release(self, gate: str) -> None:
        assert self.get(f"/release?gate={gate}")[0] == 200

    def waiting(self, gate: str) -> int:
        return json.loads(self.get("/gates")[1]).get(gate, 0)


@contextlib.contextmanager
def run_app(port: int | None = None, **env: str) -> Iterator[App]:
    """The hello sample app on a free port, until the block ends."""
    port = port or free_port()
    proc = subprocess.Popen(
        [PYTHON, str(APP)],
        env={**os.environ, "PORT": str(port), "K_REVISION": REVISION, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), what="the app to listen")
        assert proc.poll() is None, "the app exited at start"
        yield App(port, proc)
    finally:
        stop_process(proc)


@dataclass
class Queue:
    proc: subprocess.Popen
    http_port: int
    grpc_address: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def probe(self) -> tuple[int, bytes]:
        status, _, body = request(self.http_port, "GET", "/", headers={"K-Network-Probe": "queue"})
        return status, body

    def request(self, method: str = "GET", path: str = "/", **kwargs):
        return request(self.http_port, method, path, **kwargs)


@contextlib.contextmanager
def run_queue(
    tmp_path: Path, app_port: int, *args: str, wait_ready: bool = True, preexec_fn=None
) -> Iterator[Queue]:
    """`python -m ebb.queue` in front of app_port, until the block ends (SIGTERM, then kill)."""
    ready_file = tmp_path / f"queue-{free_port()}.json"
    log_path = ready_file.with_suffix(".log")
    argv = [
        PYTHON, "-m", "ebb.queue",
        "--app-port", str(app_port),
        "--revision", f"default/{REVISION}",
        "--instance", "test-instance",
        "--ready-file", str(ready_file),
        "--drain-quiet-s", "0.1",
        *args,
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=log_file, cwd=REPO, preexec_fn=preexec_fn
        )
    try:
        wait_until(
            lambda: proc.poll() is not None or ready_file.exists(), what="the queue's ready file"
        )
        assert proc.poll() is None, f"the queue exited at start:\n{log_path.read_text()}"
        addresses = json.loads(ready_file.read_text())
        queue = Queue(proc, int(addresses["http"].rsplit(":", 1)[1]), addresses["grpc"], log_path, argv)
        if wait_ready:
            wait_until(lambda: queue.probe()[0] == 200, what="the queue to report ready")
        yield queue
    finally:
        stop_process(proc)


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns status, headers (lower-case names), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def raw_exchange(port: int, payload: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class RawResponseReader:
    """Reads HTTP/1.1 responses one by one from a socket (for keep-alive and pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> tuple[int, dict[str, str]]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def next_chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last one)."""
        size = int(self._line().split(b";")[0], 16)
        data = self._exactly(size) if size else b""
        assert self._line() == b""
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while chunk := self.next_chunk():
                parts.append(chunk)
            return status, headers, b"".join(parts)
        return status, headers, self._exactly(int(headers.get("content-length", "0")))

    def at_eof(self) -> bool:
        return not self.buf and not self._fill()
