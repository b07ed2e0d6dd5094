"""The gRPC server every service runs: health, reflection, and one shutdown sequence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ebb.common.procs import raise_open_files_limit

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

# gRPC is imported by ServiceCore itself, not by this module: the queue imports `run` and
# `write_ready_file` at start-up and gRPC only once its proxy listens.
Adder = Callable[["grpc.aio.Server"], None]


class ServiceCore:
    """A grpc.aio server that answers `grpc.health.v1` and server reflection.

    Usage: `core.add(fn, "pkg.Service")` for each servicer, `await core.start()`,
    `await core.wait_for_signal()`, `await core.shutdown()`.
    The shutdown sequence (STYLE 6): health NOT_SERVING -> drain period -> stop(grace) ->
    on_stop callbacks. It is idempotent.
    """

    def __init__(
        self,
        component: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        drain_s: float = 0.0,
        grace_s: float = 5.0,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self.component = component
        self._host = host
        self._port = port
        self._drain_s = drain_s
        self._grace_s = grace_s
        import grpc
        from grpc_health.v1 import health

        self._server = grpc.aio.server(
            interceptors=list(interceptors) or None,
            options=[("grpc.so_reuseport", 0), *options],
        )
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._stop_requested = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self.bound_port: int | None = None

    @property
    def address(self) -> str:
        """`host:port` actually bound (after start)."""
        return f"{self._host}:{self.bound_port}"

    def add(self, adder: Adder, service_name: str) -> None:
        """Register a servicer (`adder(server)`) under its full proto service name."""
        adder(self._server)
        self._service_names.append(service_name)

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after the gRPC server has stopped (flush, close stores, ...)."""
        self._on_stop.append(callback)

    def set_serving(self, serving: bool) -> None:
        """Set health of the overall server ("") and of every registered service."""
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            # HealthServicer.set is a coroutine in the aio variant.
            asyncio.ensure_future(self._health.set(name, status))

    async def start(self) -> int:
        """Bind, enable health and reflection, start serving; returns the bound port."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [
            *self._service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self._server)
        try:
            self.bound_port = self._server.add_insecure_port(f"{self._host}:{self._port}")
        except RuntimeError as exc:
            raise OSError(f"{self.component}: cannot listen on {self._host}:{self._port}: {exc}") from exc
        if not self.bound_port:
            raise OSError(f"{self.component}: cannot listen on {self._host}:{self._port} (port busy?)")
        await self._server.start()
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc serving", extra={"address": self.address, "services": self._service_names})
        return self.bound_port

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request the shutdown sequence."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested.set)

    def request_stop(self) -> None:
        """Ask wait_for_signal() to return (as a signal would)."""
        self._stop_requested.set()

    async def wait_for_signal(self) -> None:
        """Block until SIGTERM/SIGINT or request_stop()."""
        await self._stop_requested.wait()

    async def shutdown(self) -> None:
        """health NOT_SERVING -> drain -> stop(grace) -> on_stop callbacks; idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        log.info("shutting down", extra={"drain_s": self._drain_s})
        await self._health.enter_graceful_shutdown()
        if self._drain_s > 0:
            await asyncio.sleep(self._drain_s)
        await self._server.stop(self._grace_s)
        for callback in self._on_stop:
            try:
                await callback()
            except Exception:  # one failing flush must not block the others
                log.exception("on_stop callback failed")
        log.info("stopped")


def write_ready_file(path: str | None, addresses: dict[str, str]) -> None:
    """Atomically write the bound addresses as JSON, so a supervisor knows we are up."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **addresses}))
    tmp.replace(target)


def remove_ready_file(path: str | None) -> None:
    """At a clean exit: the ready file says we are up, so it goes (if it is still ours)."""
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        if json.loads(Path(path).read_text()).get("pid") == os.getpid():
            Path(path).unlink()


def run(main: Callable[[], Awaitable[int]]) -> int:
    """Run a service's async main on uvloop and return its exit code.

    First the soft limit on open files goes up to the hard one: every service holds a
    connection per peer (the autoscaler a stat stream per queue, the activator a client
    and an upstream connection per request, the controller a pidfd for each app and
    queue it watches)."""
    log.info("open files limit", extra={"open_files_limit": raise_open_files_limit()})
    import uvloop

    return uvloop.run(main())
