"""Wires the activator together: settings, data plane, endpoints watch, stats, gRPC admin,
drain, and observability (metrics port, tracing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping, Sequence

from ebb.activator import settings as activator_settings
from ebb.activator.endpoints import watch_endpoints
from ebb.activator.metrics import ActivatorCollector
from ebb.activator.proxy import Activator
from ebb.activator.settings import FLAGS, ActivatorSettings
from ebb.activator.traffic import POKE
from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer, new_registry
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import SettingsError, env_view
from ebb.common.statsreporter import StatsReporter

log = logging.getLogger("ebb.activator")

__all__ = ["FLAGS", "main", "serve"]  # FLAGS: the chart's tests check its args against them


def _bound(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: ActivatorSettings, tracing: tracing_mod.Tracing = tracing_mod.DISABLED) -> int:
    """Run until SIGTERM/SIGINT, drain, stop; returns the exit code."""
    loop = asyncio.get_running_loop()
    clock = time.monotonic  # stats need better than uvloop's millisecond loop.time()
    started_at = clock()
    activator = Activator(queue_depth=settings.queue_depth, clock=clock)
    if tracing.enabled:
        activator.tracing = tracing
    registry = new_registry()
    registry.register(ActivatorCollector(activator))
    metrics = MetricsServer(registry, host=settings.host, port=settings.metrics_port)
    # The data plane drains itself (it knows when requests stop arriving); the gRPC side
    # only has to stop.
    core = ServiceCore(
        "activator",
        settings.host,
        settings.grpc_port,
        drain_s=0.0,
        interceptors=tracing.server_interceptors(),
    )
    core.install_signal_handlers()
    http_port = await _bind(core, activator, settings, metrics)
    if http_port is None:
        await core.shutdown()
        await metrics.aclose()
        return 1
    reporter = _stats_reporter(settings, activator, started_at, clock, tracing)
    watcher = None
    if settings.controller:
        core.set_serving(False)  # not until the controller's first snapshot

        def apply(revisions, removed, snapshot, share) -> None:
            was_synced = activator.synced
            activator.apply(revisions, removed, snapshot, share)
            if activator.synced and not was_synced and not activator.draining:
                core.set_serving(True)

        watcher = loop.create_task(
            watch_endpoints(
                settings.controller,
                apply,
                activator_id=settings.instance,
                interceptors=tracing.client_interceptors(),
            )
        )
    else:
        log.warning("no --controller: every revision is unknown (404)")
        activator.synced = True

    address = _bound(settings.host, http_port)
    bound = {"http": address, "grpc": core.address, "metrics": metrics.address}
    write_ready_file(settings.ready_file, bound)
    peers = {"controller": settings.controller, "autoscaler": settings.autoscaler}
    log.info(
        "activator serving",
        extra={"instance": settings.instance, **peers, **bound, "tracing": tracing.enabled},
    )

    await core.wait_for_signal()
    log.info("draining", extra={"quiet_s": settings.drain_quiet_s, "max_s": settings.drain_max_s})
    activator.draining = True
    core.set_serving(False)
    await activator.drain(settings.drain_quiet_s, settings.drain_max_s)
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await activator.stop_probes()
    await activator.close()
    if reporter is not None:
        await reporter.stop()
    await core.shutdown()
    await metrics.aclose()
    await tracing.aclose()
    return 0


async def _bind(
    core: ServiceCore, activator: Activator, settings: ActivatorSettings, metrics: MetricsServer
) -> int | None:
    """Start the metrics port, the gRPC admin server and the HTTP listener; the HTTP port,
    or None (logged)."""
    try:
        metrics.start()
        await core.start()
        return await activator.listen(settings.host, settings.http_port)
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return None


def _stats_reporter(
    settings: ActivatorSettings,
    activator: Activator,
    started_at: float,
    clock,
    tracing: tracing_mod.Tracing = tracing_mod.DISABLED,
) -> StatsReporter | None:
    """The stats stream to the autoscaler, started, with the activator's pokes wired to it."""
    if not settings.autoscaler:
        return None
    reporter = StatsReporter(
        settings.autoscaler,
        instance=settings.instance,
        collect=activator.collect,
        started_at=started_at,
        clock=clock,
        tracing=tracing,
    )
    send_now = reporter.send_now
    activator.on_poke = lambda namespace, name: send_now(((namespace, name, POKE),))
    reporter.start()
    return reporter


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `python -m ebb.activator`; returns the exit code."""
    try:
        settings = activator_settings.load(argv, env_view(environ))
        setup_logging("activator", settings.log_level)
        tracing = tracing_mod.setup("activator", env_view(environ))
    except SettingsError as exc:
        print(f"activator: {exc}", file=sys.stderr)
        return 2
    return run(lambda: serve(settings, tracing))
