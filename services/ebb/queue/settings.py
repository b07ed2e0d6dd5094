"""The queue's settings: one frozen dataclass built from flags and environment by `load`."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ebb.common.metrics import metrics_port_flag, parse_metrics_port
from ebb.common.settings import (
    MAX_UNIX_PATH_BYTES,
    Flag,
    SettingsError,
    parse_duration_s,
    parse_host,
    parse_port,
    read_flags,
)
from ebb.queue.readiness import DEFAULT_PROBE, AppProbe, parse_probe

PROG = "ebb-queue"
_PREFIX = "EBB_QUEUE_"

# Knative caps containerConcurrency at 1000 and timeoutSeconds at max-revision-timeout-seconds
# (600 by default); the queue accepts up to an hour so an operator who raises that cap can.
MAX_CONTAINER_CONCURRENCY = 1000
MAX_TIMEOUT_S = 3600.0
MAX_DRAIN_S = 3600.0
LOG_LEVELS = ("debug", "info", "warning", "error")

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d+)$")


def _flag(name: str, default: str | None, help_text: str) -> Flag:
    return Flag(name, _PREFIX + name.upper().replace("-", "_"), default, help_text)


FLAGS = (
    _flag("host", "127.0.0.1", "address the proxy and admin server bind (0.0.0.0 in a pod)"),
    _flag("http-port", "0", "port the proxy listens on (0 = a free one)"),
    _flag(
        "unix-socket",
        "",
        "also serve the proxy on a unix socket at this absolute path (same-machine peers)",
    ),
    _flag("admin-port", "0", "gRPC port for health and reflection (0 = a free one)"),
    _flag("app-port", None, "port the app listens on, on 127.0.0.1 (required)"),
    _flag("revision", "", "NAMESPACE/NAME of the revision this instance serves"),
    _flag("instance", "", "instance id reported in stats (default HOSTNAME-PID)"),
    _flag("container-concurrency", "0", "max requests in the app at once (0 = unlimited)"),
    _flag("timeout-seconds", "300", "total time allowed for a request"),
    _flag(
        "response-start-timeout-seconds",
        "0",
        "time allowed until the app starts answering (0 = off)",
    ),
    _flag("idle-timeout-seconds", "0", "time allowed without a byte from the app (0 = off)"),
    _flag("autoscaler", "", "HOST:PORT of the autoscaler's StatsService (empty = no stats)"),
    _flag("drain-quiet-s", "1.0", "after SIGTERM, exit once no request has arrived for this long"),
    _flag("drain-max-s", "30", "after SIGTERM, exit after this long at most"),
    _flag("ready-file", "", "write the bound addresses here as JSON once listening"),
    _flag("log-level", "info", "debug, info, warning or error"),
    metrics_port_flag("queue"),
    _flag(
        "request-log",
        "true",
        "one JSON line per request on stdout: true or false (--no-request-log = false)",
    ),
    _flag(
        "readiness-probe",
        "",
        "the revision's readiness probe as JSON, Kubernetes' fields (httpGet or tcpSocket, "
        "periodSeconds, ...); empty = TCP, probed aggressively",
    ),
)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class QueueSettings:
    """Everything the queue needs to run; built by `load`, never at import."""

    app_port: int
    http_port: int = 0
    unix_socket: str | None = None
    admin_port: int = 0
    app_host: str = "127.0.0.1"
    host: str = "127.0.0.1"
    namespace: str = ""
    revision: str = ""
    instance: str = ""
    container_concurrency: int = 0
    timeout_s: float = 300.0
    response_start_timeout_s: float = 0.0
    idle_timeout_s: float = 0.0
    autoscaler: str | None = None
    drain_quiet_s: float = 1.0
    drain_max_s: float = 30.0
    ready_file: str | None = None
    log_level: str = "info"
    metrics_port: int = 0
    request_log: bool = True
    readiness_probe: AppProbe = DEFAULT_PROBE

    @property
    def queue_depth(self) -> int:
        """Requests allowed to wait for a slot: 10 x CC, as Knative's queue-proxy."""
        return 10 * self.container_concurrency


def _int_in(key: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} = {raw!r}, must be an integer in {low}..{high}") from None
    if not low <= value <= high:
        raise SettingsError(f"{key} = {value}, must be in {low}..{high}")
    return value


def _seconds(key: str, raw: str, *, low: float, high: float, zero_ok: bool) -> float:
    """A duration in (low, high] seconds, or 0 (off) when zero_ok; the error names the range."""
    rule = f"greater than {low:g} and at most {high:g} seconds"
    if zero_ok:
        rule = f"0 (off) or {rule}"
    try:
        value = parse_duration_s(key, raw)
    except SettingsError:
        raise SettingsError(
            f"{key} = {raw!r}, must be a duration (30s, 500ms, 1m) {rule}"
        ) from None
    if (value == 0 and zero_ok) or low < value <= high:
        return value
    raise SettingsError(f"{key} = {raw}, must be {rule}")


