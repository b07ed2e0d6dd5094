"""Knative's defaulting of Serving resources, as a pure function over the dict form."""

from __future__ import annotations

import copy
from typing import Any

from ebb.webhook import autoscaling
from ebb.webhook.model import API_VERSION, DEFAULT_SETTINGS, KINDS, AdmissionSettings
from ebb.webhook.values import as_dict, as_int, as_list, as_str

SERVICE_LABEL = "serving.knative.dev/service"
_PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")


def default(
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    settings: AdmissionSettings = DEFAULT_SETTINGS,
) -> dict[str, Any]:
    """Return a defaulted copy of `obj` (Service, Configuration, Revision or Route).

    `obj` is never modified; fields Ebb does not know are kept as they are. An unknown
    kind is returned unchanged (validation rejects it). `old` (the stored object on
    UPDATE) is accepted for symmetry with validate(); Knative's defaults do not depend on
    it except for user-info annotations, which Ebb does not keep.
    """
    del old
    out = copy.deepcopy(obj)
    kind = out.get("kind")
    if kind not in KINDS:
        return out
    if not out.get("apiVersion"):
        out["apiVersion"] = API_VERSION
    meta = _child(out, "metadata")
    if meta is not None and not meta.get("namespace"):
        meta["namespace"] = settings.default_namespace

    spec = _child(out, "spec")
    if spec is None:
        return out
    if kind in ("Service", "Configuration"):
        _default_template(spec, settings)
    if kind == "Service":
        _default_traffic(spec, None, in_service=True)
    elif kind == "Route":
        owner = as_str(as_dict((meta or {}).get("labels")).get(SERVICE_LABEL))
        _default_traffic(spec, owner, in_service=False)
    elif kind == "Revision":
        _canonicalize_annotations(meta)
        _default_revision_spec(spec, settings)
    return out


def _child(parent: dict, key: str) -> dict | None:
    """parent[key] as a dict, created when missing or null; None when it has a wrong type."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    return value if isinstance(value, dict) else None


def _canonicalize_annotations(meta: dict | None) -> None:
    if meta and isinstance(meta.get("annotations"), dict):
        meta["annotations"] = autoscaling.canonicalize(meta["annotations"])


def _default_template(spec: dict, settings: AdmissionSettings) -> None:
    template = _child(spec, "template")
    if template is None:
        return
    if isinstance(template.get("metadata"), dict):
        _canonicalize_annotations(template["metadata"])
    revision_spec = _child(template, "spec")
    if revision_spec is not None:
        _default_revision_spec(revision_spec, settings)


def _default_revision_spec(spec: dict, settings: AdmissionSettings) -> None:
    """RevisionSpec.SetDefaults: timeout, concurrency, container names and readiness probe."""
    timeout = spec.get("timeoutSeconds")
    if timeout is None or as_int(timeout) == 0:
        spec["timeoutSeconds"] = settings.revision_timeout_s
    if spec.get("containerConcurrency") is None:
        spec["containerConcurrency"] = settings.container_concurrency
    containers = as_list(spec.get("containers"))
    for idx, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        if not container.get("name"):
            name = settings.user_container_name
            container["name"] = name if len(containers) == 1 else f"{name}-{idx}"
        # With several containers only the serving one (the one with a port) is probed.
        if len(containers) == 1 or as_list(container.get("ports")):
            _default_readiness_probe(container)


def _default_readiness_probe(container: dict) -> None:
    probe = container.get("readinessProbe")
    if probe is None:
        probe = container["readinessProbe"] = {}
    if not isinstance(probe, dict):
        return
    if all(probe.get(h) is None for h in _PROBE_HANDLERS):
        probe["tcpSocket"] = {}
    if not as_int(probe.get("successThreshold", 0)):
        probe["successThreshold"] = 1
    # A non-zero period opts out of Knative's aggressive start-up probing, so the usual
    # Kubernetes defaults apply: 3 failures, 1 s per attempt.
    if as_int(probe.get("periodSeconds", 0)):
        if not as_int(probe.get("failureThreshold", 0)):
            probe["failureThreshold"] = 3
        if not as_int(probe.get("timeoutSeconds", 0)):
            probe["timeoutSeconds"] = 1


def _default_traffic(spec: dict, owner_service: str, *, in_service: bool) -> None:
    traffic = spec.get("traffic")
    if not traffic:
        if in_service:
            spec["traffic"] = [{"latestRevision": True, "percent": 100}]
        elif owner_service:
            # A Route generated for a Service follows that Service's configuration.
            spec["traffic"] = [
                {"configurationName": owner_service, "latestRevision": True, "percent": 100}
            ]
        return
    for target in as_list(traffic):
        if isinstance(target, dict) and target.get("latestRevision") is None:
            target["latestRevision"] = not target.get("revisionName")
