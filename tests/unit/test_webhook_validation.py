"""Every validation rule of the webhook: a failing case with Knative's exact message, and a passing one."""

from __future__ import annotations

import copy
import re

import pytest

from ebb.webhook.admission import AdmissionSettings, FieldError, default, validate

DNS1035 = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123 = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
NOT_DNS1035 = f"invalid value: not a DNS 1035 label: [{DNS1035}]"
INT32_MAX = 2147483647
T = "spec.template.spec"  # the revision spec inside a Service / Configuration
C = f"{T}.containers[0]"
A = "spec.template.metadata.annotations.autoscaling.knative.dev/"
DROP = object()


def _container() -> dict:
    return {"image": "ghcr.io/acme/hello:1", "command": ["python", "app.py"]}


BASES = {
    "Service": {
        "kind": "Service",
        "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [_container()]}}},
    },
    "Configuration": {
        "kind": "Configuration",
        "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [_container()]}}},
    },
    "Revision": {
        "kind": "Revision",
        "metadata": {"name": "hello-00001"},
        "spec": {"containers": [_container()]},
    },
    "Route": {
        "kind": "Route",
        "metadata": {"name": "hello"},
        "spec": {"traffic": [{"configurationName": "hello", "percent": 100}]},
    },
}


def put(obj: dict, path: str, value) -> None:
    """Set (or with DROP delete) obj at a dotted path; `[i]` or integer parts index lists."""
    parts = re.sub(r"\[(\d+)\]", r".\1", path).split(".")
    # annotation keys contain dots: everything after "annotations" is one key
    if "annotations" in parts:
        i = parts.index("annotations")
        parts = [*parts[: i + 1], ".".join(parts[i + 1 :])] if i + 1 < len(parts) else parts
    node = obj
    for part in parts[:-1]:
        key = int(part) if part.isdigit() else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DROP:
        del node[last]
    else:
        node[last] = value


def make(kind: str = "Service", edits: dict | None = None, *, defaulted: bool = True) -> dict:
    obj = copy.deepcopy(BASES[kind])
    if defaulted:
        obj = default(obj)
    for path, value in (edits or {}).items():
        put(obj, path, value)
    return obj


def ann(**pairs: str) -> dict:
    """Template annotations edit: ann(min_scale="1") -> {"...annotations.autoscaling.knative.dev/min-scale": "1"}."""
    return {
        f"spec.template.metadata.annotations.autoscaling.knative.dev/{k.replace('_', '-')}": v
        for k, v in pairs.items()
    }


def errs(*pairs: tuple[str, str]) -> list[FieldError]:
    return [FieldError(path, message) for path, message in pairs]


