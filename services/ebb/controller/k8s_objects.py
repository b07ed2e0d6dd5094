"""Kubernetes objects of the cluster backend, as plain dicts (pure: values in, values out).

Names follow Knative Serving so `kubectl` habits carry over: a revision `hello-00001` runs
as the Deployment `hello-00001-deployment`, whose pods carry the `user-container` and the
`queue-proxy` sidecar, selected by the Service `hello-00001-private`. Resources convert
between the protobuf messages and the custom resources' JSON with `json_format`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import descriptor, json_format

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.common.settings import SettingsError, parse_json_object, parse_port
from ebb.controller.reconcile import InstanceView
from ebb.controller.resources import API_VERSION, KINDS, Object
from ebb.controller.runtime import Address, InstanceSpec, queue_drain_max_s, revision_queue_args

GROUP = "serving.knative.dev"
VERSION = "v1"
PLURALS = {"Service": "services", "Configuration": "configurations", "Revision": "revisions", "Route": "routes"}

# Held on every Revision until the controller has deleted its Deployment and Service.
FINALIZER = "serving.knative.dev/ebb-controller"

LABEL_REVISION = "serving.knative.dev/revision"
LABEL_REVISION_UID = "serving.knative.dev/revisionUID"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"  # set by the EndpointSlice controller
ANNOTATION_POD_TEMPLATE_HASH = "ebb.dev/pod-template-hash"
ANNOTATION_EVER_READY = "ebb.dev/ever-ready"

USER_CONTAINER = "user-container"
QUEUE_CONTAINER = "queue-proxy"
USER_PORT_NAME = "user-port"
QUEUE_PORT_NAME = "queue-port"
QUEUE_ADMIN_PORT_NAME = "http-queueadm"
# Knative's queue-proxy serves its request metrics on 9091 under this port name.
QUEUE_METRICS_PORT_NAME = "http-usermetric"
DEFAULT_QUEUE_METRICS_PORT = 9091
# Read by Prometheus's common `kubernetes-pods` scrape config (and kube-prometheus-stack's
# PodMonitor examples): the queue's /metrics on a fixed, known port of every revision pod.
PROMETHEUS_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
SERVICE_PORT_NAME = "http"
DEFAULT_USER_PORT = 8080  # Knative's default when the container names no port
PROGRESS_DEADLINE_S = 600  # Knative's default progress-deadline
APP_STOP_GRACE_S = 10

# ----------------------------------------------------------------- proto <-> JSON

_INT64_TYPES = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def _int64_to_int(desc: descriptor.Descriptor, value: dict) -> None:
    """proto3 JSON writes 64-bit integers as strings; the CRD schemas want integers."""
    if desc.full_name.startswith("google.protobuf."):
        return  # well-known types (Timestamp) have their own JSON form
    for fd in desc.fields:
        if fd.json_name not in value:
            continue
        item = value[fd.json_name]
        if fd.type in _INT64_TYPES:
            value[fd.json_name] = [int(v) for v in item] if isinstance(item, list) else int(item)
        elif fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                if value_fd.type in _INT64_TYPES:
                    value[fd.json_name] = {k: int(v) for k, v in item.items()}
                elif value_fd.message_type is not None:
                    for v in item.values():
                        _int64_to_int(value_fd.message_type, v)
            elif isinstance(item, list):
                for v in item:
                    _int64_to_int(fd.message_type, v)
            elif isinstance(item, dict):
                _int64_to_int(fd.message_type, item)


def to_k8s(obj) -> dict:
    """A resource message as the custom resource's JSON (Knative's field names)."""
    out = json_format.MessageToDict(obj)
    _int64_to_int(obj.DESCRIPTOR, out)
    return out


def from_k8s(kind: str, raw: Mapping) -> Object:
    """A custom resource's JSON as a message; fields Ebb does not model are dropped."""
    return json_format.ParseDict(raw, KINDS[kind](), ignore_unknown_fields=True)


_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")


def resource_body(obj: Object, *, finalizers: Iterable[str] = ()) -> dict:
    """The body to create a custom resource: no status, no server-owned metadata."""
    body = to_k8s(obj)
    body.pop("status", None)
    body["apiVersion"] = API_VERSION
    body["kind"] = type(obj).__name__
    meta = body.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    wanted = list(meta.get("finalizers", []))
    wanted += [f for f in finalizers if f not in wanted]
    if wanted:
        meta["finalizers"] = wanted
    body.setdefault("spec", {})
    return body


