"""Knative's validation of Serving resources, as a pure function over the dict form.

Every rule appends to one list, so a caller sees all violations at once. Messages are
Knative's (knative.dev/serving pkg/apis/serving, knative.dev/pkg apis.FieldError); where
Knative puts an explanation in an error's Details, Ebb appends it in parentheses.
"""

from __future__ import annotations

import json
from typing import Any

from ebb.common.goparse import INT32_MAX
from ebb.webhook import autoscaling
from ebb.webhook.model import API_VERSION, DEFAULT_SETTINGS, KINDS, AdmissionSettings, FieldError
from ebb.webhook.names import dns1035_label_errors, dns1123_label_errors, go_list, is_qualified_name
from ebb.webhook.values import as_dict, as_int, as_list, as_str

MISSING = "missing field(s)"
DISALLOWED = "must not set the field(s)"
GOT_NEITHER = "expected exactly one, got neither"
GOT_BOTH = "expected exactly one, got both"

RESERVED_ENV_VARS = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
# queue-proxy's HTTP/1, H2C, admin and HTTPS ports; autoscaling and user metrics ports.
RESERVED_PORTS = frozenset({8012, 8013, 8022, 8112, 9090, 9091})
RESERVED_CONTAINER_NAMES = frozenset({"queue-proxy"})
PORT_NAMES = ("h2c", "http1", "")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
SUPPORTED_PROBE_HANDLERS = ("httpGet", "tcpSocket")
MAX_DIFF_LINES = 3


def validate(
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    operation: str = "CREATE",
    *,
    settings: AdmissionSettings = DEFAULT_SETTINGS,
) -> list[FieldError]:
    """Every rule `obj` violates, each with its field path; empty when it may be stored.

    `obj` should already be defaulted (as Knative's webhook defaults before it validates).
    `old` is the stored object on UPDATE; without it the update-only rules (revision spec
    immutability, template name change) cannot be checked and are skipped. DELETE is
    always allowed.
    """
    op = (operation or "CREATE").upper()
    if op == "DELETE":
        return []
    if op not in ("CREATE", "UPDATE"):
        return [FieldError("operation", f"invalid value: {operation}")]
    if not isinstance(obj, dict):
        return [FieldError("", "expected an object")]
    kind = obj.get("kind")
    if not kind:
        return [FieldError("kind", MISSING)]
    if kind not in KINDS:
        return [FieldError("kind", f"invalid value: {kind} (expected one of {', '.join(KINDS)})")]

    errs: list[FieldError] = []
    api_version = obj.get("apiVersion")
    if api_version and api_version != API_VERSION:
        errs.append(
            FieldError("apiVersion", f"invalid value: {api_version} (expected {API_VERSION})")
        )
    meta = as_dict(obj.get("metadata"))
    errs += _object_meta(meta, "metadata", kind=kind, settings=settings)
    spec = as_dict(obj.get("spec"))
    old = old if op == "UPDATE" and isinstance(old, dict) else None

    if kind in ("Service", "Configuration"):
        template = as_dict(spec.get("template"))
        errs += _template(
            template, "spec.template", parent_name=as_str(meta.get("name")), settings=settings
        )
        if old is not None:
            old_template = as_dict(as_dict(old.get("spec")).get("template"))
            errs += _verify_name_change(template, old_template, "spec.template")
    if kind == "Service":
        errs += _traffic(spec.get("traffic"), "spec.traffic", in_service=True)
    elif kind == "Route":
        errs += _traffic(spec.get("traffic"), "spec.traffic", in_service=False)
    elif kind == "Revision":
        if old is None:
            errs += _revision_spec(spec, "spec", settings)
        else:
            # Knative checks a revision's spec once, at creation; afterwards it only may
            # not change (so a stricter cluster setting never blocks a metadata update).
            old_spec = as_dict(old.get("spec"))
            if old_spec != spec:
                errs.append(
                    FieldError(
                        "spec",
                        "Immutable fields changed (-old +new)"
                        + _describe_changes(old_spec, spec, "spec"),
                    )
                )
    return errs


# ---- metadata ----