def _revision(raw: str) -> tuple[str, str]:
    if not raw:
        return "", ""
    namespace, slash, name = raw.partition("/")
    if not slash or not _LABEL.match(namespace) or not _LABEL.match(name):
        raise SettingsError(f"revision = {raw!r}, must be NAMESPACE/NAME (lower-case DNS labels)")
    return namespace, name


def _switches(argv: Sequence[str]) -> list[str]:
    """`--no-request-log` -> `--request-log=false`; a bare `--request-log` -> `=true`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--no-request-log":
            arg = "--request-log=false"
        elif arg == "--request-log":
            following = argv[i + 1].lower() if i + 1 < len(argv) else ""
            if following not in _TRUE + _FALSE:
                arg = "--request-log=true"
        out.append(arg)
    return out


def _bool(key: str, raw: str | None) -> bool:
    text = (raw or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(f"{key} = {raw!r}, must be true or false")


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> QueueSettings:
    """Parse flags (falling back to EBB_QUEUE_* env vars, then defaults) and validate them."""
    argv = _switches(sys.argv[1:] if argv is None else argv)
    raw = read_flags(PROG, FLAGS, argv, environ)

    app_port_raw = raw["app-port"]
    if not app_port_raw:
        raise SettingsError("app-port is required, must be in 1..65535")
    app_port = parse_port("app-port", app_port_raw)
    if app_port == 0:
        raise SettingsError("app-port = 0, must be in 1..65535")

    timeout_s = _seconds(
        "timeout-seconds", raw["timeout-seconds"], low=0, high=MAX_TIMEOUT_S, zero_ok=False
    )
    response_start_s = _seconds(
        "response-start-timeout-seconds",
        raw["response-start-timeout-seconds"],
        low=0,
        high=timeout_s,
        zero_ok=True,
    )
    idle_s = _seconds(
        "idle-timeout-seconds", raw["idle-timeout-seconds"], low=0, high=timeout_s, zero_ok=True
    )
    drain_max_s = _seconds(
        "drain-max-s", raw["drain-max-s"], low=0, high=MAX_DRAIN_S, zero_ok=False
    )
    drain_quiet_s = _seconds(
        "drain-quiet-s", raw["drain-quiet-s"], low=0, high=drain_max_s, zero_ok=False
    )

    autoscaler = raw["autoscaler"] or None
    if autoscaler is not None:
        match = _HOST_PORT.match(autoscaler)
        if not match or not 1 <= int(match.group(2)) <= 65535:
            raise SettingsError(
                f"autoscaler = {autoscaler!r}, must be HOST:PORT with port in 1..65535"
            )

    unix_socket = raw["unix-socket"] or None
    if unix_socket is not None and (
        not unix_socket.startswith("/") or len(unix_socket.encode()) > MAX_UNIX_PATH_BYTES
    ):
        raise SettingsError(
            f"unix-socket = {unix_socket!r}, must be an absolute path of at most "
            f"{MAX_UNIX_PATH_BYTES} bytes"
        )

    namespace, revision = _revision(raw["revision"] or "")
    if autoscaler is not None and not revision:
        raise SettingsError("revision is required when autoscaler is set, must be NAMESPACE/NAME")

    log_level = (raw["log-level"] or "info").lower()
    if log_level not in LOG_LEVELS:
        raise SettingsError(
            f"log-level = {raw['log-level']!r}, must be one of {', '.join(LOG_LEVELS)}"
        )

    instance = raw["instance"] or f"{environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"

    return QueueSettings(
        app_port=app_port,
        http_port=parse_port("http-port", raw["http-port"]),
        unix_socket=unix_socket,
        admin_port=parse_port("admin-port", raw["admin-port"]),
        host=parse_host("host", raw["host"]),
        namespace=namespace,
        revision=revision,
        instance=instance,
        container_concurrency=_int_in(
            "container-concurrency", raw["container-concurrency"], 0, MAX_CONTAINER_CONCURRENCY
        ),
        timeout_s=timeout_s,
        response_start_timeout_s=response_start_s,
        idle_timeout_s=idle_s,
        autoscaler=autoscaler,
        drain_quiet_s=drain_quiet_s,
        drain_max_s=drain_max_s,
        ready_file=raw["ready-file"] or None,
        log_level=log_level,
        metrics_port=parse_metrics_port(raw["metrics-port"]),
        request_log=_bool("request-log", raw["request-log"]),
        readiness_probe=parse_probe(raw["readiness-probe"] or ""),
    )