def replacement_body(current: Mapping, obj: Object, *, finalizers: Iterable[str] = ()) -> dict:
    """The body to replace a stored custom resource with `obj`'s spec, labels, annotations and
    owner references, keeping everything else the server holds (resourceVersion included, so
    the write fails with 409 Conflict if the object changed meanwhile)."""
    new = to_k8s(obj)
    body = copy.deepcopy(dict(current))
    body.pop("status", None)  # the status subresource owns it; the server ignores it here
    body["spec"] = new.get("spec", {})
    meta = body.setdefault("metadata", {})
    new_meta = new.get("metadata", {})
    for key in ("labels", "annotations"):
        if new_meta.get(key):
            meta[key] = new_meta[key]
        else:
            meta.pop(key, None)
    if new_meta.get("ownerReferences"):
        meta["ownerReferences"] = new_meta["ownerReferences"]
    held = list(meta.get("finalizers", []))
    held += [f for f in finalizers if f not in held]
    if held:
        meta["finalizers"] = held
    return body


def status_body(current: Mapping, obj: Object) -> dict:
    """The body for the status subresource: the stored object with `obj`'s status."""
    body = copy.deepcopy(dict(current))
    body["status"] = to_k8s(obj).get("status", {})
    return body


def finalizers_patch(current: Mapping, remove: str) -> dict:
    """A JSON merge patch dropping one finalizer; the resourceVersion makes it conditional."""
    meta = current.get("metadata", {})
    return {
        "metadata": {
            "finalizers": [f for f in meta.get("finalizers", []) if f != remove],
            "resourceVersion": meta.get("resourceVersion", ""),
        }
    }


# ----------------------------------------------------------------- the queue sidecar


@dataclass(frozen=True)
class QueueSidecar:
    """The `queue-proxy` container the controller adds to every revision pod."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    http_port: int = 8013
    admin_port: int = 8022
    metrics_port: int = DEFAULT_QUEUE_METRICS_PORT
    resources: dict = field(default_factory=dict, hash=False)
    security_context: dict = field(default_factory=dict, hash=False)
    extra_args: tuple[str, ...] = ()


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def queue_sidecar_from_env(environ: Mapping[str, str]) -> QueueSidecar:
    """The sidecar from the EBB_QUEUE_SIDECAR_* variables the Helm chart sets."""
    image = environ.get("EBB_QUEUE_SIDECAR_IMAGE", "").strip()
    if not image:
        raise SettingsError("EBB_QUEUE_SIDECAR_IMAGE is required with the kubernetes backend")
    policy = environ.get("EBB_QUEUE_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent") or "IfNotPresent"
    if policy not in PULL_POLICIES:
        raise SettingsError(
            f"EBB_QUEUE_SIDECAR_IMAGE_PULL_POLICY = {policy!r}, must be one of {', '.join(PULL_POLICIES)}"
        )
    ports: dict[str, int] = {}
    for key, default in (
        ("EBB_QUEUE_SIDECAR_HTTP_PORT", "8013"),
        ("EBB_QUEUE_SIDECAR_ADMIN_PORT", "8022"),
        ("EBB_QUEUE_SIDECAR_METRICS_PORT", str(DEFAULT_QUEUE_METRICS_PORT)),
    ):
        ports[key] = parse_port(key, environ.get(key, default) or default)
        if ports[key] == 0:
            raise SettingsError(f"{key} = 0, must be in 1..65535")
        for other, port in ports.items():
            if other != key and port == ports[key]:
                raise SettingsError(f"{key} must differ from {other}")
    return QueueSidecar(
        image=image,
        image_pull_policy=policy,
        http_port=ports["EBB_QUEUE_SIDECAR_HTTP_PORT"],
        admin_port=ports["EBB_QUEUE_SIDECAR_ADMIN_PORT"],
        metrics_port=ports["EBB_QUEUE_SIDECAR_METRICS_PORT"],
        resources=parse_json_object("EBB_QUEUE_SIDECAR_RESOURCES", environ.get("EBB_QUEUE_SIDECAR_RESOURCES", "")),
        security_context=parse_json_object(
            "EBB_QUEUE_SIDECAR_SECURITY_CONTEXT", environ.get("EBB_QUEUE_SIDECAR_SECURITY_CONTEXT", "")
        ),
    )


# ----------------------------------------------------------------- revision -> workload


def deployment_name(revision: str) -> str:
    return f"{revision}-deployment"


def service_name(revision: str) -> str:
    return f"{revision}-private"


def revision_labels(rev: r.Revision) -> dict[str, str]:
    """The revision's labels plus Knative's: what pods, the Deployment and the Service carry."""
    labels = dict(rev.metadata.labels)
    labels[LABEL_REVISION] = rev.metadata.name
    if rev.metadata.uid:
        labels[LABEL_REVISION_UID] = rev.metadata.uid
    labels.setdefault("app", rev.metadata.name)
    return dict(sorted(labels.items()))


def _selector(rev: r.Revision) -> dict[str, str]:
    if rev.metadata.uid:
        return {LABEL_REVISION_UID: rev.metadata.uid}
    return {LABEL_REVISION: rev.metadata.name}


def owner_reference(rev: r.Revision) -> dict:
    """The Revision owns its Deployment and Service, so Kubernetes' garbage collector removes
    them even if the finalizer is ever removed by hand."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Revision",
        "name": rev.metadata.name,
        "uid": rev.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def user_port(spec: InstanceSpec) -> int:
    return spec.container_port or DEFAULT_USER_PORT


