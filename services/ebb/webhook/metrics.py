"""The webhook's Prometheus metrics: admissions by kind, operation, action, verdict, transport.

Label values are bounded: a kind or operation the webhook does not know (from a foreign
AdmissionReview) is counted as "other", an unreadable request as "unknown", so a
misbehaving client cannot grow the series without limit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

KINDS = frozenset({"Service", "Configuration", "Revision", "Route", "DomainMapping"})
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
ACTIONS = ("default", "validate")
TRANSPORTS = ("grpc", "https")
ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"  # the request could not be read or answered
UNKNOWN = "unknown"
OTHER = "other"


def kind_label(kind: object) -> str:
    if not kind:
        return UNKNOWN
    return kind if isinstance(kind, str) and kind in KINDS else OTHER


def operation_label(operation: object) -> str:
    if not operation:
        return UNKNOWN
    text = str(operation).upper()
    return text if text in OPERATIONS else OTHER


class WebhookMetrics:
    """`ebb_webhook_admissions_total` on its own registry (or the one given)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.admissions = Counter(
            "ebb_webhook_admissions_total",
            "Admission requests answered, by resource kind, operation, action "
            "(default = mutate, validate), verdict (allowed, denied, error) and transport.",
            labelnames=("kind", "operation", "action", "verdict", "transport"),
            registry=registry,
        )

    def admission(
        self, *, kind: object, operation: object, action: str, verdict: str, transport: str
    ) -> None:
        self.admissions.labels(
            kind=kind_label(kind),
            operation=operation_label(operation),
            action=action,
            verdict=verdict,
            transport=transport,
        ).inc()
