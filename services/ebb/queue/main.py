"""Wires the queue together: settings, proxy, readiness, stats reporter, gRPC admin, drain,
and observability (metrics port, request log, tracing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer, new_registry
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import SettingsError, env_view
from ebb.queue import settings as queue_settings
from ebb.queue.metrics import QueueCollector
from ebb.queue.proxy import Proxy
from ebb.queue.readiness import probe_loop
from ebb.queue.reporter import Reporter
from ebb.queue.requestlog import RequestLog
from ebb.queue.settings import QueueSettings
from ebb.queue.stats import ConcurrencyStats

log = logging.getLogger("ebb.queue")


def _span_attributes(settings: QueueSettings) -> dict[str, str]:
    return {
        "ebb.namespace": settings.namespace,
        "ebb.revision": settings.revision,
        "ebb.instance": settings.instance,
    }


def _remove_ready_file(path: str | None) -> None:
    """At a clean exit: the ready file says we are up, so it goes (if it is still ours)."""
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        if json.loads(Path(path).read_text()).get("pid") == os.getpid():
            Path(path).unlink()


async def serve(settings: QueueSettings, tracing: tracing_mod.Tracing = tracing_mod.DISABLED) -> int:
    """Run until SIGTERM/SIGINT, drain, stop; returns the exit code."""
    loop = asyncio.get_running_loop()
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
    registry = new_registry()
    registry.register(QueueCollector(proxy, settings.namespace, settings.revision, request_log))
    metrics = MetricsServer(registry, host=settings.host, port=settings.metrics_port)
    # The proxy drains itself (it knows when requests stop arriving); the gRPC side only
    # has to stop.
    core = ServiceCore(
        "queue",
        settings.host,
        settings.admin_port,
        drain_s=0.0,
        interceptors=tracing.server_interceptors(),
    )
    core.install_signal_handlers()
    try:
        metrics.start()
        await core.start()
        core.set_serving(False)  # not until the app answers
        http_port = await proxy.listen(settings.host, settings.http_port)
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        await core.shutdown()
        await metrics.aclose()
        return 1
    if request_log is not None:
        request_log.start(loop)

    def on_ready(ready: bool) -> None:
        proxy.ready = ready
        core.set_serving(proxy.healthy)

    prober = loop.create_task(probe_loop(settings.app_host, settings.app_port, on_ready))
    reporter = None
    if settings.autoscaler:
        reporter = Reporter(
            settings.autoscaler,
            instance=settings.instance,
            namespace=settings.namespace,
            revision=settings.revision,
            snapshot=stats.report,
            started_at=started_at,
            clock=clock,
        )
        reporter.start()
    address = f"{'127.0.0.1' if settings.host in ('0.0.0.0', '') else settings.host}:{http_port}"
    write_ready_file(
        settings.ready_file, {"http": address, "grpc": core.address, "metrics": metrics.address}
    )
    log.info(
        "queue serving",
        extra={
            "http": address,
            "grpc": core.address,
            "metrics": metrics.address,
            "request_log": settings.request_log,
            "tracing": tracing.enabled,
            "app": f"{settings.app_host}:{settings.app_port}",
            "revision": f"{settings.namespace}/{settings.revision}",
            "container_concurrency": settings.container_concurrency,
        },
    )

    await core.wait_for_signal()
    log.info("draining", extra={"quiet_s": settings.drain_quiet_s, "max_s": settings.drain_max_s})
    proxy.draining = True
    core.set_serving(False)
    await proxy.drain(settings.drain_quiet_s, settings.drain_max_s)
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    await proxy.close()
    if request_log is not None:
        await request_log.aclose()
    if reporter is not None:
        await reporter.stop()
    await core.shutdown()
    await metrics.aclose()
    await tracing.aclose()
    _remove_ready_file(settings.ready_file)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `python -m ebb.queue`; returns the exit code."""
    try:
        settings = queue_settings.load(argv, env_view(environ))
        setup_logging("queue", settings.log_level)
        tracing = tracing_mod.setup("queue", env_view(environ))
    except SettingsError as exc:
        print(f"queue: {exc}", file=sys.stderr)
        return 2
    return run(lambda: serve(settings, tracing))