def _probe(probe: r.Probe, port: int) -> dict:
    out: dict = {}
    if probe.HasField("http_get"):
        get = probe.http_get
        action: dict = {"path": get.path or "/", "port": get.port or port}
        if get.host:
            action["host"] = get.host
        if get.scheme:
            action["scheme"] = get.scheme
        if get.http_headers:
            action["httpHeaders"] = [{"name": h.name, "value": h.value} for h in get.http_headers]
        out["httpGet"] = action
    else:
        out["tcpSocket"] = {"port": probe.tcp_socket.port or port}
        if probe.tcp_socket.host:
            out["tcpSocket"]["host"] = probe.tcp_socket.host
    for name, value in (
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ):
        if value:
            out[name] = value
    return out


def user_container(rev: r.Revision, spec: InstanceSpec, sidecar: QueueSidecar) -> dict:
    container = rev.spec.containers[0] if rev.spec.containers else r.Container()
    port = user_port(spec)
    out: dict = {"name": container.name or USER_CONTAINER, "image": container.image}
    if container.command:
        out["command"] = list(container.command)
    if container.args:
        out["args"] = list(container.args)
    if container.working_dir:
        out["workingDir"] = container.working_dir
    out["env"] = [{"name": e.name, "value": e.value} for e in container.env] + [
        {"name": "PORT", "value": str(port)},
        {"name": "K_REVISION", "value": spec.revision},
        {"name": "K_CONFIGURATION", "value": spec.configuration},
        {"name": "K_SERVICE", "value": spec.service},
    ]
    out["ports"] = [{"name": USER_PORT_NAME, "containerPort": port, "protocol": "TCP"}]
    if container.resources.limits or container.resources.requests:
        out["resources"] = {
            k: dict(sorted(v.items()))
            for k, v in (("limits", container.resources.limits), ("requests", container.resources.requests))
            if v
        }
    if container.HasField("liveness_probe"):
        out["livenessProbe"] = _probe(container.liveness_probe, port)
    # Readiness is the queue's job: it probes the app and answers the kubelet for the pod.
    # The app must outlive the queue's drain to answer what the queue still holds: its
    # preStop hook asks the queue, which answers once its drain has ended (Knative's
    # /wait-for-drain), and only then does the kubelet send the app SIGTERM.
    out["lifecycle"] = {
        "preStop": {
            "httpGet": {
                "path": "/wait-for-drain",
                "port": sidecar.http_port,
                # the queue's WAIT_DRAIN_HEADER_VALUE (services never import each other)
                "httpHeaders": [{"name": "K-Network-Probe", "value": "wait-for-drain"}],
            }
        }
    }
    # A crashing app's last log lines become the revision's failure message.
    out["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return out


def queue_args(spec: InstanceSpec, sidecar: QueueSidecar, autoscaler: str) -> list[str]:
    args = [
        "ebb.queue",
        "--host", "0.0.0.0",  # the kubelet's probe and the traffic come to the pod's IP
        "--http-port", str(sidecar.http_port),
        "--admin-port", str(sidecar.admin_port),
        "--metrics-port", str(sidecar.metrics_port),
        "--app-port", str(user_port(spec)),
        "--revision", f"{spec.namespace}/{spec.revision}",
        "--instance", "$(POD_NAME)",
        *revision_queue_args(spec),
    ]  # fmt: skip
    if autoscaler:
        args += ["--autoscaler", autoscaler]
    return args + list(sidecar.extra_args)


def queue_container(spec: InstanceSpec, sidecar: QueueSidecar, autoscaler: str) -> dict:
    out: dict = {
        "name": QUEUE_CONTAINER,
        "image": sidecar.image,
        "imagePullPolicy": sidecar.image_pull_policy,
        "args": queue_args(spec, sidecar, autoscaler),
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": QUEUE_PORT_NAME, "containerPort": sidecar.http_port, "protocol": "TCP"},
            {"name": QUEUE_ADMIN_PORT_NAME, "containerPort": sidecar.admin_port, "protocol": "TCP"},
            {"name": QUEUE_METRICS_PORT_NAME, "containerPort": sidecar.metrics_port, "protocol": "TCP"},
        ],
        # Knative's network probe: 200 `queue` while the app answers and the queue is not
        # draining; the kubelet's verdict is what marks the pod's endpoint ready.
        "readinessProbe": {
            "httpGet": {
                "path": "/",
                "port": sidecar.http_port,
                "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}],
            },
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 3,
        },
    }
    if sidecar.resources:
        out["resources"] = copy.deepcopy(sidecar.resources)
    if sidecar.security_context:
        out["securityContext"] = copy.deepcopy(sidecar.security_context)
    return out


