"""Autoscaler entry point: flags and config file -> settings, then serve until a signal."""

from __future__ import annotations

import gc
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ebb.autoscaler.metrics import GcPauses
from ebb.autoscaler.server import AutoscalerServer
from ebb.autoscaler.settings import AutoscalerSettings, unknown_keys
from ebb.autoscaler.statsport import StatsPort
from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer, metrics_port_flag, parse_metrics_port
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import Flag, SettingsError, env_view, parse_host, parse_port, read_flags

log = logging.getLogger("ebb.autoscaler")

PROG = "python -m ebb.autoscaler"
FLAGS = (
    Flag(
        "grpc-port", "EBB_AUTOSCALER_GRPC_PORT", "8091", "gRPC port: StatsService, ScalingService"
    ),
    Flag(
        "stats-port",
        "EBB_AUTOSCALER_STATS_PORT",
        "8094",
        "port serving only StatsService.StreamStats, read in the event loop (queues and"
        " activators stream here; 0 = any free port)",
    ),
    Flag(
        "config",
        "EBB_AUTOSCALER_CONFIG",
        "",
        "YAML file whose `autoscaler:` section holds Knative config-autoscaler keys",
    ),
    Flag("host", "EBB_AUTOSCALER_HOST", "127.0.0.1", "address to bind (0.0.0.0 in a pod)"),
    Flag("tick-interval-s", "EBB_AUTOSCALER_TICK_INTERVAL_S", "2", "seconds between KPA decisions"),
    Flag(
        "tick-slices",
        "EBB_AUTOSCALER_TICK_SLICES",
        "1",
        "spread each tick's revisions over this many passes within the interval (1..100;"
        " more passes hold the loop for less time each but cost ~15-25 %% more CPU)",
    ),
    Flag(
        "ready-file", "EBB_AUTOSCALER_READY_FILE", "", "write the bound address here once serving"
    ),
    Flag("log-level", "EBB_AUTOSCALER_LOG_LEVEL", "info", "debug, info, warning, error"),
    metrics_port_flag("autoscaler"),
)
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServiceSettings:
    """The process's settings: where to listen, how often to decide, and the KPA settings."""

    grpc_port: int
    tick_interval_s: float
    host: str
    ready_file: str
    log_level: str
    autoscaler: AutoscalerSettings
    config_file: str = ""
    ignored_keys: tuple[str, ...] = ()
    metrics_port: int = 0
    tick_slices: int = 1
    stats_port: int = 8094


def read_config_file(path: str) -> tuple[AutoscalerSettings, tuple[str, ...]]:
    """Settings from the `autoscaler:` section of a YAML file, plus the keys it ignored.

    A file without that section means all defaults. Errors name the file and the key.
    """
    where = f"config {path}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise SettingsError(f"{where}: not valid YAML{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: must be a YAML mapping with an `autoscaler:` section")
    section = data.get("autoscaler")
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise SettingsError(f"{where}: autoscaler must be a mapping of config-autoscaler keys")
    try:
        settings = AutoscalerSettings.from_mapping(section)
    except SettingsError as exc:
        raise SettingsError(f"{where}: autoscaler.{exc}") from None
    return settings, tuple(unknown_keys(section))


# HTTP/2 BDP probing sizes flow-control windows for bulk transfers by pinging the peer as
# data arrives. A queue's stream carries one ~100-byte message a second, so there it only
# added a ping and its ack to nearly every message: off, 1,000 queue-like streams gave
# 27-77 % more stats per CPU-second (bench, paired runs). Without it the stream window
# stays at its 64 KiB start and batched streams (100 stats a message) stalled on window
# updates (-10..-30 %), so the window starts at 1 MiB instead: back within noise of before.
#
# A new call waits in gRPC core's pending list until the server's event loop takes it, and
# core cancels new calls once 1,000 (soft limit) to 3,000 (hard) are waiting. A fleet's
# queues all reconnect when the autoscaler restarts: 1,500 streams opened at once on one
# connection saw CANCELLED from about the 1,200th, 6 x 500 connections in most processes.
# The limits are raised well past the 20,000 instances Ebb is built for; a waiting call
# costs its headers' memory, and the connections behind it are already open.
MAX_PENDING_CALLS = 1 << 16
GRPC_SERVER_OPTIONS = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1 << 20),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
)

# Allocations (net of frees) between two collections of the youngest generation; CPython's
# default is 700. See settle_gc.
GC_THRESHOLD0 = 20_000