# (id, kind, edits, expected errors). Expected is the complete list: nothing else may be reported.
FAILING = [
    # ---- kinds, apiVersion, operation ----
    (
        "unknown kind",
        "Service",
        {"kind": "Pod"},
        errs(
            ("kind", "invalid value: Pod (expected one of Service, Configuration, Revision, Route)")
        ),
    ),
    ("missing kind", "Service", {"kind": DROP}, errs(("kind", "missing field(s)"))),
    (
        "wrong apiVersion",
        "Service",
        {"apiVersion": "serving.knative.dev/v1alpha1"},
        errs(
            (
                "apiVersion",
                "invalid value: serving.knative.dev/v1alpha1 (expected serving.knative.dev/v1)",
            )
        ),
    ),
    # ---- metadata ----
    (
        "name missing",
        "Service",
        {"metadata.name": DROP},
        errs(("metadata.name", "missing field(s)")),
    ),
    (
        "name with dot",
        "Service",
        {"metadata.name": "a.b"},
        errs(("metadata.name", "Invalid resource name: special character . must not be present")),
    ),
    (
        "name too long",
        "Route",
        {"metadata.name": "a" * 64},
        errs(("metadata.name", "Invalid resource name: length must be no more than 63 characters")),
    ),
    (
        "name upper case",
        "Configuration",
        {"metadata.name": "Hello"},
        errs(("metadata.name", NOT_DNS1035)),
    ),
    (
        "name starts with digit",
        "Revision",
        {"metadata.name": "1hello"},
        errs(("metadata.name", NOT_DNS1035)),
    ),
    (
        "generateName",
        "Service",
        {"metadata.generateName": "hello-"},
        errs(
            (
                "metadata.generateName",
                "must not set the field(s) (Ebb does not support generateName)",
            )
        ),
    ),
    (
        "bad namespace",
        "Service",
        {"metadata.namespace": "My_NS"},
        errs(("metadata.namespace", f"invalid value: not a DNS 1123 label: [{DNS1123}]")),
    ),
    *[
        (
            f"autoscaling annotation on {kind} metadata",
            kind,
            {"metadata.annotations.autoscaling.knative.dev/min-scale": "1"},
            errs(
                (
                    "metadata.annotations",
                    'invalid key name "autoscaling.knative.dev/min-scale" (autoscaling annotations must be put under '
                    '"spec.template.metadata.annotations" to work)',
                )
            ),
        )
        for kind in ("Service", "Configuration", "Route")
    ],
    # ---- revision template ----
    (
        "template generateName",
        "Service",
        {"spec.template.metadata.generateName": "hello-"},
        errs(
            (
                "spec.template.metadata.generateName",
                "must not set the field(s) (Ebb does not support generateName)",
            )
        ),
    ),
    (
        "template name without parent prefix",
        "Service",
        {"spec.template.metadata.name": "other-v1"},
        errs(
            ("spec.template.metadata.name", 'invalid value: "other-v1" must have prefix "hello-"')
        ),
    ),
    (
        "template name prefix in Configuration",
        "Configuration",
        {"spec.template.metadata.name": "hellov1"},
        errs(("spec.template.metadata.name", 'invalid value: "hellov1" must have prefix "hello-"')),
    ),
    (
        "template name not DNS-1035",
        "Service",
        {"spec.template.metadata.name": "hello_v1"},
        errs(("spec.template.metadata.name", NOT_DNS1035)),
    ),
    # ---- containers ----
    (
        "no containers",
        "Service",
        {f"{T}.containers": []},
        errs((f"{T}.containers", "missing field(s)")),
    ),
    (
        "containers missing",
        "Revision",
        {"spec.containers": DROP},
        errs(("spec.containers", "missing field(s)")),
    ),
    (
        "two containers",
        "Service",
        {f"{T}.containers": [_container() | {"name": "a"}, _container() | {"name": "b"}]},
        errs((f"{T}.containers", "multi-container is off, but found 2 containers")),
    ),
    ("empty container", "Service", {f"{T}.containers": [{}]}, errs((C, "missing field(s)"))),
    (
        "neither image nor command",
        "Service",
        {f"{C}.image": DROP, f"{C}.command": DROP},
        errs((C, "expected image or command, got neither")),
    ),
    (
        "reserved container name",
        "Service",
        {f"{C}.name": "queue-proxy"},
        errs((f"{C}.name", '"queue-proxy" is a reserved container name')),
    ),
    *[
        (
            f"reserved env {name}",
            "Service",
            {f"{C}.env": [{"name": "OK", "value": "1"}, {"name": name, "value": "1"}]},
            errs((f"{C}.env[1].name", f'"{name}" is a reserved environment variable')),
        )
        for name in ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")
    ],
    (
        "reserved env in Revision",
        "Revision",
        {"spec.containers.0.env": [{"name": "PORT"}]},
        errs(("spec.containers[0].env[0].name", '"PORT" is a reserved environment variable')),
    ),
    (
        "env without name",
        "Service",
        {f"{C}.env": [{"value": "1"}]},
        errs((f"{C}.env[0].name", "missing field(s)")),
    ),
    *[
        (
            f"reserved port {port}",
            "Service",
            {f"{C}.ports": [{"containerPort": port}]},
            errs((f"{C}.ports[0].containerPort", f"invalid value: {port} is a reserved port")),
        )
        for port in (8012, 8013, 8022, 8112, 9090, 9091)
    ],
    (
        "port out of range",
        "Service",
        {f"{C}.ports": [{"containerPort": 70000}]},
        errs((f"{C}.ports[0].containerPort", "expected 0 <= 70000 <= 65535")),
    ),
    (
        "two ports",
        "Service",
        {f"{C}.ports": [{"containerPort": 8080}, {"containerPort": 8081}]},
        errs((f"{C}.ports", "more than one container port is set")),
    ),
    (
        "bad port name",
        "Service",
        {f"{C}.ports": [{"name": "grpc", "containerPort": 8080}]},
        errs(
            (
                f"{C}.ports[0].name",
                "Port name grpc is not allowed (Name must be empty, or one of: 'h2c', 'http1')",
            )
        ),
    ),
    (
        "UDP port",
        "Service",
        {f"{C}.ports": [{"containerPort": 8080, "protocol": "UDP"}]},
        errs((f"{C}.ports[0].protocol", "invalid value: UDP")),
    ),
    # ---- concurrency and timeouts ----
    (
        "containerConcurrency above 1000",
        "Service",
        {f"{T}.containerConcurrency": 1001},
        errs((f"{T}.containerConcurrency", "expected 0 <= 1001 <= 1000")),
    ),
    (
        "containerConcurrency negative",
        "Revision",
        {"spec.containerConcurrency": -1},
        errs(("spec.containerConcurrency", "expected 0 <= -1 <= 1000")),
    ),
    (
        "containerConcurrency not a number",
        "Service",
        {f"{T}.containerConcurrency": "abc"},
        errs((f"{T}.containerConcurrency", "invalid value: abc")),
    ),
    (
        "timeoutSeconds above 600",
        "Service",
        {f"{T}.timeoutSeconds": 601},
        errs((f"{T}.timeoutSeconds", "expected 0 <= 601 <= 600")),
    ),
    (
        "timeoutSeconds negative",
        "Revision",
        {"spec.timeoutSeconds": -5},
        errs(("spec.timeoutSeconds", "expected 0 <= -5 <= 600")),
    ),
    (
        "responseStartTimeoutSeconds above timeoutSeconds",
        "Service",
        {f"{T}.timeoutSeconds": 100, f"{T}.responseStartTimeoutSeconds": 101},
        errs((f"{T}.responseStartTimeoutSeconds", "expected 0 <= 101 <= 100")),
    ),
    (
        "idleTimeoutSeconds above timeoutSeconds",
        "Service",
        {f"{T}.idleTimeoutSeconds": 301},
        errs((f"{T}.idleTimeoutSeconds", "expected 0 <= 301 <= 300")),
    ),
    (
        "idleTimeoutSeconds negative",
        "Revision",
        {"spec.idleTimeoutSeconds": -1},
        errs(("spec.idleTimeoutSeconds", "expected 0 <= -1 <= 300")),
    ),
    # ---- probes ----
    (
        "readiness successThreshold 0",
        "Service",
        {f"{C}.readinessProbe.successThreshold": 0},
        errs((f"{C}.readinessProbe.successThreshold", f"expected 1 <= 0 <= {INT32_MAX}")),
    ),
    (
        "readiness periodSeconds negative",
        "Service",
        {
            f"{C}.readinessProbe.periodSeconds": -1,
            f"{C}.readinessProbe.timeoutSeconds": 1,
            f"{C}.readinessProbe.failureThreshold": 3,
        },
        errs((f"{C}.readinessProbe.periodSeconds", f"expected 0 <= -1 <= {INT32_MAX}")),
    ),
    (
        "readiness initialDelaySeconds negative",
        "Service",
        {f"{C}.readinessProbe.initialDelaySeconds": -1},
        errs((f"{C}.readinessProbe.initialDelaySeconds", f"expected 0 <= -1 <= {INT32_MAX}")),
    ),
    (
        "failureThreshold with periodSeconds 0",
        "Service",
        {f"{C}.readinessProbe.failureThreshold": 3},
        errs(
            (
                f"{C}.readinessProbe.failureThreshold",
                "failureThreshold is disallowed when periodSeconds is zero",
            )
        ),
    ),
    (
        "timeoutSeconds with periodSeconds 0",
        "Service",
        {f"{C}.readinessProbe.timeoutSeconds": 1},
        errs(
            (
                f"{C}.readinessProbe.timeoutSeconds",
                "timeoutSeconds is disallowed when periodSeconds is zero",
            )
        ),
    ),
    (
        "periodic probe without timeout and failureThreshold",
        "Service",
        {f"{C}.readinessProbe.periodSeconds": 5},
        errs(
            (f"{C}.readinessProbe.timeoutSeconds", f"expected 1 <= 0 <= {INT32_MAX}"),
            (f"{C}.readinessProbe.failureThreshold", f"expected 1 <= 0 <= {INT32_MAX}"),
        ),
    ),
    (
        "readiness probe with two handlers",
        "Service",
        {f"{C}.readinessProbe.httpGet": {"path": "/healthz"}},
        errs(
            (
                f"{C}.readinessProbe.httpGet, {C}.readinessProbe.tcpSocket",
                "expected exactly one, got both",
            )
        ),
    ),
    (
        "liveness probe without handler",
        "Service",
        {f"{C}.livenessProbe": {"periodSeconds": 10}},
        errs(
            (
                f"{C}.livenessProbe.httpGet, {C}.livenessProbe.tcpSocket",
                "expected exactly one, got neither",
            )
        ),
    ),
    (
        "exec probe",
        "Service",
        {f"{C}.livenessProbe": {"exec": {"command": ["true"]}}},
        errs(
            (
                f"{C}.livenessProbe.exec",
                "must not set the field(s) (Ebb probes with httpGet or tcpSocket)",
            )
        ),
    ),
    # ---- traffic ----
    (
        "traffic sums to 90",
        "Service",
        {"spec.traffic.0.percent": 90},
        errs(("spec.traffic", "Traffic targets sum to 90, want 100")),
    ),
    (
        "percent above 100",
        "Service",
        {"spec.traffic": [{"latestRevision": True, "percent": 101}]},
        errs(
            ("spec.traffic[0].percent", "expected 0 <= 101 <= 100"),
            ("spec.traffic", "Traffic targets sum to 101, want 100"),
        ),
    ),
    (
        "percent negative",
        "Service",
        {
            "spec.traffic": [
                {"latestRevision": True, "percent": 110},
                {"revisionName": "hello-00001", "latestRevision": False, "percent": -10},
            ]
        },
        errs(
            ("spec.traffic[0].percent", "expected 0 <= 110 <= 100"),
            ("spec.traffic[1].percent", "expected 0 <= -10 <= 100"),
        ),
    ),
    (
        "configurationName inside a Service",
        "Service",
        {"spec.traffic.0.configurationName": "hello"},
        errs(("spec.traffic[0].configurationName", "must not set the field(s)")),
    ),
    (
        "latestRevision true with revisionName",
        "Service",
        {"spec.traffic.0.revisionName": "hello-00001"},
        errs(
            (
                "spec.traffic[0].latestRevision",
                'may not set revisionName "hello-00001" when latestRevision is true',
            )
        ),
    ),
    (
        "latestRevision false without revisionName",
        "Service",
        {"spec.traffic.0.latestRevision": False},
        errs(
            (
                "spec.traffic[0].latestRevision",
                'may not set revisionName "" when latestRevision is false',
            )
        ),
    ),
    (
        "tag not DNS-1035",
        "Service",
        {"spec.traffic.0.tag": "Tag_1"},
        errs(("spec.traffic[0].tag", NOT_DNS1035)),
    ),
    (
        "duplicate tags",
        "Service",
        {
            "spec.traffic": [
                {"latestRevision": True, "percent": 100, "tag": "x"},
                {"revisionName": "hello-00001", "latestRevision": False, "percent": 0, "tag": "x"},
            ]
        },
        errs(("spec.traffic[1].tag", 'Multiple definitions for "x"')),
    ),
    (
        "url in spec",
        "Service",
        {"spec.traffic.0.url": "http://x"},
        errs(("spec.traffic[0].url", "must not set the field(s)")),
    ),
    (
        "revisionName not a qualified name",
        "Route",
        {"spec.traffic": [{"revisionName": "bad name!", "percent": 100}]},
        errs(("spec.traffic[0].revisionName", 'invalid key name "bad name!"')),
    ),
    (
        "configurationName not a qualified name",
        "Route",
        {"spec.traffic": [{"configurationName": "-bad", "percent": 100}]},
        errs(("spec.traffic[0].configurationName", 'invalid key name "-bad"')),
    ),
    (
        "route target with both names",
        "Route",
        {
            "spec.traffic": [
                {"revisionName": "hello-00001", "configurationName": "hello", "percent": 100}
            ]
        },
        errs(
            (
                "spec.traffic[0].revisionName, spec.traffic[0].configurationName",
                "expected exactly one, got both",
            )
        ),
    ),
    (
        "route target with neither name",
        "Route",
        {"spec.traffic": [{"percent": 100}]},
        errs(
            (
                "spec.traffic[0].revisionName, spec.traffic[0].configurationName",
                "expected exactly one, got neither",
            )
        ),
    ),
    (
        "route without traffic",
        "Route",
        {"spec.traffic": []},
        errs(("spec.traffic", "Traffic targets sum to 0, want 100")),
    ),
    # ---- autoscaling annotations (template) ----
    (
        "unknown autoscaling key",
        "Service",
        ann(min_scales="1"),
        errs(
            (
                A + "min-scales",
                'invalid key name "autoscaling.knative.dev/min-scales" (not a known autoscaling annotation)',
            )
        ),
    ),
    (
        "same annotation spelled twice",
        "Service",
        {A + "min-scale": "1", A + "minScale": "2"},
        errs((f"{A}min-scale, {A}minScale", "expected exactly one, got both")),
    ),
    (
        "hpa class",
        "Service",
        ann(**{"class": "hpa.autoscaling.knative.dev"}),
        errs(
            (
                A + "class",
                "invalid value: hpa.autoscaling.knative.dev (Ebb supports only kpa.autoscaling.knative.dev)",
            )
        ),
    ),
    (
        "min-scale negative",
        "Service",
        ann(min_scale="-1"),
        errs((A + "min-scale", f"expected 0 <= -1 <= {INT32_MAX}")),
    ),
    (
        "min-scale not a number",
        "Service",
        ann(min_scale="one"),
        errs((A + "min-scale", "invalid value: one")),
    ),
    (
        "min-scale beyond int32",
        "Service",
        ann(min_scale="2147483648"),
        errs((A + "min-scale", f"expected 0 <= 2147483648 <= {INT32_MAX}")),
    ),
    (
        "max-scale negative",
        "Service",
        ann(max_scale="-3"),
        errs((A + "max-scale", f"expected 0 <= -3 <= {INT32_MAX}")),
    ),
    (
        "max-scale fractional",
        "Service",
        ann(max_scale="1.5"),
        errs((A + "max-scale", "invalid value: 1.5")),
    ),
    (
        "max-scale below min-scale",
        "Service",
        ann(min_scale="3", max_scale="2"),
        errs((A + "max-scale", "max-scale=2 is less than min-scale=3")),
    ),
    (
        "max-scale below min-scale (aliases)",
        "Service",
        ann(minScale="3", maxScale="2"),
        errs((A + "maxScale", "max-scale=2 is less than min-scale=3")),
    ),
    (
        "initial-scale negative",
        "Service",
        ann(initial_scale="-1"),
        errs((A + "initial-scale", "invalid value: -1 (must be greater than or equal to 0)")),
    ),
    (
        "initial-scale zero",
        "Service",
        ann(initial_scale="0"),
        errs((A + "initial-scale", "invalid value: 0 (initial-scale=0 not allowed by cluster)")),
    ),
    (
        "initial-scale not a number",
        "Service",
        ann(initial_scale="x"),
        errs((A + "initial-scale", "invalid value: x")),
    ),
    (
        "target too small",
        "Service",
        ann(target="0.001"),
        errs((A + "target", "target 0.001 should be at least 0.01")),
    ),
    (
        "target not a number",
        "Service",
        ann(target="abc"),
        errs((A + "target", "invalid value: abc")),
    ),
    ("target NaN", "Service", ann(target="NaN"), errs((A + "target", "invalid value: NaN"))),
    (
        "target-utilization-percentage low",
        "Service",
        ann(target_utilization_percentage="0.5"),
        errs((A + "target-utilization-percentage", "expected 1 <= 0.5 <= 100")),
    ),
    (
        "target-utilization-percentage high",
        "Service",
        ann(target_utilization_percentage="101"),
        errs((A + "target-utilization-percentage", "expected 1 <= 101 <= 100")),
    ),
    (
        "target-burst-capacity -2",
        "Service",
        ann(target_burst_capacity="-2"),
        errs((A + "target-burst-capacity", "invalid value: -2")),
    ),
    (
        "target-burst-capacity text",
        "Service",
        ann(target_burst_capacity="lots"),
        errs((A + "target-burst-capacity", "invalid value: lots")),
    ),
    (
        "window too short",
        "Service",
        ann(window="5s"),
        errs((A + "window", "expected 6s <= 5s <= 1h0m0s")),
    ),
    (
        "window too long",
        "Service",
        ann(window="61m"),
        errs((A + "window", "expected 6s <= 61m <= 1h0m0s")),
    ),
    (
        "window sub-second",
        "Service",
        ann(window="6500ms"),
        errs((A + "window", "must be specified with at most second precision")),
    ),
    ("window without unit", "Service", ann(window="60"), errs((A + "window", "invalid value: 60"))),
    (
        "panic-window-percentage low",
        "Service",
        ann(panic_window_percentage="0.5"),
        errs((A + "panic-window-percentage", "expected 1 <= 0.5 <= 100")),
    ),
    (
        "panic-window-percentage text",
        "Service",
        ann(panic_window_percentage="ten"),
        errs((A + "panic-window-percentage", "invalid value: ten")),
    ),
    (
        "panic-threshold-percentage low",
        "Service",
        ann(panic_threshold_percentage="100"),
        errs((A + "panic-threshold-percentage", "expected 110 <= 100 <= 1000")),
    ),
    (
        "panic-threshold-percentage high",
        "Service",
        ann(panic_threshold_percentage="1001"),
        errs((A + "panic-threshold-percentage", "expected 110 <= 1001 <= 1000")),
    ),
    ("metric cpu", "Service", ann(metric="cpu"), errs((A + "metric", "invalid value: cpu"))),
    (
        "activation-scale 1",
        "Service",
        ann(activation_scale="1"),
        errs((A + "activation-scale", "activation-scale=1 must be greater than 1")),
    ),
    (
        "activation-scale below min-scale",
        "Service",
        ann(min_scale="3", activation_scale="2"),
        errs((A + "activation-scale", "min-scale=3 is greater than activation-scale=2")),
    ),
    (
        "activation-scale above max-scale",
        "Service",
        ann(max_scale="2", activation_scale="3"),
        errs((A + "activation-scale", "max-scale=2 is less than activation-scale=3")),
    ),
    (
        "activation-scale text",
        "Service",
        ann(activation_scale="two"),
        errs((A + "activation-scale", "invalid value: two")),
    ),
    (
        "scale-down-delay negative",
        "Service",
        ann(scale_down_delay="-1s"),
        errs((A + "scale-down-delay", "expected 0s <= -1s <= 1h0m0s")),
    ),
    (
        "scale-down-delay too long",
        "Service",
        ann(scale_down_delay="2h"),
        errs((A + "scale-down-delay", "expected 0s <= 2h <= 1h0m0s")),
    ),
    (
        "scale-down-delay sub-second",
        "Service",
        ann(scale_down_delay="1.5s"),
        errs((A + "scale-down-delay", "must be specified with at most second precision")),
    ),
    (
        "scale-down-delay garbage",
        "Service",
        ann(scale_down_delay="soon"),
        errs((A + "scale-down-delay", "invalid value: soon")),
    ),
    (
        "metric-aggregation-algorithm unknown",
        "Service",
        ann(metric_aggregation_algorithm="median"),
        errs((A + "metric-aggregation-algorithm", "invalid value: median")),
    ),
    (
        "scale-to-zero-pod-retention-period too long",
        "Service",
        ann(scale_to_zero_pod_retention_period="2h"),
        errs((A + "scale-to-zero-pod-retention-period", "expected 0s <= 2h <= 1h0m0s")),
    ),
    (
        "annotations on a Configuration template",
        "Configuration",
        ann(min_scale="5", max_scale="1"),
        errs((A + "max-scale", "max-scale=1 is less than min-scale=5")),
    ),
    (
        "annotations on Revision metadata",
        "Revision",
        {"metadata.annotations.autoscaling.knative.dev/window": "1s"},
        errs(
            ("metadata.annotations.autoscaling.knative.dev/window", "expected 6s <= 1s <= 1h0m0s")
        ),
    ),
]

