"""Helpers for tests that run a real Envoy against an in-process ADS server."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from helpers import free_port

from ebb.common.envoy import bootstrap, envoy_command, find_envoy

HOST = "127.0.0.1"


class EnvoyProcess:
    """A real Envoy bootstrapped at an ADS server; stop() always, in a finally."""

    def __init__(self, workdir: Path, ads_port: int, node_id: str = "test-gateway") -> None:
        self.admin_port = free_port()
        self.config_path = workdir / "envoy.json"
        self.log_path = workdir / "envoy.log"
        self.config_path.write_text(json.dumps(bootstrap(node_id, HOST, ads_port, self.admin_port)))
        self._command = envoy_command(
            find_envoy(),
            str(self.config_path),
            base_id=random.randrange(1_000, 1_000_000),
            log_path=str(self.log_path),
            log_level="info",
        )
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no envoy log)"


async def http_get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    """One HTTP/1.1 GET to 127.0.0.1:port with `Host: host`; (status, body).

    Async on purpose: the ADS server shares this event loop, a blocking client would
    starve it.
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


async def start_upstream(body: bytes) -> tuple[asyncio.Server, int]:
    """A tiny HTTP/1.1 server answering every request 200 with `body` (keep-alive)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def eventually(
    probe: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Poll `probe` until it returns True or `timeout_s` passes (a bound, not a measure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            if await probe():
                return True
        except OSError:
            pass
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval_s)
