"""Activator entry point (first cut: its own process with health and reflection)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ebb.common.logs import setup_logging
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import Flag, SettingsError, parse_port, read_flags

log = logging.getLogger("ebb.activator")

FLAGS = (
    Flag("http-port", "EBB_ACTIVATOR_HTTP_PORT", "8012", "HTTP data-plane port"),
    Flag("grpc-port", "EBB_ACTIVATOR_GRPC_PORT", "8092", "gRPC admin port (health, reflection)"),
    Flag("controller", "EBB_CONTROLLER", "", "controller gRPC address (endpoints stream)"),
    Flag("autoscaler", "EBB_AUTOSCALER", "", "autoscaler gRPC address (stats stream)"),
    Flag("ready-file", "EBB_ACTIVATOR_READY_FILE", "", "write bound addresses here once serving"),
    Flag("log-level", "EBB_LOG_LEVEL", "info", "debug, info, warning, error"),
)


@dataclass(frozen=True)
class ActivatorSettings:
    http_port: int
    grpc_port: int
    controller: str
    autoscaler: str
    ready_file: str
    log_level: str


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ActivatorSettings:
    raw = read_flags("python -m ebb.activator", FLAGS, argv, environ)
    return ActivatorSettings(
        http_port=parse_port("http-port", raw["http-port"]),
        grpc_port=parse_port("grpc-port", raw["grpc-port"]),
        controller=raw["controller"] or "",
        autoscaler=raw["autoscaler"] or "",
        ready_file=raw["ready-file"] or "",
        log_level=(raw["log-level"] or "info").lower(),
    )


async def serve(cfg: ActivatorSettings) -> int:
    core = ServiceCore("activator", port=cfg.grpc_port)
    try:
        await core.start()
    except OSError as exc:
        print(f"activator: {exc}", file=sys.stderr)
        return 1
    core.install_signal_handlers()
    write_ready_file(cfg.ready_file, {"grpc": core.address, "http": f"127.0.0.1:{cfg.http_port}"})
    await core.wait_for_signal()
    await core.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load(argv, os.environ)
    except SettingsError as exc:
        print(f"activator: {exc}", file=sys.stderr)
        return 1
    setup_logging("activator", cfg.log_level)
    return run(lambda: serve(cfg))
