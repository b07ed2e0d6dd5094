"""Write the chart's serving.knative.dev/v1 CRDs (helm/ebb/crds/*.yaml) from one definition.

Service, Configuration and Revision share the pod spec of a revision, so the schemas are
built here once instead of being copied by hand four times. Run after changing it:

    python helm/crdgen.py            # rewrite helm/ebb/crds/
    python helm/crdgen.py --check    # exit 1 if the files are stale (tests do this too)

The schemas are structural (every node typed, no $ref) so the API server accepts them and
prunes unknown fields. They encode the limits a CRD can state on its own
(containerConcurrency 0..1000, timeoutSeconds 0..600, percent 0..100, one port per
container, tags as DNS-1035 labels); rules that need the whole object (percents summing to
100, revisionName xor configurationName, immutable revisions) stay with the webhook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "serving.knative.dev"
APP_VERSION = "0.1.0"
CRD_DIR = Path(__file__).resolve().parent / "ebb" / "crds"

Schema = dict[str, Any]


# --- small builders -----------------------------------------------------------------------


def string(description: str = "", **extra: Any) -> Schema:
    return _described({"type": "string", **extra}, description)


def integer(description: str = "", fmt: str = "int32", **extra: Any) -> Schema:
    return _described({"type": "integer", "format": fmt, **extra}, description)


def boolean(description: str = "") -> Schema:
    return _described({"type": "boolean"}, description)


def array(items: Schema, description: str = "", **extra: Any) -> Schema:
    return _described({"type": "array", "items": items, **extra}, description)


def obj(
    properties: dict[str, Schema], description: str = "", required: list[str] | None = None
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return _described(schema, description)


def string_map(description: str = "") -> Schema:
    return _described({"type": "object", "additionalProperties": {"type": "string"}}, description)


def opaque(description: str, kind: str = "object") -> Schema:
    """A Kubernetes type kept as is (affinity, tolerations, volume sources...): the API
    server stores it unchanged and the kubelet validates it."""
    if kind == "array":
        return array({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, description)
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": description,
    }


def int_or_string(description: str = "") -> Schema:
    return _described(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        description,
    )


def _described(schema: Schema, description: str) -> Schema:
    if description:
        return {"description": description, **schema}
    return schema


# --- pod spec of a revision ---------------------------------------------------------------

QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
}

KEY_REF = obj(
    {
        "name": string("Name of the ConfigMap or Secret."),
        "key": string("The key to select."),
        "optional": boolean(),
    },
    required=["key"],
)

ENV_VAR = obj(
    {
        "name": string("Variable name."),
        "value": string("Literal value."),
        "valueFrom": obj(
            {
                "configMapKeyRef": KEY_REF,
                "secretKeyRef": KEY_REF,
                "fieldRef": obj(
                    {"apiVersion": string(), "fieldPath": string()}, required=["fieldPath"]
                ),
                "resourceFieldRef": obj(
                    {"containerName": string(), "resource": string(), "divisor": QUANTITY},
                    required=["resource"],
                ),
            },
            "Where the value comes from, instead of `value`.",
        ),
    },
    required=["name"],
)

ENV_FROM = obj(
    {
        "prefix": string(),
        "configMapRef": obj({"name": string(), "optional": boolean()}),
        "secretRef": obj({"name": string(), "optional": boolean()}),
    }
)

HTTP_HEADER = obj({"name": string(), "value": string()}, required=["name", "value"])

PROBE = obj(
    {
        "httpGet": obj(
            {
                "path": string(),
                "port": int_or_string("Defaults to the container's port."),
                "host": string(),
                "scheme": string(enum=["HTTP", "HTTPS"]),
                "httpHeaders": array(HTTP_HEADER),
            }
        ),
        "tcpSocket": obj({"port": int_or_string(), "host": string()}),
        "grpc": obj({"port": integer(minimum=0, maximum=65535), "service": string()}),
        "exec": obj({"command": array(string())}),
        "initialDelaySeconds": integer(minimum=0),
        "periodSeconds": integer("Knative allows 0: probe aggressively until ready.", minimum=0),
        "timeoutSeconds": integer(minimum=0),
        "successThreshold": integer(minimum=0),
        "failureThreshold": integer(minimum=0),
        "terminationGracePeriodSeconds": integer(fmt="int64", minimum=0),
    }
)

CONTAINER_PORT = obj(
    {
        "name": string(
            "`h2c`, `http1` or empty: the protocol the app speaks.", enum=["", "h2c", "http1"]
        ),
        "containerPort": integer(
            "The port the app listens on; given to it as $PORT.", minimum=1, maximum=65535
        ),
        "protocol": string(enum=["TCP"]),
    }
)

CONTAINER = obj(
    {
        "name": string(),
        "image": string("Container image; required on Kubernetes (local mode runs command/args)."),
        "command": array(string()),
        "args": array(string()),
        "workingDir": string(),
        "env": array(ENV_VAR),
        "envFrom": array(ENV_FROM),
        "ports": array(
            CONTAINER_PORT, "At most one port: the one requests are sent to.", maxItems=1
        ),
        "resources": obj(
            {
                "limits": {"type": "object", "additionalProperties": QUANTITY},
                "requests": {"type": "object", "additionalProperties": QUANTITY},
            }
        ),
        "readinessProbe": PROBE,
        "livenessProbe": PROBE,
        "startupProbe": PROBE,
        "securityContext": opaque("Kubernetes SecurityContext."),
        "volumeMounts": array(
            obj(
                {
                    "name": string(),
                    "mountPath": string(),
                    "readOnly": boolean(),
                    "subPath": string(),
                    "subPathExpr": string(),
                    "mountPropagation": string(),
                },
                required=["name", "mountPath"],
            )
        ),
        "imagePullPolicy": string(enum=["Always", "Never", "IfNotPresent"]),
        "terminationMessagePath": string(),
        "terminationMessagePolicy": string(enum=["File", "FallbackToLogsOnError"]),
    }
)

REVISION_SPEC_PROPERTIES: dict[str, Schema] = {
    "containers": array(
        CONTAINER, "The app's containers; exactly one of them may name a port.", minItems=1
    ),
    "containerConcurrency": integer(
        "Most requests one instance serves at once; 0 = unlimited.",
        fmt="int64",
        minimum=0,
        maximum=1000,
    ),
    "timeoutSeconds": integer(
        "Longest a request may take (default 300 s).", fmt="int64", minimum=0, maximum=600
    ),
    "responseStartTimeoutSeconds": integer(
        "Longest until the app starts its response.", fmt="int64", minimum=0, maximum=600
    ),
    "idleTimeoutSeconds": integer(
        "Longest a response may go without sending a byte.", fmt="int64", minimum=0, maximum=600
    ),
    "serviceAccountName": string(),
    "automountServiceAccountToken": boolean(),
    "enableServiceLinks": boolean(),
    "imagePullSecrets": array(obj({"name": string()})),
    "volumes": array(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"name": string()},
            "required": ["name"],
        },
        "Kubernetes Volumes (configMap, secret, projected, emptyDir...).",
    ),
    "initContainers": opaque("Kubernetes init containers.", "array"),
    "nodeSelector": string_map(),
    "tolerations": opaque("Kubernetes Tolerations.", "array"),
    "affinity": opaque("Kubernetes Affinity."),
    "topologySpreadConstraints": opaque("Kubernetes TopologySpreadConstraints.", "array"),
    "securityContext": opaque("Kubernetes PodSecurityContext."),
    "hostAliases": opaque("Kubernetes HostAliases.", "array"),
    "dnsPolicy": string(),
    "dnsConfig": opaque("Kubernetes PodDNSConfig."),
    "priorityClassName": string(),
    "runtimeClassName": string(),
    "schedulerName": string(),
}


def revision_spec(description: str) -> Schema:
    return obj(dict(REVISION_SPEC_PROPERTIES), description, required=["containers"])


TEMPLATE_METADATA: Schema = {
    "type": "object",
    "description": "Labels and annotations (autoscaling.knative.dev/*) of the revisions; "
    "a name must start with the parent's name and change with the template.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {"name": string(), "labels": string_map(), "annotations": string_map()},
}

REVISION_TEMPLATE = obj(
    {
        "metadata": TEMPLATE_METADATA,
        "spec": revision_spec("The revision's pod spec and serving limits."),
    },
    "The template each new revision is stamped from.",
    required=["spec"],
)

DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

TRAFFIC_TARGET = obj(
    {
        "tag": string(
            "Gives the target its own URL, TAG-NAME.NAMESPACE.", pattern=DNS_1035, maxLength=63
        ),
        "revisionName": string("A fixed revision."),
        "configurationName": string(
            "The latest ready revision of this configuration (Route only)."
        ),
        "latestRevision": boolean(
            "Follow the latest ready revision (default when no revisionName)."
        ),
        "percent": integer(
            "Share of the traffic; all targets sum to 100.", fmt="int64", minimum=0, maximum=100
        ),
    }
)

TRAFFIC = array(TRAFFIC_TARGET, "How traffic is split between revisions.")

STATUS: Schema = {
    "type": "object",
    "description": "Written by the controller through the status subresource.",
    "x-kubernetes-preserve-unknown-fields": True,
}

READY = ".status.conditions[?(@.type=='Ready')].status"
REASON = ".status.conditions[?(@.type=='Ready')].reason"


def column(name: str, path: str, priority: int = 0) -> Schema:
    col: Schema = {"name": name, "type": "string", "jsonPath": path}
    if priority:
        col["priority"] = priority
    return col


KINDS: list[dict[str, Any]] = [
    {
        "kind": "Service",
        "plural": "services",
        "short": ["kservice", "ksvc"],
        "spec": obj(
            {"template": REVISION_TEMPLATE, "traffic": TRAFFIC},
            "A configuration (template) and a route (traffic) under one name.",
            required=["template"],
        ),
        "columns": [
            column("URL", ".status.url"),
            column("LatestCreated", ".status.latestCreatedRevisionName"),
            column("LatestReady", ".status.latestReadyRevisionName"),
            column("Ready", READY),
            column("Reason", REASON),
        ],
    },
    {
        "kind": "Configuration",
        "plural": "configurations",
        "short": ["config", "cfg"],
        "spec": obj(
            {"template": REVISION_TEMPLATE},
            "Stamps a new revision whenever the template changes.",
            required=["template"],
        ),
        "columns": [
            column("LatestCreated", ".status.latestCreatedRevisionName"),
            column("LatestReady", ".status.latestReadyRevisionName"),
            column("Ready", READY),
            column("Reason", REASON),
        ],
    },
    {
        "kind": "Revision",
        "plural": "revisions",
        "short": ["rev"],
        "spec": revision_spec("An immutable snapshot of code and configuration."),
        "columns": [
            column("Config Name", ".metadata.labels['serving\\.knative\\.dev/configuration']"),
            column(
                "Generation", ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']"
            ),
            column("Ready", READY),
            column("Reason", REASON),
            {"name": "Actual Replicas", "type": "integer", "jsonPath": ".status.actualReplicas"},
            {"name": "Desired Replicas", "type": "integer", "jsonPath": ".status.desiredReplicas"},
        ],
    },
    {
        "kind": "Route",
        "plural": "routes",
        "short": ["rt"],
        "spec": obj(
            {"traffic": TRAFFIC}, "Names the revisions that receive traffic and their shares."
        ),
        "columns": [
            column("URL", ".status.url"),
            column("Ready", READY),
            column("Reason", REASON),
        ],
    },
]


def crd(kind: dict[str, Any]) -> Schema:
    plural = kind["plural"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "ebb",
                "app.kubernetes.io/part-of": "ebb",
                "app.kubernetes.io/component": "crd",
                "app.kubernetes.io/version": APP_VERSION,
                "knative.dev/crd-install": "true",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind["kind"],
                "listKind": kind["kind"] + "List",
                "plural": plural,
                "singular": kind["kind"].lower(),
                "shortNames": kind["short"],
                "categories": ["all", "knative", "serving"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind["columns"],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"Knative Serving {kind['kind']}, served by Ebb.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": kind["spec"],
                                "status": STATUS,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by helm/crdgen.py; edit that file and rerun it, not this one.\n"


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # shared sub-schemas are written out in full
            return True

    out = {}
    for kind in KINDS:
        text = yaml.dump(crd(kind), Dumper=_NoAliases, sort_keys=False, width=120)
        out[f"{GROUP}_{kind['plural']}.yaml"] = HEADER + text
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if helm/ebb/crds is stale")
    args = parser.parse_args(argv)
    files = render_all()
    stale = [
        name
        for name, text in files.items()
        if not (CRD_DIR / name).is_file() or (CRD_DIR / name).read_text() != text
    ]
    extra = (
        sorted(p.name for p in CRD_DIR.glob("*.yaml") if p.name not in files)
        if CRD_DIR.is_dir()
        else []
    )
    if args.check:
        for name in stale + extra:
            print(f"stale: {CRD_DIR / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    CRD_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (CRD_DIR / name).write_text(files[name])
    for name in extra:
        (CRD_DIR / name).unlink()
    print(f"wrote {len(stale)} file(s), removed {len(extra)} in {CRD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
