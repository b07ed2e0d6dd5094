"""Wires the queue together: settings, proxy, readiness, stats reporter, gRPC admin, drain,
and observability (metrics port, request log, tracing).

Start-up order is for cold starts: the proxy listens and the app probe runs before gRPC
(admin server, stats stream) is even imported, so an instance is reachable as soon as
possible. `--standby` is the other half: a queue process that has done every import and
waits on stdin for the instance it is to become (see `standby`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer, new_registry
from ebb.common.server import remove_ready_file, run, write_ready_file
from ebb.common.settings import SettingsError, env_view
from ebb.queue import settings as queue_settings
from ebb.queue.metrics import QueueCollector
from ebb.queue.proxy import Proxy
from ebb.queue.readiness import app_check, probe_loop
from ebb.queue.requestlog import RequestLog
from ebb.queue.settings import QueueSettings
from ebb.queue.stats import ConcurrencyStats

log = logging.getLogger("ebb.queue")

STANDBY_FLAG = "--standby"


def _span_attributes(settings: QueueSettings) -> dict[str, str]:
    return {
        "ebb.namespace": settings.namespace,
        "ebb.revision": settings.revision,
        "ebb.instance": settings.instance,
    }


async def serve(settings: QueueSettings, tracing: tracing_mod.Tracing = tracing_mod.DISABLED) -> int:
    """Run until SIGTERM/SIGINT, drain, stop; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clock = time.monotonic  # stats need better than uvloop's millisecond loop.time()
    started_at = clock()
    stats = ConcurrencyStats(started_at)
    request_log = None
    if settings.request_log:
        request_log = RequestLog(
            namespace=settings.namespace,
            revision=settings.revision,
            instance=settings.instance,
            clock=clock,
        )
    proxy = Proxy(
        app_host=settings.app_host,
        app_port=settings.app_port,
        stats=stats,
        container_concurrency=settings.container_concurrency,
        queue_depth=settings.queue_depth,
        timeout_s=settings.timeout_s,
        response_start_timeout_s=settings.response_start_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        clock=clock,
        request_log=request_log,
        span_attributes=_span_attributes(settings),
    )
    if tracing.enabled:
        proxy.tracing = tracing
    try:
        http_port = await proxy.listen(settings.host, settings.http_port)
        if settings.unix_socket:
            await proxy.listen_unix(settings.unix_socket)
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    log.info("proxy listening", extra={"port": http_port, "unix_socket": settings.unix_socket})
    admin = _Admin()
    probed = asyncio.Event()
    check = app_check(settings.readiness_probe, settings.app_host, settings.app_port)
    if settings.readiness_probe.initial_delay_s:
        probed.set()  # the first probe is a while off: nothing to wait for

    async def probe_app(timeout_s: float) -> bool:
        try:
            return await check(timeout_s)
        finally:
            probed.set()

    prober = loop.create_task(
        probe_loop(
            probe_app,
            lambda ready: admin.on_ready(proxy, ready),
            settings.readiness_probe,
            name=f"{settings.app_host}:{settings.app_port}",
        )
    )
    if request_log is not None:
        request_log.start(loop)
    # The admin side's start holds the loop for a while (a cold queue imports the admin
    # server, prometheus_client and protobufs then): not before the app's first probe. (Importing on another thread would keep the loop
    # free but costs ~2 MB of resident memory for that thread's malloc arena.)
    await probed.wait()
    _import_admin()
    try:
        await admin.start(settings, proxy)
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        await _stop(proxy, prober, request_log, admin)
        return 1
    reporter = _reporter(settings, stats, started_at, clock, tracing)
    address = f"{'127.0.0.1' if settings.host in ('0.0.0.0', '') else settings.host}:{http_port}"
    bound = {"http": address, **admin.addresses()}
    if settings.unix_socket:
        bound["unix"] = settings.unix_socket
    write_ready_file(settings.ready_file, bound)
    log.info(
        "queue serving",
        extra={
            **bound,
            "request_log": settings.request_log,
            "tracing": tracing.enabled,
            "app": f"{settings.app_host}:{settings.app_port}",
            "revision": f"{settings.namespace}/{settings.revision}",
            "container_concurrency": settings.container_concurrency,
        },
    )

    await stop.wait()
    log.info("draining", extra={"quiet_s": settings.drain_quiet_s, "max_s": settings.drain_max_s})
    proxy.draining = True
    admin.set_serving(False)
    await proxy.drain(settings.drain_quiet_s, settings.drain_max_s)
    if reporter is not None:
        await reporter.stop()
    await _stop(proxy, prober, request_log, admin)
    await tracing.aclose()
    remove_ready_file(settings.ready_file)
    log.info("stopped")
    return 0