PASSING = [
    ("valid Service", "Service", {}),
    ("valid Configuration", "Configuration", {}),
    ("valid Revision", "Revision", {}),
    ("valid Route", "Route", {}),
    ("apiVersion v1", "Service", {"apiVersion": "serving.knative.dev/v1"}),
    ("name of 63 chars", "Route", {"metadata.name": "a" * 63}),
    ("name with digits and dashes", "Service", {"metadata.name": "my-app-2"}),
    ("namespace", "Service", {"metadata.namespace": "team-a"}),
    ("other annotations on Service", "Service", {"metadata.annotations.example.com/owner": "me"}),
    ("template name with prefix", "Service", {"spec.template.metadata.name": "hello-v1"}),
    ("image only", "Service", {f"{C}.command": DROP}),
    ("command only", "Service", {f"{C}.image": DROP}),
    (
        "ordinary env",
        "Service",
        {f"{C}.env": [{"name": "PORTS", "value": "1"}, {"name": "K_SERVICE_X"}]},
    ),
    (
        "port 8080 named h2c",
        "Service",
        {f"{C}.ports": [{"name": "h2c", "containerPort": 8080, "protocol": "TCP"}]},
    ),
    ("port named http1", "Service", {f"{C}.ports": [{"name": "http1", "containerPort": 8081}]}),
    ("port 0 (default)", "Service", {f"{C}.ports": [{"containerPort": 0}]}),
    ("containerConcurrency 1000", "Service", {f"{T}.containerConcurrency": 1000}),
    ("containerConcurrency as proto-JSON string", "Service", {f"{T}.containerConcurrency": "10"}),
    ("timeoutSeconds 600", "Service", {f"{T}.timeoutSeconds": 600}),
    ("timeoutSeconds 0", "Revision", {"spec.timeoutSeconds": 0}),
    (
        "start and idle timeouts within timeout",
        "Service",
        {
            f"{T}.timeoutSeconds": 100,
            f"{T}.responseStartTimeoutSeconds": 100,
            f"{T}.idleTimeoutSeconds": 0,
        },
    ),
    (
        "periodic readiness probe",
        "Service",
        {
            f"{C}.readinessProbe": {
                "httpGet": {"path": "/healthz"},
                "periodSeconds": 5,
                "timeoutSeconds": 1,
                "failureThreshold": 3,
                "successThreshold": 1,
            }
        },
    ),
    ("liveness probe", "Service", {f"{C}.livenessProbe": {"tcpSocket": {}}}),
    (
        "split traffic with tags",
        "Service",
        {
            "spec.traffic": [
                {"latestRevision": True, "percent": 60, "tag": "latest"},
                {
                    "revisionName": "hello-00001",
                    "latestRevision": False,
                    "percent": 40,
                    "tag": "v1",
                },
                {"revisionName": "hello-00002", "latestRevision": False, "tag": "v2"},
            ]
        },
    ),
    (
        "route to a revision and a configuration",
        "Route",
        {
            "spec.traffic": [
                {"revisionName": "hello-00001", "latestRevision": False, "percent": 50},
                {
                    "configurationName": "hello",
                    "latestRevision": True,
                    "percent": 50,
                    "tag": "next",
                },
            ]
        },
    ),
    (
        "every known annotation",
        "Service",
        ann(
            **{"class": "kpa.autoscaling.knative.dev"},
            metric="rps",
            target="0.01",
            target_utilization_percentage="70",
            target_burst_capacity="-1",
            window="1m30s",
            panic_window_percentage="10",
            panic_threshold_percentage="200",
            min_scale="1",
            max_scale="3",
            initial_scale="2",
            scale_down_delay="15m",
            activation_scale="2",
            metric_aggregation_algorithm="weighted-exponential",
            scale_to_zero_pod_retention_period="1.5s",
        ),
    ),
    (
        "alias spellings",
        "Service",
        ann(
            minScale="1",
            maxScale="3",
            initialScale="1",
            scaleDownDelay="0s",
            targetBurstCapacity="0",
        ),
    ),
    ("max-scale equal to min-scale", "Service", ann(min_scale="3", max_scale="3")),
    ("max-scale 0 is unbounded", "Service", ann(min_scale="5", max_scale="0")),
    (
        "metric concurrency, algorithm linear",
        "Service",
        ann(metric="concurrency", metric_aggregation_algorithm="linear"),
    ),
    ("window bounds", "Service", ann(window="6s")),
    ("window upper bound", "Service", ann(window="1h")),
    ("target-burst-capacity 211", "Service", ann(target_burst_capacity="211")),
    (
        "annotations on Revision metadata",
        "Revision",
        {"metadata.annotations.autoscaling.knative.dev/min-scale": "2"},
    ),
]


