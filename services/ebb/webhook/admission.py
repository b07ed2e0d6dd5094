"""Admission as a pure function: (object, old object) -> (defaulted object, errors).

The transports (gRPC in server.py, AdmissionReview over HTTPS) only decode and encode;
every decision is made here, over Knative's dict form of a resource (`kind` in
obj["kind"]: Service, Configuration, Revision or Route).
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from ebb.webhook import jsonpatch
from ebb.webhook.defaults import default
from ebb.webhook.model import DEFAULT_SETTINGS, KINDS, AdmissionSettings, FieldError
from ebb.webhook.validation import validate

__all__ = [
    "AdmissionSettings",
    "DEFAULT_SETTINGS",
    "FieldError",
    "KINDS",
    "admit",
    "default",
    "review_response",
    "validate",
]

REVIEW_API_VERSION = "admission.k8s.io/v1"


def admit(
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    operation: str,
    *,
    settings: AdmissionSettings = DEFAULT_SETTINGS,
) -> tuple[dict[str, Any], list[FieldError]]:
    """Default then validate, as Knative's webhooks do in sequence: (defaulted, errors)."""
    defaulted = default(obj, old, settings=settings)
    return defaulted, validate(defaulted, old, operation, settings=settings)


def review_response(
    review: dict[str, Any], action: str, *, settings: AdmissionSettings = DEFAULT_SETTINGS
) -> dict[str, Any]:
    """Answer a Kubernetes AdmissionReview (admission.k8s.io/v1) for `action` "validate" or "mutate".

    validate: allowed, or denied with a status message listing every `path: message`.
    mutate: allowed, with a base64 JSONPatch from the submitted object to its defaulted form.
    Status-subresource writes and DELETE/CONNECT are allowed untouched (as in Knative).
    Raises ValueError when `review` is not an AdmissionReview request.
    """
    if action not in ("validate", "mutate"):
        raise ValueError(f"unknown admission action {action!r}")
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not request.get("uid"):
        raise ValueError("not an AdmissionReview request (request.uid missing)")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    operation = str(request.get("operation") or "CREATE").upper()
    obj = request.get("object")
    old = request.get("oldObject")
    old = old if isinstance(old, dict) else None
    skip = (
        operation not in ("CREATE", "UPDATE")
        or request.get("subResource")
        or not isinstance(obj, dict)
    )

    if action == "validate" and not skip:
        errors = validate(obj, old, operation, settings=settings)
        if errors:
            response["allowed"] = False
            response["status"] = {
                "status": "Failure",
                "reason": "BadRequest",
                "code": 400,
                "message": "validation failed: " + "\n".join(str(e) for e in errors),
            }
    elif action == "mutate" and not skip:
        work = copy.deepcopy(obj)
        namespace = request.get("namespace")
        meta = work.get("metadata")
        if namespace and isinstance(meta, dict) and not meta.get("namespace"):
            # On Kubernetes the request's namespace wins over Ebb's local default.
            meta["namespace"] = namespace
        patch = jsonpatch.diff(obj, default(work, old, settings=settings))
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {
        "apiVersion": review.get("apiVersion") or REVIEW_API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    }
