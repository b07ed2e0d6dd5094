"""`python -m ebb.webhook`: settings from flags/env, the gRPC server, the HTTPS endpoint, shutdown."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ebb.api.webhook.v1 import admission_pb2_grpc
from ebb.common import tracing as tracing_mod
from ebb.common.logs import setup_logging
from ebb.common.metrics import MetricsServer, metrics_port_flag, new_registry, parse_metrics_port
from ebb.common.server import ServiceCore, run, write_ready_file
from ebb.common.settings import Flag, SettingsError, env_view, parse_port, read_flags
from ebb.webhook.metrics import WebhookMetrics
from ebb.webhook.model import AdmissionSettings
from ebb.webhook.server import (
    SERVICE_NAME,
    AdmissionReviewServer,
    AdmissionServicer,
    make_tls_context,
)

log = logging.getLogger(__name__)

PREFIX = "EBB_WEBHOOK_"
FLAGS = [
    Flag("host", PREFIX + "HOST", "127.0.0.1", "address to bind (0.0.0.0 in a pod)"),
    Flag("grpc-port", PREFIX + "GRPC_PORT", "8093", "gRPC AdmissionService port (0 = any free)"),
    Flag(
        "https-port",
        PREFIX + "HTTPS_PORT",
        "8443",
        "AdmissionReview HTTPS port, used only with TLS files",
    ),
    Flag("tls-cert", PREFIX + "TLS_CERT", None, "PEM certificate for the HTTPS endpoint"),
    Flag("tls-key", PREFIX + "TLS_KEY", None, "PEM private key for the HTTPS endpoint"),
    Flag(
        "ready-file",
        PREFIX + "READY_FILE",
        None,
        "write the bound addresses as JSON here once serving",
    ),
    Flag("log-level", PREFIX + "LOG_LEVEL", "info", "debug, info, warning or error"),
    Flag(
        "allow-zero-initial-scale",
        PREFIX + "ALLOW_ZERO_INITIAL_SCALE",
        "false",
        "accept autoscaling.knative.dev/initial-scale: 0 (Knative's allow-zero-initial-scale)",
    ),
    Flag(
        "max-revision-timeout-seconds",
        PREFIX + "MAX_REVISION_TIMEOUT_SECONDS",
        "600",
        "largest timeoutSeconds a revision may ask for (Knative's max-revision-timeout-seconds)",
    ),
    metrics_port_flag("webhook"),
]
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class WebhookSettings:
    """Everything the webhook process needs; built by load_settings()."""

    host: str = "127.0.0.1"
    grpc_port: int = 8093
    https_port: int = 8443
    tls_cert: str | None = None
    tls_key: str | None = None
    ready_file: str | None = None
    log_level: str = "info"
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    metrics_port: int = 0

    @property
    def https_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def _parse_bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{key} = {value!r}, must be true or false")


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> WebhookSettings:
    """Flags, then EBB_WEBHOOK_* environment, then defaults; raises SettingsError."""
    raw = read_flags("ebb-webhook", FLAGS, argv, environ)
    tls_cert, tls_key = raw["tls-cert"] or None, raw["tls-key"] or None
    if bool(tls_cert) != bool(tls_key):
        raise SettingsError("tls-cert and tls-key must be given together")
    for key, path in (("tls-cert", tls_cert), ("tls-key", tls_key)):
        if path and not Path(path).is_file():
            raise SettingsError(f"{key} = {path!r}, no such file")
    level = (raw["log-level"] or "info").lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"log-level = {level!r}, must be one of {', '.join(LOG_LEVELS)}")
    try:
        max_timeout = int(raw["max-revision-timeout-seconds"] or "600")
    except ValueError:
        raise SettingsError(
            f"max-revision-timeout-seconds = {raw['max-revision-timeout-seconds']!r}, must be an integer"
        ) from None
    if max_timeout < 1:
        raise SettingsError(f"max-revision-timeout-seconds = {max_timeout}, must be at least 1")
    admission = AdmissionSettings(
        allow_zero_initial_scale=_parse_bool(
            "allow-zero-initial-scale", raw["allow-zero-initial-scale"] or ""
        ),
        max_revision_timeout_s=max_timeout,
        revision_timeout_s=min(AdmissionSettings.revision_timeout_s, max_timeout),
    )
    return WebhookSettings(
        host=raw["host"] or "127.0.0.1",
        grpc_port=parse_port("grpc-port", raw["grpc-port"] or "8093"),
        https_port=parse_port("https-port", raw["https-port"] or "8443"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        ready_file=raw["ready-file"] or None,
        log_level=level,
        admission=admission,
        metrics_port=parse_metrics_port(raw["metrics-port"]),
    )


async def serve(
    settings: WebhookSettings, tracing: tracing_mod.Tracing = tracing_mod.DISABLED
) -> int:
    """Serve until SIGTERM/SIGINT, then run the shared shutdown sequence; exit code."""
    core = ServiceCore(
        "webhook", settings.host, settings.grpc_port, interceptors=tracing.server_interceptors()
    )
    metrics = WebhookMetrics(new_registry())
    metrics_server = MetricsServer(metrics.registry, host=settings.host, port=settings.metrics_port)
    servicer = AdmissionServicer(settings.admission, metrics)
    core.add(
        lambda server: admission_pb2_grpc.add_AdmissionServiceServicer_to_server(servicer, server),
        SERVICE_NAME,
    )
    addresses: dict[str, str] = {}
    https = None
    try:
        metrics_server.start()
        addresses["metrics"] = metrics_server.address
        if settings.https_enabled:
            https = AdmissionReviewServer(settings.admission, metrics=metrics)
            tls = make_tls_context(settings.tls_cert, settings.tls_key)
            port = await https.start(settings.host, settings.https_port, tls)
            addresses["https"] = f"{settings.host}:{port}"
            core.on_stop(https.close)
        await core.start()
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        if https is not None:
            await https.close()
        await metrics_server.aclose()
        return 1
    addresses["grpc"] = core.address
    core.install_signal_handlers()
    write_ready_file(settings.ready_file, addresses)
    await core.wait_for_signal()
    await core.shutdown()
    await metrics_server.aclose()
    await tracing.aclose()
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse settings, serve, drain; returns the process exit code."""
    try:
        settings = load_settings(argv, env_view(environ))
        setup_logging("webhook", settings.log_level)
        tracing = tracing_mod.setup("webhook", env_view(environ))
    except SettingsError as exc:
        print(f"ebb-webhook: {exc}", file=sys.stderr)
        return 2
    return run(lambda: serve(settings, tracing))