@pytest.mark.parametrize(
    ("kind", "edits", "expected"), [row[1:] for row in FAILING], ids=[row[0] for row in FAILING]
)
def test_rule_rejects(kind, edits, expected):
    assert validate(make(kind, edits)) == expected


@pytest.mark.parametrize(
    ("kind", "edits"), [row[1:] for row in PASSING], ids=[row[0] for row in PASSING]
)
def test_rule_accepts(kind, edits):
    assert validate(make(kind, edits)) == []


# ---- rules that need settings or an old object ----


def test_initial_scale_zero_allowed_by_setting():
    obj = make("Service", ann(initial_scale="0"))
    assert validate(obj, settings=AdmissionSettings(allow_zero_initial_scale=True)) == []


def test_max_revision_timeout_setting():
    obj = make("Service", {f"{T}.timeoutSeconds": 900})
    assert validate(obj, settings=AdmissionSettings(max_revision_timeout_s=900)) == []
    assert validate(obj, settings=AdmissionSettings(max_revision_timeout_s=899)) == errs(
        (f"{T}.timeoutSeconds", "expected 0 <= 900 <= 899")
    )


@pytest.mark.parametrize(
    ("max_scale", "expected"),
    [
        ("11", errs((A + "max-scale", "expected 1 <= 11 <= 10"))),
        ("0", errs((A + "max-scale", "max-scale=0 (unlimited), must be less than 10"))),
        ("10", []),
    ],
)
def test_max_scale_limit_setting(max_scale, expected):
    obj = make("Service", ann(max_scale=max_scale))
    assert validate(obj, settings=AdmissionSettings(max_scale_limit=10)) == expected