def _object_meta(
    meta: dict, path: str, *, kind: str, settings: AdmissionSettings
) -> list[FieldError]:
    errs: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errs.append(FieldError(f"{path}.name", MISSING))
    elif not isinstance(name, str):
        errs.append(FieldError(f"{path}.name", f"invalid value: {name}"))
    elif "." in name:
        errs.append(
            FieldError(
                f"{path}.name", "Invalid resource name: special character . must not be present"
            )
        )
    elif len(name) > 63:
        errs.append(
            FieldError(
                f"{path}.name", "Invalid resource name: length must be no more than 63 characters"
            )
        )
    elif problems := dns1035_label_errors(name):
        # Names become host labels (NAME.NAMESPACE.localhost) and revision names.
        errs.append(
            FieldError(f"{path}.name", f"invalid value: not a DNS 1035 label: {go_list(problems)}")
        )
    if meta.get("generateName"):
        errs.append(
            FieldError(f"{path}.generateName", f"{DISALLOWED} (Ebb does not support generateName)")
        )
    namespace = meta.get("namespace")
    if namespace:
        problems = (
            dns1123_label_errors(namespace) if isinstance(namespace, str) else ["not a string"]
        )
        if problems:
            errs.append(
                FieldError(
                    f"{path}.namespace", f"invalid value: not a DNS 1123 label: {go_list(problems)}"
                )
            )
    annotations = _string_map(meta.get("annotations"))
    if kind == "Revision":
        errs += autoscaling.validate_annotations(annotations, f"{path}.annotations", settings)
    else:
        errs += autoscaling.no_autoscaling_annotations(annotations, f"{path}.annotations")
    return errs


def _string_map(value: Any) -> dict[str, str]:
    return {k: v for k, v in as_dict(value).items() if isinstance(k, str) and isinstance(v, str)}


# ---- revision template and spec ----


def _template(
    template: dict, path: str, *, parent_name: str, settings: AdmissionSettings
) -> list[FieldError]:
    errs: list[FieldError] = []
    meta = as_dict(template.get("metadata"))
    if meta.get("generateName"):
        errs.append(
            FieldError(
                f"{path}.metadata.generateName", f"{DISALLOWED} (Ebb does not support generateName)"
            )
        )
    errs += autoscaling.validate_annotations(
        _string_map(meta.get("annotations")), f"{path}.metadata.annotations", settings
    )
    name = meta.get("name")
    if name:
        name = str(name)
        prefix = parent_name + "-"
        if problems := dns1035_label_errors(name):
            errs.append(
                FieldError(
                    f"{path}.metadata.name",
                    f"invalid value: not a DNS 1035 label: {go_list(problems)}",
                )
            )
        elif not name.startswith(prefix):
            errs.append(
                FieldError(
                    f"{path}.metadata.name", f'invalid value: "{name}" must have prefix "{prefix}"'
                )
            )
    errs += _revision_spec(as_dict(template.get("spec")), f"{path}.spec", settings)
    return errs


def _verify_name_change(template: dict, old_template: dict, path: str) -> list[FieldError]:
    """A user-chosen revision name must change whenever the template changes."""
    name = as_dict(template.get("metadata")).get("name")
    if not name or name != as_dict(old_template.get("metadata")).get("name"):
        return []
    if template == old_template:
        return []
    return [
        FieldError(
            f"{path}.metadata.name",
            "Saw the following changes without a name change (-old +new)"
            + _describe_changes(old_template, template, path),
        )
    ]


def _revision_spec(spec: dict, path: str, settings: AdmissionSettings) -> list[FieldError]:
    errs: list[FieldError] = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        errs.append(FieldError(f"{path}.containers", MISSING))
        containers = []
    elif len(containers) > 1:
        # Ebb runs one app process per instance (plus its queue): no sidecars.
        errs.append(
            FieldError(
                f"{path}.containers",
                f"multi-container is off, but found {len(containers)} containers",
            )
        )
    with_ports = [i for i, c in enumerate(containers) if as_list(as_dict(c).get("ports"))]
    port_count = sum(len(as_list(as_dict(containers[i]).get("ports"))) for i in with_ports)
    if port_count > 1:
        where = f"containers[{with_ports[0]}]" if len(with_ports) == 1 else "containers[*]"
        errs.append(FieldError(f"{path}.{where}.ports", "more than one container port is set"))
    for i, container in enumerate(containers):
        errs += _container(container, f"{path}.containers[{i}]")

    max_timeout = settings.max_revision_timeout_s
    timeout = _int_field(spec, "timeoutSeconds", path, errs)
    if timeout is not None and timeout != 0 and not 0 <= timeout <= max_timeout:
        errs.append(
            FieldError(f"{path}.timeoutSeconds", f"expected 0 <= {timeout} <= {max_timeout}")
        )
    # The start and idle limits only make sense within the request's overall limit.
    if timeout is None or timeout == 0:
        upper = settings.revision_timeout_s
    else:
        upper = min(timeout, max_timeout) if timeout > 0 else max_timeout
    for field in ("responseStartTimeoutSeconds", "idleTimeoutSeconds"):
        value = _int_field(spec, field, path, errs)
        if value is not None and not 0 <= value <= upper:
            errs.append(FieldError(f"{path}.{field}", f"expected 0 <= {value} <= {upper}"))
    cc_max = settings.container_concurrency_max
    concurrency = _int_field(spec, "containerConcurrency", path, errs)
    if concurrency is not None and not 0 <= concurrency <= cc_max:
        errs.append(
            FieldError(f"{path}.containerConcurrency", f"expected 0 <= {concurrency} <= {cc_max}")
        )
    return errs