def pod_template(rev: r.Revision, spec: InstanceSpec, sidecar: QueueSidecar, autoscaler: str) -> dict:
    pod: dict = {
        "containers": [user_container(rev, spec, sidecar), queue_container(spec, sidecar, autoscaler)],
        "enableServiceLinks": False,
        # The longest preStop wait (the queue's drain: timeoutSeconds + 10 s) + time for the
        # app to exit on SIGTERM (10 s): 320 s for the default timeout. An idle pod's drain
        # ends after the queue's quiet period, so it goes in seconds.
        "terminationGracePeriodSeconds": queue_drain_max_s(spec) + APP_STOP_GRACE_S,
    }
    if rev.spec.service_account_name:
        pod["serviceAccountName"] = rev.spec.service_account_name
    # The revision's own annotations win: `prometheus.io/scrape: "false"` there opts out.
    scrape = dict(zip(PROMETHEUS_ANNOTATIONS, ("true", str(sidecar.metrics_port), "/metrics"), strict=True))
    annotations = {**scrape, **rev.metadata.annotations}
    return {"metadata": {"labels": revision_labels(rev), "annotations": dict(sorted(annotations.items()))}, "spec": pod}


def template_hash(template: Mapping) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def revision_deployment(
    rev: r.Revision, spec: InstanceSpec, sidecar: QueueSidecar, *, replicas: int, autoscaler: str
) -> dict:
    """The Deployment running `replicas` pods of the revision (user container + queue)."""
    template = pod_template(rev, spec, sidecar, autoscaler)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(rev.metadata.name),
            "namespace": rev.metadata.namespace,
            "labels": revision_labels(rev),
            "annotations": {ANNOTATION_POD_TEMPLATE_HASH: template_hash(template)},
            "ownerReferences": [owner_reference(rev)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(rev)},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
            "template": template,
        },
    }


def revision_service(rev: r.Revision) -> dict:
    """The Service selecting the revision's pods; it exists so that EndpointSlices do."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(rev.metadata.name),
            "namespace": rev.metadata.namespace,
            "labels": revision_labels(rev),
            "ownerReferences": [owner_reference(rev)],
        },
        "spec": {
            "selector": _selector(rev),
            "ports": [{"name": SERVICE_PORT_NAME, "port": 80, "protocol": "TCP", "targetPort": QUEUE_PORT_NAME}],
        },
    }


def scale_patch(replicas: int) -> dict:
    """JSON merge patch of the Deployment's scale subresource."""
    return {"spec": {"replicas": replicas}}