def test_template_change_without_name_change_rejected():
    old = make("Service", {"spec.template.metadata.name": "hello-v1"})
    new = make(
        "Service", {"spec.template.metadata.name": "hello-v1", f"{C}.image": "ghcr.io/acme/hello:2"}
    )
    assert validate(new, old, "UPDATE") == errs(
        (
            "spec.template.metadata.name",
            "Saw the following changes without a name change (-old +new) "
            '(spec.template.spec.containers[0].image: -"ghcr.io/acme/hello:1" +"ghcr.io/acme/hello:2")',
        )
    )


@pytest.mark.parametrize(
    "new_edits",
    [
        {
            "spec.template.metadata.name": "hello-v2",
            f"{C}.image": "ghcr.io/acme/hello:2",
        },  # name changed
        {"spec.template.metadata.name": "hello-v1"},  # nothing changed
        {
            "spec.template.metadata.name": "hello-v1",
            "spec.traffic.0.tag": "current",
        },  # outside the template
    ],
    ids=["renamed", "unchanged", "traffic only"],
)
def test_template_name_change_accepted(new_edits):
    old = make("Service", {"spec.template.metadata.name": "hello-v1"})
    assert validate(make("Service", new_edits), old, "UPDATE") == []


def test_template_change_without_user_name_accepted():
    old = make("Configuration")
    new = make("Configuration", {f"{C}.image": "ghcr.io/acme/hello:2"})
    assert validate(new, old, "UPDATE") == []