def _int_field(obj: dict, field: str, path: str, errs: list[FieldError]) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    number = as_int(value)
    if number is None:
        errs.append(FieldError(f"{path}.{field}", f"invalid value: {value}"))
    return number


def _container(container: Any, path: str) -> list[FieldError]:
    if not container or not isinstance(container, dict):
        return [FieldError(path, MISSING)]
    errs: list[FieldError] = []
    name = container.get("name")
    if name in RESERVED_CONTAINER_NAMES:
        errs.append(FieldError(f"{path}.name", f'"{name}" is a reserved container name'))
    for j, env in enumerate(as_list(container.get("env"))):
        env_name = as_dict(env).get("name")
        if not env_name:
            errs.append(FieldError(f"{path}.env[{j}].name", MISSING))
        elif env_name in RESERVED_ENV_VARS:
            errs.append(
                FieldError(
                    f"{path}.env[{j}].name", f'"{env_name}" is a reserved environment variable'
                )
            )
    # Knative requires an image. Ebb's local mode runs `command` instead, so either will do.
    if not container.get("image") and not as_list(container.get("command")):
        errs.append(FieldError(path, "expected image or command, got neither"))
    ports = as_list(container.get("ports"))
    if ports:
        errs += _port(as_dict(ports[0]), f"{path}.ports[0]")
    if container.get("readinessProbe") is not None:
        errs += _readiness_probe(as_dict(container["readinessProbe"]), f"{path}.readinessProbe")
    if container.get("livenessProbe") is not None:
        errs += _probe(as_dict(container["livenessProbe"]), f"{path}.livenessProbe")
    return errs


