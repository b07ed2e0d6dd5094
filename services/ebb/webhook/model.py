"""Values shared by the pure admission code: the error type, the settings, the kinds."""

from __future__ import annotations

from dataclasses import dataclass

API_VERSION = "serving.knative.dev/v1"
KINDS = ("Service", "Configuration", "Revision", "Route")

OPERATIONS = ("CREATE", "UPDATE", "DELETE")


@dataclass(frozen=True)
class FieldError:
    """One violated rule: the field's path (`spec.traffic[1].percent`) and Knative's message."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class AdmissionSettings:
    """Cluster-wide knobs the rules read (Knative's `config-defaults` / `config-autoscaler`).

    Defaults are Knative's: revisions time out after 300 s and may ask for at most 600 s;
    containerConcurrency 0 (unlimited) unless set, at most 1000.
    """

    default_namespace: str = "default"
    user_container_name: str = "user-container"
    revision_timeout_s: int = 300
    max_revision_timeout_s: int = 600
    container_concurrency: int = 0
    container_concurrency_max: int = 1000
    allow_zero_initial_scale: bool = False
    # 0 = no cluster-wide cap on `max-scale`; > 0 also forbids an unbounded max-scale.
    max_scale_limit: int = 0


DEFAULT_SETTINGS = AdmissionSettings()