class _Admin:
    """The gRPC admin server (health, reflection) and the metrics port, started once the
    proxy already listens.

    The admin server is `ebb.common.h2admin`, not grpcio: a queue runs beside every app
    instance, and grpcio (its library, threads and modules) was about 12 MB of an idle
    queue's 45 (issue #8). It answers the same health and reflection calls."""

    def __init__(self) -> None:
        self.core = None  # ebb.common.h2admin.AdminServer, once started
        self.metrics: MetricsServer | None = None

    async def start(self, settings: QueueSettings, proxy: Proxy) -> None:
        from ebb.common.h2admin import AdminServer  # imported by _import_admin

        registry = new_registry()
        registry.register(QueueCollector(proxy, settings.namespace, settings.revision, proxy.request_log))
        self.metrics = MetricsServer(registry, host=settings.host, port=settings.metrics_port)
        self.metrics.start()
        # The proxy drains itself (it knows when requests stop arriving); the admin side
        # only has to stop. Health checks and reflection are not traced (probe noise).
        core = AdminServer()
        await core.start(settings.host, settings.admin_port)
        self.core = core
        core.set_serving(proxy.healthy)  # health follows the app, which may be up already

    def on_ready(self, proxy: Proxy, ready: bool) -> None:
        proxy.ready = ready
        self.set_serving(proxy.healthy)

    def set_serving(self, serving: bool) -> None:
        if self.core is not None:
            self.core.set_serving(serving)

    def addresses(self) -> dict[str, str]:
        return {"grpc": self.core.address, "metrics": self.metrics.address}

    async def aclose(self) -> None:
        if self.core is not None:
            await self.core.close()
        if self.metrics is not None:
            await self.metrics.aclose()


def _reporter(
    settings: QueueSettings,
    stats: ConcurrencyStats,
    started_at: float,
    clock,
    tracing: tracing_mod.Tracing,
):
    """The stats stream to the autoscaler, started; None when no autoscaler is set."""
    if not settings.autoscaler:
        return None
    from ebb.queue.reporter import Reporter  # imported by _import_admin

    reporter = Reporter(
        settings.autoscaler,
        instance=settings.instance,
        namespace=settings.namespace,
        revision=settings.revision,
        snapshot=stats.report,
        started_at=started_at,
        clock=clock,
        tracing=tracing,
    )
    reporter.start()
    return reporter


async def _stop(proxy: Proxy, prober: asyncio.Task, request_log: RequestLog | None, admin: _Admin) -> None:
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    await proxy.close()
    if request_log is not None:
        await request_log.aclose()
    await admin.aclose()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `python -m ebb.queue`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if list(argv) == [STANDBY_FLAG]:
        return standby(sys.stdin, environ)
    try:
        settings = queue_settings.load(argv, env_view(environ))
        setup_logging("queue", settings.log_level)
        tracing = tracing_mod.setup("queue", env_view(environ))
    except SettingsError as exc:
        print(f"queue: {exc}", file=sys.stderr)
        return 2
    return run(lambda: serve(settings, tracing))


def standby(orders: TextIO, environ: Mapping[str, str] | None = None) -> int:
    """`--standby`: do every import now, then wait for one JSON line on `orders` and run as
    the queue it describes: `{"argv": [...flags...], "log": "path/to/queue.log"}`.

    The local runtime keeps one standby so a new instance's queue skips Python's start-up
    and imports (most of a cold start). End of input (the runtime went away) exits quietly.
    """
    _warm_imports()
    line = orders.readline()
    if not line.strip():
        return 0
    try:
        order = json.loads(line)
        argv = [str(arg) for arg in order["argv"]]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"queue: bad standby order: {exc}", file=sys.stderr)
        return 2
    if order.get("log"):
        _redirect_output(str(order["log"]))
    return main(argv, environ)


def _warm_imports() -> None:
    """What `serve` imports late, imported ahead (a standby has the time)."""
    import uvloop  # noqa: F401

    _import_admin()


def _import_admin() -> None:
    """The admin server (health, reflection) and the stats stream, with their protobufs."""
    import ebb.common.h2admin  # noqa: F401
    import ebb.queue.reporter  # noqa: F401


def _redirect_output(path: str) -> None:
    """Point stdout and stderr (fds 1 and 2) at the instance's log, appending."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