def _port(port: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    number = as_int(port.get("containerPort", 0))
    if number is None:
        errs.append(
            FieldError(f"{path}.containerPort", f"invalid value: {port.get('containerPort')}")
        )
    elif number in RESERVED_PORTS:
        errs.append(
            FieldError(f"{path}.containerPort", f"invalid value: {number} is a reserved port")
        )
    elif not 0 <= number <= 65535:
        errs.append(FieldError(f"{path}.containerPort", f"expected 0 <= {number} <= 65535"))
    protocol = port.get("protocol") or ""
    if protocol not in ("", "TCP"):
        errs.append(FieldError(f"{path}.protocol", f"invalid value: {protocol}"))
    name = port.get("name") or ""
    if name not in PORT_NAMES:
        errs.append(
            FieldError(
                f"{path}.name",
                f"Port name {name} is not allowed (Name must be empty, or one of: 'h2c', 'http1')",
            )
        )
    return errs


def _probe(probe: dict, path: str) -> list[FieldError]:
    handlers = [h for h in PROBE_HANDLERS if probe.get(h) is not None]
    errs = [
        FieldError(f"{path}.{h}", f"{DISALLOWED} (Ebb probes with httpGet or tcpSocket)")
        for h in handlers
        if h not in SUPPORTED_PROBE_HANDLERS
    ]
    if not handlers:
        errs.append(
            FieldError(", ".join(f"{path}.{h}" for h in SUPPORTED_PROBE_HANDLERS), GOT_NEITHER)
        )
    elif len(handlers) > 1:
        errs.append(FieldError(", ".join(f"{path}.{h}" for h in handlers), GOT_BOTH))
    return errs


def _readiness_probe(probe: dict, path: str) -> list[FieldError]:
    errs = _probe(probe, path)

    def value(field: str) -> int:
        number = as_int(probe.get(field, 0))
        return 0 if number is None else number

    def bounds(field: str, low: int) -> None:
        if value(field) < low:
            errs.append(
                FieldError(f"{path}.{field}", f"expected {low} <= {value(field)} <= {INT32_MAX}")
            )

    bounds("periodSeconds", 0)
    bounds("initialDelaySeconds", 0)
    bounds("successThreshold", 1)
    # periodSeconds 0 selects Knative's aggressive start-up probing, which has its own
    # timing: the per-attempt knobs do not apply.
    if value("periodSeconds") == 0:
        if value("failureThreshold") != 0:
            errs.append(
                FieldError(
                    f"{path}.failureThreshold",
                    "failureThreshold is disallowed when periodSeconds is zero",
                )
            )
        if value("timeoutSeconds") != 0:
            errs.append(
                FieldError(
                    f"{path}.timeoutSeconds",
                    "timeoutSeconds is disallowed when periodSeconds is zero",
                )
            )
    else:
        bounds("timeoutSeconds", 1)
        bounds("failureThreshold", 1)
    return errs


# ---- traffic ----


def _traffic(traffic: Any, path: str, *, in_service: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    total = 0
    seen_tags: set[str] = set()
    for i, target in enumerate(as_list(traffic)):
        at = f"{path}[{i}]"
        target = as_dict(target)
        errs += _traffic_target(target, at, in_service=in_service)
        percent = target.get("percent")
        if percent is not None:
            number = as_int(percent)
            if number is None:
                errs.append(FieldError(f"{at}.percent", f"invalid value: {percent}"))
            else:
                total += number
                if not 0 <= number <= 100:
                    errs.append(FieldError(f"{at}.percent", f"expected 0 <= {number} <= 100"))
        tag = target.get("tag")
        if not tag:
            continue
        tag = str(tag)
        if problems := dns1035_label_errors(tag):
            errs.append(
                FieldError(f"{at}.tag", f"invalid value: not a DNS 1035 label: {go_list(problems)}")
            )
        if tag in seen_tags:
            errs.append(FieldError(f"{at}.tag", f'Multiple definitions for "{tag}"'))
        seen_tags.add(tag)
    if total != 100:
        errs.append(FieldError(path, f"Traffic targets sum to {total}, want 100"))
    return errs


def _traffic_target(target: dict, at: str, *, in_service: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    revision = as_str(target.get("revisionName"))
    configuration = as_str(target.get("configurationName"))
    latest = target.get("latestRevision")
    if latest is not None:
        pinned = revision != ""
        if pinned == bool(latest):
            # The two ways to choose a revision must agree: pinned by name, or floating.
            errs.append(
                FieldError(
                    f"{at}.latestRevision",
                    f'may not set revisionName "{revision}" when latestRevision is {str(bool(latest)).lower()}',
                )
            )
    if in_service and configuration:
        # Inside a Service the configuration is the Service's own.
        errs.append(FieldError(f"{at}.configurationName", DISALLOWED))
    elif revision and configuration:
        errs.append(FieldError(f"{at}.revisionName, {at}.configurationName", GOT_BOTH))
    elif revision:
        if not is_qualified_name(revision):
            errs.append(FieldError(f"{at}.revisionName", f'invalid key name "{revision}"'))
    elif configuration:
        if not is_qualified_name(configuration):
            errs.append(
                FieldError(f"{at}.configurationName", f'invalid key name "{configuration}"')
            )
    elif not in_service:
        errs.append(FieldError(f"{at}.revisionName, {at}.configurationName", GOT_NEITHER))
    if target.get("url"):
        errs.append(FieldError(f"{at}.url", DISALLOWED))
    return errs


# ---- diffs for the update rules ----


def _describe_changes(old: Any, new: Any, path: str) -> str:
    """A short `(-old +new)` listing of what differs, for the immutability messages."""
    lines = list(_changes(old, new, path))
    if not lines:
        return ""
    shown = lines[:MAX_DIFF_LINES]
    more = f"; and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    return " (" + "; ".join(shown) + more + ")"


def _changes(old: Any, new: Any, path: str):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _changes(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _changes(a, b, f"{path}[{i}]")
    elif old != new or type(old) is not type(new):
        yield f"{path}: -{_show(old)} +{_show(new)}"


class _Absent:
    def __repr__(self) -> str:
        return "(unset)"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(unset)"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