def test_template_annotation_change_needs_new_name():
    old = make("Configuration", {"spec.template.metadata.name": "hello-a"})
    new = make("Configuration", {"spec.template.metadata.name": "hello-a", **ann(min_scale="1")})
    assert validate(new, old, "UPDATE") == errs(
        (
            "spec.template.metadata.name",
            "Saw the following changes without a name change (-old +new) "
            '(spec.template.metadata.annotations: -(unset) +{"autoscaling.knative.dev/min-scale": "1"})',
        )
    )


def test_revision_spec_is_immutable():
    old = make("Revision")
    new = make("Revision", {"spec.containerConcurrency": 5})
    assert validate(new, old, "UPDATE") == errs(
        ("spec", "Immutable fields changed (-old +new) (spec.containerConcurrency: -0 +5)")
    )


def test_revision_metadata_may_change():
    old = make("Revision")
    new = make("Revision", {"metadata.labels": {"serving.knative.dev/routingState": "active"}})
    assert validate(new, old, "UPDATE") == []


def test_immutable_message_lists_at_most_three_changes():
    old = make("Revision")
    new = make(
        "Revision",
        {
            "spec.containerConcurrency": 5,
            "spec.timeoutSeconds": 10,
            "spec.idleTimeoutSeconds": 1,
            "spec.containers.0.image": "x",
        },
    )
    [error] = validate(new, old, "UPDATE")
    assert error.path == "spec"
    assert error.message.startswith("Immutable fields changed (-old +new) (")
    assert error.message.endswith("; and 1 more)")


