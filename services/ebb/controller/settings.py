"""Controller settings: one frozen dataclass built from flags and environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ebb.common.metrics import metrics_port_flag, parse_metrics_port
from ebb.common.settings import Flag, SettingsError, parse_host, parse_port, read_flags

FLAGS = (
    Flag("data-dir", "EBB_HOME", None, "directory for the SQLite store, logs and instance state"),
    Flag("host", "EBB_CONTROLLER_HOST", "127.0.0.1", "address to bind (0.0.0.0 in a pod)"),
    Flag("grpc-port", "EBB_CONTROLLER_GRPC_PORT", "8090", "gRPC port: Serving API, ADS, endpoints"),
    Flag("gateway-port", "EBB_GATEWAY_PORT", "8080", "HTTP port the Envoy gateway listens on"),
    Flag("autoscaler", "EBB_AUTOSCALER", "", "autoscaler gRPC address HOST:PORT (empty = none)"),
    Flag(
        "autoscaler-stats",
        "EBB_AUTOSCALER_STATS",
        "",
        "autoscaler stats address HOST:PORT the queues stream to (empty = --autoscaler)",
    ),
    Flag("webhook", "EBB_WEBHOOK", "", "webhook gRPC address HOST:PORT (empty = no admission)"),
    Flag("activator", "EBB_ACTIVATOR", "", "activator HTTP address HOST:PORT (empty = none)"),
    Flag("activator-grpc", "EBB_ACTIVATOR_GRPC", "", "activator gRPC address HOST:PORT"),
    Flag("backend", "EBB_CONTROLLER_BACKEND", "local", "local (SQLite + processes) or kubernetes (CRs + Deployments)"),
    Flag("ready-file", "EBB_CONTROLLER_READY_FILE", "", "write bound addresses here once serving"),
    Flag("keep-instances-on-exit", "EBB_KEEP_INSTANCES", "false", "leave app instances running on SIGTERM"),
    Flag("log-level", "EBB_LOG_LEVEL", "info", "debug, info, warning, error"),
    metrics_port_flag("controller"),
)


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path
    host: str
    grpc_port: int
    gateway_port: int
    autoscaler: str  # ScalingService, for the controller itself
    autoscaler_stats: str  # StatsService, given to every queue; --autoscaler unless set
    webhook: str
    activator: str
    activator_grpc: str
    ready_file: str
    backend: str
    keep_instances_on_exit: bool
    log_level: str
    metrics_port: int = 0


def _address(key: str, value: str) -> str:
    if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
        raise SettingsError(f"{key} = {value!r}, must be HOST:PORT")
    return value


def _backend(value: str | None) -> str:
    backend = (value or "local").lower()
    if backend not in ("local", "kubernetes"):
        raise SettingsError(f"backend = {value!r}, must be local or kubernetes")
    return backend


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ControllerSettings:
    raw = read_flags("python -m ebb.controller", FLAGS, argv, environ)
    data_dir = raw["data-dir"] or str(Path(environ.get("HOME", ".")) / ".ebb")
    level = (raw["log-level"] or "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"log-level = {level!r}, must be one of debug, info, warning, error")
    keep = (raw["keep-instances-on-exit"] or "false").lower()
    if keep not in ("true", "false", "1", "0"):
        raise SettingsError(f"keep-instances-on-exit = {keep!r}, must be true or false")
    return ControllerSettings(
        data_dir=Path(data_dir).expanduser(),
        host=parse_host("host", raw["host"]),
        grpc_port=parse_port("grpc-port", raw["grpc-port"]),
        gateway_port=parse_port("gateway-port", raw["gateway-port"]),
        autoscaler=_address("autoscaler", raw["autoscaler"] or ""),
        autoscaler_stats=_address(
            "autoscaler-stats", raw["autoscaler-stats"] or raw["autoscaler"] or ""
        ),
        webhook=_address("webhook", raw["webhook"] or ""),
        activator=_address("activator", raw["activator"] or ""),
        activator_grpc=_address("activator-grpc", raw["activator-grpc"] or ""),
        ready_file=raw["ready-file"] or "",
        backend=_backend(raw["backend"]),
        keep_instances_on_exit=keep in ("true", "1"),
        log_level=level,
        metrics_port=parse_metrics_port(raw["metrics-port"]),
    )
