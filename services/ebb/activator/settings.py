"""The activator's settings: one frozen dataclass built from flags and environment by `load`."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ebb.common.metrics import metrics_port_flag, parse_metrics_port
from ebb.common.settings import Flag, SettingsError, parse_duration_s, parse_port, read_flags

PROG = "python -m ebb.activator"
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_QUEUE_DEPTH = 1_000_000
MAX_DRAIN_S = 3600.0

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d+)$")

FLAGS = (
    Flag("http-port", "EBB_ACTIVATOR_HTTP_PORT", "8012", "HTTP data-plane port (0 = a free one)"),
    Flag("grpc-port", "EBB_ACTIVATOR_GRPC_PORT", "8092", "gRPC admin port: health, reflection (0 = a free one)"),
    Flag("host", "EBB_ACTIVATOR_HOST", "127.0.0.1", "address to bind both ports on (0.0.0.0 in a cluster)"),
    Flag("controller", "EBB_CONTROLLER", "", "controller gRPC HOST:PORT (endpoints stream); empty = none"),
    Flag("autoscaler", "EBB_AUTOSCALER", "", "autoscaler gRPC HOST:PORT (stats stream); empty = no stats"),
    Flag("queue-depth", "EBB_ACTIVATOR_QUEUE_DEPTH", "10000", "requests that may wait per revision; beyond: 503"),
    Flag("drain-quiet-s", "EBB_ACTIVATOR_DRAIN_QUIET_S", "1", "after SIGTERM, stop once no request has arrived for this long"),
    Flag("drain-max-s", "EBB_ACTIVATOR_DRAIN_MAX_S", "600", "after SIGTERM, stop after this long at most"),
    Flag("ready-file", "EBB_ACTIVATOR_READY_FILE", "", "write the bound addresses here as JSON once serving"),
    Flag("log-level", "EBB_LOG_LEVEL", "info", "debug, info, warning or error"),
    metrics_port_flag("activator"),
)


@dataclass(frozen=True)
class ActivatorSettings:
    """Everything the activator needs to run; built by `load` (defaults live in FLAGS)."""

    instance: str  # reported in stats: activator-<host>-<pid>
    http_port: int
    grpc_port: int
    host: str
    controller: str  # HOST:PORT or "" (none)
    autoscaler: str  # HOST:PORT or "" (no stats)
    queue_depth: int
    # Knative gives its activator 600 s to terminate: a held request may wait out its
    # revision's timeoutSeconds (at most 600).
    drain_quiet_s: float
    drain_max_s: float
    ready_file: str
    log_level: str
    metrics_port: int = 0


def _address(key: str, raw: str) -> str:
    if not raw:
        return ""
    match = _HOST_PORT.match(raw)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise SettingsError(f"{key} = {raw!r}, must be HOST:PORT with port in 1..65535")
    return raw


def _seconds(key: str, raw: str, high: float) -> float:
    value = parse_duration_s(key, raw)
    if not 0 < value <= high:
        raise SettingsError(f"{key} = {raw}, must be greater than 0 and at most {high:g} seconds")
    return value


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ActivatorSettings:
    """Parse flags (falling back to EBB_* env vars, then defaults) and validate them."""
    raw = read_flags(PROG, FLAGS, argv, environ)
    depth_raw = raw["queue-depth"] or ""
    try:
        queue_depth = int(depth_raw)
    except ValueError:
        raise SettingsError(f"queue-depth = {depth_raw!r}, must be an integer in 0..{MAX_QUEUE_DEPTH}") from None
    if not 0 <= queue_depth <= MAX_QUEUE_DEPTH:
        raise SettingsError(f"queue-depth = {queue_depth}, must be in 0..{MAX_QUEUE_DEPTH}")
    log_level = (raw["log-level"] or "info").lower()
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"log-level = {raw['log-level']!r}, must be one of {', '.join(LOG_LEVELS)}")
    host = raw["host"] or ""
    if not host:
        raise SettingsError("host = '', must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    drain_max_s = _seconds("drain-max-s", raw["drain-max-s"] or "", MAX_DRAIN_S)
    machine = environ.get("HOSTNAME") or socket.gethostname()
    return ActivatorSettings(
        instance=f"activator-{machine}-{os.getpid()}",
        http_port=parse_port("http-port", raw["http-port"]),
        grpc_port=parse_port("grpc-port", raw["grpc-port"]),
        host=host,
        controller=_address("controller", raw["controller"] or ""),
        autoscaler=_address("autoscaler", raw["autoscaler"] or ""),
        queue_depth=queue_depth,
        drain_quiet_s=_seconds("drain-quiet-s", raw["drain-quiet-s"] or "", drain_max_s),
        drain_max_s=drain_max_s,
        ready_file=raw["ready-file"] or "",
        log_level=log_level,
        metrics_port=parse_metrics_port(raw["metrics-port"]),
    )