def test_update_without_old_skips_update_rules():
    new = make("Revision", {"spec.containerConcurrency": 5})
    assert validate(new, None, "UPDATE") == []


def test_delete_is_always_allowed():
    assert validate({"kind": "Nonsense"}, None, "DELETE") == []


def test_unknown_operation_rejected():
    assert validate(make("Service"), None, "CONNECT") == errs(
        ("operation", "invalid value: CONNECT")
    )


def test_not_an_object_rejected():
    assert validate([], None, "CREATE") == errs(("", "expected an object"))


def test_all_errors_reported_at_once():
    obj = make(
        "Service",
        {
            "metadata.name": "Bad",
            f"{C}.env": [{"name": "PORT"}],
            f"{C}.ports": [{"containerPort": 9090}],
            f"{T}.containerConcurrency": 2000,
            "spec.traffic.0.percent": 50,
            **ann(min_scale="3", max_scale="2", window="1s"),
        },
    )
    assert validate(obj) == errs(
        ("metadata.name", NOT_DNS1035),
        (A + "max-scale", "max-scale=2 is less than min-scale=3"),
        (A + "window", "expected 6s <= 1s <= 1h0m0s"),
        (f"{C}.env[0].name", '"PORT" is a reserved environment variable'),
        (f"{C}.ports[0].containerPort", "invalid value: 9090 is a reserved port"),
        (f"{T}.containerConcurrency", "expected 0 <= 2000 <= 1000"),
        ("spec.traffic", "Traffic targets sum to 50, want 100"),
    )


def test_undefaulted_service_without_traffic_fails_the_sum():
    # validate() expects defaulted input, as Knative's webhook defaults first.
    obj = make("Service", defaulted=False)
    assert FieldError("spec.traffic", "Traffic targets sum to 0, want 100") in validate(obj)


def test_validate_does_not_modify_its_input():
    obj = make("Service", {"spec.traffic.0.percent": 50})
    before = copy.deepcopy(obj)
    validate(obj, copy.deepcopy(obj), "UPDATE")
    assert obj == before


def test_field_error_renders_path_then_message():
    assert str(FieldError("spec.traffic", "Traffic targets sum to 90, want 100")) == (
        "spec.traffic: Traffic targets sum to 90, want 100"
    )
    assert str(FieldError("", "expected an object")) == "expected an object"
