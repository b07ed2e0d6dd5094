"""Controller entry point: settings, store, runtime, xDS, servers; then serve until signalled."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

# ads_pb2_grpc does not import ads_pb2, whose descriptor reflection needs to describe ADS.
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc  # noqa: F401

from ebb.api.networking.v1 import endpoints_pb2_grpc
from ebb.api.serving.v1 import serving_pb2_grpc
from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import SettingsError
from ebb.controller import settings as settings_mod
from ebb.controller.backends import kubernetes_backend, local_backend, resolve_address
from ebb.controller.manager import Controller
from ebb.controller.metrics import ControllerMetrics
from ebb.controller.scaling import ScalingClient
from ebb.controller.server import Admission, EndpointsServicer, ServingServicer
from ebb.controller.xds import AdsServer

log = logging.getLogger("ebb.controller")


async def serve(cfg: settings_mod.ControllerSettings, tracing: tracing_mod.Tracing) -> int:
    ads = AdsServer()
    metrics = ControllerMetrics(ads)
    metrics_server = MetricsServer(metrics.registry, host=cfg.host, port=cfg.metrics_port)
    if cfg.backend == "kubernetes":
        backend = kubernetes_backend(cfg, os.environ)
    else:
        backend = local_backend(cfg, metrics)
    store, runtime = backend.store, backend.runtime
    client_interceptors = tracing.client_interceptors()
    scaling = (
        ScalingClient(cfg.autoscaler, lambda: controller.trigger(), client_interceptors)
        if cfg.autoscaler
        else None
    )
    activator = resolve_address(cfg.activator) if cfg.activator else None
    controller = Controller(
        store,
        runtime,
        ads,
        gateway_port=cfg.gateway_port,
        scaling=scaling,
        activator=activator,
        metrics=metrics,
    )
    admission = Admission(cfg.webhook, client_interceptors)

    core = ServiceCore(
        "controller",
        host=cfg.host,
        port=cfg.grpc_port,
        drain_s=0.0,
        interceptors=tracing.server_interceptors(),
    )
    core.add(
        lambda s: serving_pb2_grpc.add_ServingServiceServicer_to_server(ServingServicer(store, admission), s),
        "ebb.api.serving.v1.ServingService",
    )
    core.add(
        lambda s: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, s),
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
    )
    core.add(
        lambda s: endpoints_pb2_grpc.add_EndpointsServiceServicer_to_server(EndpointsServicer(controller), s),
        "ebb.api.networking.v1.EndpointsService",
    )
    try:
        metrics_server.start()
        await core.start()
    except OSError as exc:
        await metrics_server.aclose()
        log.error(str(exc))
        print(f"controller: {exc}", file=sys.stderr)
        return 1
    core.install_signal_handlers()
    await backend.start()
    if scaling is not None:
        scaling.start()
    loop_task = asyncio.ensure_future(controller.run())
    write_ready_file(cfg.ready_file, {"grpc": core.address, "metrics": metrics_server.address})
    await core.wait_for_signal()

    controller.stop()
    await loop_task
    await core.shutdown()
    await backend.close(not cfg.keep_instances_on_exit)
    await admission.close()
    if scaling is not None:
        await scaling.close()
    await metrics_server.aclose()
    await tracing.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = settings_mod.load(argv, os.environ)
        setup_logging("controller", cfg.log_level)
        tracing = tracing_mod.setup("controller", os.environ)
    except SettingsError as exc:
        print(f"controller: {exc}", file=sys.stderr)
        return 1
    return run(lambda: serve(cfg, tracing))