def template_replacement(current: Mapping, desired: Mapping) -> dict:
    """A PUT body giving a stored Deployment the desired pod template: the desired object
    with the stored resourceVersion (409 Conflict if it moved), replicas (scaling is not
    this write's business) and other annotations (e.g. the Deployment controller's)."""
    body = copy.deepcopy(dict(desired))
    meta = current.get("metadata") or {}
    body["metadata"]["resourceVersion"] = meta.get("resourceVersion", "")
    body["metadata"]["annotations"] = {**(meta.get("annotations") or {}), **desired["metadata"]["annotations"]}
    if "replicas" in (current.get("spec") or {}):
        body["spec"]["replicas"] = current["spec"]["replicas"]
    return body


def ever_ready_patch() -> dict:
    """Marks a Deployment whose pods were once ready, so a restarted controller still knows
    that a revision scaled to zero had been Ready (Knative keeps that in the status)."""
    return {"metadata": {"annotations": {ANNOTATION_EVER_READY: "true"}}}


# ----------------------------------------------------------------- observed state


def slice_addresses(slices: Iterable[Mapping], revision: str) -> tuple[list[Address], list[Address]]:
    """(ready, not ready) queue addresses from the EndpointSlices of the revision's Service.

    An endpoint is ready when `conditions.ready` is true (nil counts as true, as the API
    says); a not-ready one is listed only while it is not terminating. The port is the
    slice's `http` port, i.e. the queue's container port.
    """
    ready: set[Address] = set()
    not_ready: set[Address] = set()
    for s in slices:
        if s.get("metadata", {}).get("labels", {}).get(LABEL_SERVICE_NAME) != service_name(revision):
            continue
        if s.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == SERVICE_PORT_NAME), None)
        if not port:
            continue
        for ep in s.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            cond = ep.get("conditions") or {}
            address = Address(addresses[0], int(port))
            if cond.get("ready") is not False:
                ready.add(address)
            elif cond.get("terminating") is not True:
                not_ready.add(address)
    not_ready -= ready
    return sorted(ready, key=_address_key), sorted(not_ready, key=_address_key)


def _address_key(a: Address) -> tuple:
    return (a.host, a.port)


# Waiting reasons that will not fix themselves: Knative reports them on the revision.
FATAL_WAITING = (
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)


def _container_failure(status: Mapping) -> tuple[str, str]:
    state = status.get("state") or {}
    last = status.get("lastState") or {}
    for terminated in (state.get("terminated"), last.get("terminated")):
        if terminated and terminated.get("exitCode", 0) != 0:
            detail = (terminated.get("message") or terminated.get("reason") or "").strip()
            return f"ExitCode{terminated['exitCode']}", f"Container failed with: {detail}"
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason", "")
    if reason in FATAL_WAITING or reason == "CrashLoopBackOff":
        return reason, waiting.get("message", "")
    return "", ""


def failure_of(deployment: Mapping | None, pods: Iterable[Mapping]) -> tuple[str, str]:
    """Why the revision's pods do not run, as (reason, message); ("", "") when nothing failed.

    The user container's crash (ExitCodeN, with its termination message) or image problem
    comes first, then the queue's, then an unschedulable pod, then the Deployment's own
    conditions (ProgressDeadlineExceeded, ReplicaFailure such as a quota refusal).
    """
    pods = sorted(pods, key=lambda p: p.get("metadata", {}).get("name", ""))
    statuses = [s for pod in pods for s in (pod.get("status") or {}).get("containerStatuses") or []]
    for status in sorted(statuses, key=lambda s: s.get("name") == QUEUE_CONTAINER):  # user first
        reason, message = _container_failure(status)
        if reason:
            return reason, message
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("reason") or "Unschedulable", cond.get("message", "")
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            return cond.get("reason") or "ProgressDeadlineExceeded", cond.get("message", "")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return cond.get("reason") or "ReplicaFailure", cond.get("message", "")
    return "", ""


def instance_view(deployment: Mapping | None, pods: Iterable[Mapping], *, desired: int) -> InstanceView:
    """The runtime's view of a revision from its Deployment's status and its pods."""
    status = (deployment or {}).get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    ever_ready = ready > 0 or (
        ((deployment or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION_EVER_READY) == "true"
    )
    reason, message = ("", "") if ready else failure_of(deployment, pods)
    return InstanceView(
        desired=desired,
        actual=int(status.get("replicas") or 0),
        ready=ready,
        ever_ready=ever_ready,
        failure_reason=reason,
        failure_message=message,
    )
