"""`ebb status`: every component's address and whether it answers its health check."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHECK_TIMEOUT_S = 2.0

# (mesh.json key, how to check it): grpc = grpc.health.v1 Check(""), tcp = a listener
# accepts connections, envoy = admin GET /ready answers 200 LIVE, metrics = GET /metrics
# answers 200 (the Prometheus port each component wrote to its ready file).
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("gateway", "tcp"),
    ("envoy_admin", "envoy"),
    ("controller", "grpc"),
    ("autoscaler", "grpc"),
    ("autoscaler_stats", "tcp"),  # serves StreamStats only: no grpc.health.v1 there
    ("activator", "tcp"),
    ("activator_grpc", "grpc"),
    ("webhook", "grpc"),
    ("controller_metrics", "metrics"),
    ("autoscaler_metrics", "metrics"),
    ("activator_metrics", "metrics"),
    ("webhook_metrics", "metrics"),
)
HEALTHY = {"SERVING", "LISTENING", "LIVE"}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    check: str
    status: str  # SERVING / NOT_SERVING / LISTENING / LIVE / UNREACHABLE / ...
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.status in HEALTHY


def grpc_health(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[str, str]:
    """(status, detail) of grpc.health.v1 Check for the whole server."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE", exc.details() or ""
            return exc.code().name, exc.details() or ""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""


def tcp_listening(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return "LISTENING", ""
    except OSError as exc:
        return "UNREACHABLE", exc.strerror or str(exc)


def envoy_ready(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[str, str]:
    """Envoy admin `/ready`: 200 `LIVE` once its initial xDS fetch is done."""
    try:
        with urllib.request.urlopen(f"http://{address}/ready", timeout=timeout_s) as reply:
            return reply.read().decode(errors="replace").strip() or "LIVE", ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        exc.close()
        return body or f"HTTP {exc.code}", ""
    except (urllib.error.URLError, OSError) as exc:
        return "UNREACHABLE", str(getattr(exc, "reason", exc))


def metrics_served(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[str, str]:
    """A component's Prometheus port: GET /metrics answers 200."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as reply:
            reply.read()
            return "SERVING", ""
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}", ""
    except (urllib.error.URLError, OSError) as exc:
        return "UNREACHABLE", str(getattr(exc, "reason", exc))


CHECKS = {"grpc": grpc_health, "tcp": tcp_listening, "envoy": envoy_ready, "metrics": metrics_served}


def check_all(addresses: Mapping[str, str], checks: Mapping[str, object] | None = None) -> list[ComponentStatus]:
    """Check every known component that has an address, in COMPONENTS order."""
    checks = checks or CHECKS
    results = []
    for name, kind in COMPONENTS:
        address = addresses.get(name)
        if not address:
            continue
        status, detail = checks[kind](address)
        results.append(ComponentStatus(name=name, address=address, check=kind, status=status, detail=detail))
    return results