def settle_gc() -> None:
    """Freeze what start-up built and collect the young generations less often.

    The autoscaler keeps about 15 GC-tracked objects per revision for as long as the
    revision lives, and every stat allocates a few that live a second or two. With
    CPython's default threshold (700) the stat path triggered a collection every few
    hundred stats, promoted its one-second-old objects, and so set off a full collection
    over every revision's state about every 10 s: 45-100 ms of CPU each (5,000 revisions),
    a stall of the event loop that landed in a tick as often as not. At 20,000 the young
    collections are 30x rarer (a few ms each) and their survivors too few to call for a
    full collection in minutes; nothing cyclic is kept longer than that. Freezing the
    start-up objects (modules, gRPC, protobuf: ~30,000) takes them out of every full
    collection for good.
    """
    gc.collect()
    gc.freeze()
    _, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, threshold1, threshold2)


def _tick_slices(value: str | None) -> int:
    try:
        slices = int(value or "")
    except ValueError:
        raise SettingsError(f"tick-slices = {value!r}, must be a whole number") from None
    if not 1 <= slices <= 100:
        raise SettingsError(f"tick-slices = {value}, must be between 1 and 100")
    return slices


def _tick_interval(value: str | None) -> float:
    try:
        tick = float(value or "")
    except ValueError:
        raise SettingsError(f"tick-interval-s = {value!r}, must be a number of seconds") from None
    if not math.isfinite(tick) or not 0 < tick <= 60:
        raise SettingsError(f"tick-interval-s = {value}, must be greater than 0 and at most 60")
    return tick


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ServiceSettings:
    """Flags, falling back to env (EBB_AUTOSCALER_*), then defaults; validated."""
    raw = read_flags(PROG, FLAGS, argv, environ)
    level = (raw["log-level"] or "info").lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"log-level = {level!r}, must be one of {', '.join(LOG_LEVELS)}")
    config_file = raw["config"] or ""
    settings, ignored = read_config_file(config_file) if config_file else (AutoscalerSettings(), ())
    return ServiceSettings(
        grpc_port=parse_port("grpc-port", raw["grpc-port"]),
        tick_interval_s=_tick_interval(raw["tick-interval-s"]),
        host=parse_host("host", raw["host"]),
        ready_file=raw["ready-file"] or "",
        log_level=level,
        autoscaler=settings,
        config_file=config_file,
        ignored_keys=ignored,
        metrics_port=parse_metrics_port(raw["metrics-port"]),
        tick_slices=_tick_slices(raw["tick-slices"]),
        stats_port=parse_port("stats-port", raw["stats-port"]),
    )


async def serve(cfg: ServiceSettings, tracing: tracing_mod.Tracing = tracing_mod.DISABLED) -> int:
    core = ServiceCore(
        "autoscaler",
        host=cfg.host,
        port=cfg.grpc_port,
        interceptors=tracing.server_interceptors(),
        options=GRPC_SERVER_OPTIONS,
    )
    autoscaler = AutoscalerServer(
        cfg.autoscaler, tick_interval_s=cfg.tick_interval_s, tick_slices=cfg.tick_slices
    )
    autoscaler.add_to(core)
    stats_port = StatsPort(autoscaler, tracing)
    autoscaler.metrics.watch_stats_port(stats_port)
    metrics = MetricsServer(autoscaler.registry, host=cfg.host, port=cfg.metrics_port)
    try:
        metrics.start()
        await core.start()
        await stats_port.start(cfg.host, cfg.stats_port)
    except OSError as exc:
        await stats_port.close()
        await core.shutdown()
        await metrics.aclose()
        print(f"autoscaler: {exc}", file=sys.stderr)
        return 1
    await autoscaler.start()
    gc_pauses = GcPauses(autoscaler.registry)
    gc_pauses.install()
    settle_gc()
    core.install_signal_handlers()
    write_ready_file(
        cfg.ready_file,
        {"grpc": core.address, "stats": stats_port.address, "metrics": metrics.address},
    )
    await core.wait_for_signal()
    # Health goes NOT_SERVING first; then the tick loop and the open streams end (watchers
    # and reporters see a clean end and reconnect elsewhere or later), so stop(grace) has
    # nothing left to wait for.
    core.set_serving(False)
    await autoscaler.close()
    await stats_port.close()
    await core.shutdown()
    await metrics.aclose()
    await tracing.aclose()
    gc_pauses.remove()
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        cfg = load(argv, env_view(environ))
        setup_logging("autoscaler", cfg.log_level)
        tracing = tracing_mod.setup("autoscaler", env_view(environ))
    except SettingsError as exc:
        print(f"autoscaler: {exc}", file=sys.stderr)
        return 1
    if cfg.ignored_keys:
        log.warning(
            "unknown config-autoscaler keys ignored",
            extra={"config": cfg.config_file, "keys": list(cfg.ignored_keys)},
        )
    log.info(
        "autoscaler settings",
        extra={
            "settings": cfg.autoscaler.to_mapping(),
            "tick_interval_s": cfg.tick_interval_s,
            "tick_slices": cfg.tick_slices,
        },
    )
    return run(lambda: serve(cfg, tracing))
