"""Pure builders of the Kubernetes backend: resources <-> JSON, revision -> Deployment and
Service, EndpointSlices -> addresses, pods -> failure reasons (exact dicts, no sockets)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.common.settings import SettingsError
from ebb.controller import k8s_objects as ko
from ebb.controller.manager import instance_spec
from ebb.controller.reconcile import InstanceView
from ebb.controller.resources import new
from ebb.controller.runtime import Address
from ebb.queue.proxy import WAIT_DRAIN_HEADER_VALUE
from ebb.queue.readiness import parse_probe

UID = "7f0c1d2e-0000-4000-8000-000000000001"
# The user container's preStop: the queue answers once its drain has ended.
WAIT_FOR_DRAIN = {
    "path": "/wait-for-drain",
    "port": 8013,
    "httpHeaders": [{"name": "K-Network-Probe", "value": WAIT_DRAIN_HEADER_VALUE.decode()}],
}
SIDECAR = ko.QueueSidecar(
    image="ebb:0.1.0",
    image_pull_policy="Always",
    http_port=8013,
    admin_port=8022,
    resources={"requests": {"cpu": "25m"}},
    security_context={"runAsNonRoot": True},
)


def _revision() -> r.Revision:
    rev = new("Revision")
    rev.metadata.name = "hello-00002"
    rev.metadata.namespace = "team"
    rev.metadata.uid = UID
    rev.metadata.generation = 1
    rev.metadata.labels.update(
        {
            "serving.knative.dev/configuration": "hello",
            "serving.knative.dev/configurationGeneration": "2",
            "serving.knative.dev/service": "hello",
        }
    )
    rev.metadata.annotations["autoscaling.knative.dev/min-scale"] = "1"
    rev.spec.container_concurrency = 10
    rev.spec.timeout_seconds = 120
    rev.spec.response_start_timeout_seconds = 30
    rev.spec.idle_timeout_seconds = 60
    rev.spec.service_account_name = "runner"
    c = rev.spec.containers.add(image="ghcr.io/acme/hello:2", command=["/app"], args=["--greeting", "hi"])
    c.env.add(name="TARGET", value="World")
    c.ports.add(container_port=9000)
    c.resources.limits["memory"] = "128Mi"
    c.resources.requests["cpu"] = "100m"
    c.liveness_probe.http_get.path = "/healthz"
    c.liveness_probe.period_seconds = 5
    return rev


LABELS = {
    "app": "hello-00002",
    "serving.knative.dev/configuration": "hello",
    "serving.knative.dev/configurationGeneration": "2",
    "serving.knative.dev/revision": "hello-00002",
    "serving.knative.dev/revisionUID": UID,
    "serving.knative.dev/service": "hello",
}
OWNER = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Revision",
    "name": "hello-00002",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


# ----------------------------------------------------------------- proto <-> JSON


def test_resources_convert_with_integers_where_the_crd_wants_them():
    rev = _revision()
    rev.status.observed_generation = 1
    rev.status.desired_replicas = 2
    out = ko.to_k8s(rev)
    assert out["metadata"]["generation"] == 1  # int64: a string in proto3 JSON
    assert (out["spec"]["containerConcurrency"], out["spec"]["timeoutSeconds"]) == (10, 120)
    assert out["status"] == {"observedGeneration": 1, "desiredReplicas": 2}
    assert ko.from_k8s("Revision", out) == rev

    route = new("Route")
    route.spec.traffic.add(revision_name="a", percent=40)
    route.spec.traffic.add(configuration_name="c", latest_revision=True, percent=60)
    assert ko.to_k8s(route)["spec"]["traffic"] == [
        {"revisionName": "a", "percent": 40},
        {"configurationName": "c", "latestRevision": True, "percent": 60},
    ]


def test_from_k8s_drops_what_ebb_does_not_model():
    raw = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "s", "managedFields": [{"manager": "kubectl"}], "finalizers": ["x"]},
        "spec": {"template": {"spec": {"containers": [{"image": "i", "securityContext": {"runAsUser": 1}}]}}},
    }
    svc = ko.from_k8s("Service", raw)
    assert svc.metadata.name == "s" and list(svc.metadata.finalizers) == ["x"]
    assert svc.spec.template.spec.containers[0].image == "i"


def test_resource_body_leaves_server_fields_to_the_server():
    rev = _revision()
    rev.metadata.resource_version = "42"
    rev.metadata.creation_timestamp.seconds = 100
    rev.status.actual_replicas = 3
    body = ko.resource_body(rev, finalizers=[ko.FINALIZER])
    assert body["metadata"] == {
        "name": "hello-00002",
        "namespace": "team",
        "labels": dict(rev.metadata.labels),
        "annotations": {"autoscaling.knative.dev/min-scale": "1"},
        "finalizers": ["serving.knative.dev/ebb-controller"],
    }
    assert "status" not in body and body["kind"] == "Revision"


def test_replacement_keeps_what_the_server_holds_and_replaces_the_rest():
    stored = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {
            "name": "r",
            "namespace": "default",
            "uid": "u",
            "resourceVersion": "7",
            "generation": 3,
            "labels": {"old": "1"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "finalizers": ["other"],
            "managedFields": [],
        },
        "spec": {"traffic": [{"revisionName": "a", "percent": 100}]},
        "status": {"url": "http://r"},
    }
    route = new("Route")
    route.metadata.name = "r"
    route.metadata.labels["new"] = "2"
    route.spec.traffic.add(revision_name="b", percent=100)
    body = ko.replacement_body(stored, route)
    assert body == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {
            "name": "r",
            "namespace": "default",
            "uid": "u",
            "resourceVersion": "7",
            "generation": 3,
            "labels": {"new": "2"},
            "finalizers": ["other"],
            "managedFields": [],
        },
        "spec": {"traffic": [{"revisionName": "b", "percent": 100}]},
    }
    assert stored["metadata"]["labels"] == {"old": "1"}  # not mutated

    route.status.url = "http://r2"
    assert ko.status_body(stored, route)["status"] == {"url": "http://r2"}
    assert ko.finalizers_patch(stored, "other") == {"metadata": {"finalizers": [], "resourceVersion": "7"}}


# ----------------------------------------------------------------- sidecar settings


def test_queue_sidecar_from_the_charts_environment():
    sidecar = ko.queue_sidecar_from_env(
        {
            "EBB_QUEUE_SIDECAR_IMAGE": "ebb:0.1.0",
            "EBB_QUEUE_SIDECAR_IMAGE_PULL_POLICY": "Always",
            "EBB_QUEUE_SIDECAR_HTTP_PORT": "8013",
            "EBB_QUEUE_SIDECAR_ADMIN_PORT": "8022",
            "EBB_QUEUE_SIDECAR_RESOURCES": '{"requests":{"cpu":"25m"}}',
            "EBB_QUEUE_SIDECAR_SECURITY_CONTEXT": '{"runAsNonRoot":true}',
        }
    )
    assert sidecar == SIDECAR
    assert ko.queue_sidecar_from_env({"EBB_QUEUE_SIDECAR_IMAGE": "ebb:1"}) == ko.QueueSidecar(image="ebb:1")
    assert ko.QueueSidecar(image="ebb:1").metrics_port == 9091  # Knative's queue metrics port
    env = {"EBB_QUEUE_SIDECAR_IMAGE": "ebb:1", "EBB_QUEUE_SIDECAR_METRICS_PORT": "9100"}
    assert ko.queue_sidecar_from_env(env).metrics_port == 9100


@pytest.mark.parametrize(
    "env,message",
    [
        ({}, "EBB_QUEUE_SIDECAR_IMAGE is required"),
        ({"EBB_QUEUE_SIDECAR_IMAGE_PULL_POLICY": "Sometimes"}, "must be one of Always, IfNotPresent, Never"),
        ({"EBB_QUEUE_SIDECAR_HTTP_PORT": "70000"}, "EBB_QUEUE_SIDECAR_HTTP_PORT = 70000, must be in 0..65535"),
        ({"EBB_QUEUE_SIDECAR_ADMIN_PORT": "8013"}, "must differ"),
        ({"EBB_QUEUE_SIDECAR_METRICS_PORT": "8022"}, "EBB_QUEUE_SIDECAR_METRICS_PORT must differ from EBB_QUEUE_SIDECAR_ADMIN_PORT"),
        ({"EBB_QUEUE_SIDECAR_METRICS_PORT": "0"}, "EBB_QUEUE_SIDECAR_METRICS_PORT = 0, must be in 1..65535"),
        ({"EBB_QUEUE_SIDECAR_RESOURCES": "[1]"}, "EBB_QUEUE_SIDECAR_RESOURCES = '[1]', must be a JSON object"),
        ({"EBB_QUEUE_SIDECAR_SECURITY_CONTEXT": "{"}, "EBB_QUEUE_SIDECAR_SECURITY_CONTEXT = '{', must be a JSON object"),
    ],
)
def test_queue_sidecar_settings_are_validated(env, message):
    base = {} if env == {} else {"EBB_QUEUE_SIDECAR_IMAGE": "ebb:1"}
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ko.queue_sidecar_from_env({**base, **env})


# ----------------------------------------------------------------- revision -> Deployment


def test_revision_deployment_exactly():
    rev = _revision()
    dep = ko.revision_deployment(rev, instance_spec(rev), SIDECAR, replicas=2, autoscaler="as.ebb.svc:8091")
    template = {
        "metadata": {
            "labels": LABELS,
            "annotations": {
                "autoscaling.knative.dev/min-scale": "1",
                "prometheus.io/path": "/metrics",
                "prometheus.io/port": "9091",
                "prometheus.io/scrape": "true",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "user-container",
                    "image": "ghcr.io/acme/hello:2",
                    "command": ["/app"],
                    "args": ["--greeting", "hi"],
                    "env": [
                        {"name": "TARGET", "value": "World"},
                        {"name": "PORT", "value": "9000"},
                        {"name": "K_REVISION", "value": "hello-00002"},
                        {"name": "K_CONFIGURATION", "value": "hello"},
                        {"name": "K_SERVICE", "value": "hello"},
                    ],
                    "ports": [{"name": "user-port", "containerPort": 9000, "protocol": "TCP"}],
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9000}, "periodSeconds": 5},
                    "lifecycle": {"preStop": {"httpGet": WAIT_FOR_DRAIN}},
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                },
                {
                    "name": "queue-proxy",
                    "image": "ebb:0.1.0",
                    "imagePullPolicy": "Always",
                    "args": [
                        "ebb.queue",
                        "--host", "0.0.0.0",
                        "--http-port", "8013",
                        "--admin-port", "8022",
                        "--metrics-port", "9091",
                        "--app-port", "9000",
                        "--revision", "team/hello-00002",
                        "--instance", "$(POD_NAME)",
                        "--container-concurrency", "10",
                        "--timeout-seconds", "120",
                        "--drain-max-s", "130",
                        "--response-start-timeout-seconds", "30",
                        "--idle-timeout-seconds", "60",
                        "--autoscaler", "as.ebb.svc:8091",
                    ],  # fmt: skip
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
                    ],
                    "ports": [
                        {"name": "queue-port", "containerPort": 8013, "protocol": "TCP"},
                        {"name": "http-queueadm", "containerPort": 8022, "protocol": "TCP"},
                        {"name": "http-usermetric", "containerPort": 9091, "protocol": "TCP"},
                    ],
                    "readinessProbe": {
                        "httpGet": {
                            "path": "/",
                            "port": 8013,
                            "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}],
                        },
                        "periodSeconds": 1,
                        "timeoutSeconds": 1,
                        "failureThreshold": 3,
                    },
                    "resources": {"requests": {"cpu": "25m"}},
                    "securityContext": {"runAsNonRoot": True},
                },
            ],
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 140,  # the drain's 130 + 10 for the app
            "serviceAccountName": "runner",
        },
    }
    assert dep == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "hello-00002-deployment",
            "namespace": "team",
            "labels": LABELS,
            "annotations": {"ebb.dev/pod-template-hash": ko.template_hash(template)},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"serving.knative.dev/revisionUID": UID}},
            "progressDeadlineSeconds": 600,
            "template": template,
        },
    }


def test_defaults_of_a_minimal_revision():
    rev = new("Revision")
    rev.metadata.name = "r-00001"
    rev.metadata.namespace = "default"
    rev.metadata.uid = UID
    rev.spec.containers.add(image="img")
    dep = ko.revision_deployment(rev, instance_spec(rev), ko.QueueSidecar(image="q"), replicas=1, autoscaler="")
    user, queue = dep["spec"]["template"]["spec"]["containers"]
    assert user == {
        "name": "user-container",
        "image": "img",
        "env": [
            {"name": "PORT", "value": "8080"},  # Knative's default port
            {"name": "K_REVISION", "value": "r-00001"},
            {"name": "K_CONFIGURATION", "value": ""},
            {"name": "K_SERVICE", "value": ""},
        ],
        "ports": [{"name": "user-port", "containerPort": 8080, "protocol": "TCP"}],
        "lifecycle": {"preStop": {"httpGet": WAIT_FOR_DRAIN}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    assert queue["args"][-6:] == [
        "--container-concurrency", "0", "--timeout-seconds", "300", "--drain-max-s", "310",
    ]  # fmt: skip
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 320
    assert "resources" not in queue and "securityContext" not in queue
    assert "serviceAccountName" not in dep["spec"]["template"]["spec"]
    assert dep["spec"]["template"]["metadata"]["annotations"] == {  # only Prometheus's
        "prometheus.io/path": "/metrics",
        "prometheus.io/port": "9091",
        "prometheus.io/scrape": "true",
    }


def test_the_queue_serves_metrics_on_a_fixed_port_that_prometheus_is_told_of():
    rev = _revision()
    sidecar = ko.QueueSidecar(image="q", metrics_port=9100)
    template = ko.pod_template(rev, instance_spec(rev), sidecar, "")
    queue = template["spec"]["containers"][1]
    args = queue["args"]
    assert args[args.index("--metrics-port") + 1] == "9100"
    assert args[args.index("--host") + 1] == "0.0.0.0"  # scraped on the pod's IP
    assert {"name": "http-usermetric", "containerPort": 9100, "protocol": "TCP"} in queue["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def test_a_revision_can_opt_out_of_scraping():
    rev = _revision()
    rev.metadata.annotations["prometheus.io/scrape"] = "false"
    template = ko.pod_template(rev, instance_spec(rev), ko.QueueSidecar(image="q"), "")
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "false"


def test_tcp_liveness_probe_defaults_to_the_user_port():
    rev = _revision()
    probe = rev.spec.containers[0].liveness_probe
    probe.ClearField("http_get")
    probe.tcp_socket.SetInParent()
    probe.failure_threshold = 6
    user = ko.user_container(rev, instance_spec(rev), SIDECAR)
    assert user["livenessProbe"] == {"tcpSocket": {"port": 9000}, "periodSeconds": 5, "failureThreshold": 6}


def test_revision_service_selects_the_pods_on_the_queue_port():
    assert ko.revision_service(_revision()) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "hello-00002-private",
            "namespace": "team",
            "labels": LABELS,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "selector": {"serving.knative.dev/revisionUID": UID},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "queue-port"}],
        },
    }


def test_patches():
    assert ko.scale_patch(0) == {"spec": {"replicas": 0}}
    assert ko.ever_ready_patch() == {"metadata": {"annotations": {"ebb.dev/ever-ready": "true"}}}
    rev = _revision()
    desired = ko.revision_deployment(rev, instance_spec(rev), SIDECAR, replicas=2, autoscaler="")
    stored = {
        "metadata": {"name": "hello-00002-deployment", "resourceVersion": "9", "annotations": {"ebb.dev/pod-template-hash": "old", "x": "y"}},
        "spec": {"replicas": 5, "template": {"spec": {"containers": []}}},
        "status": {"replicas": 5},
    }
    body = ko.template_replacement(stored, desired)
    assert body == {
        **desired,
        "metadata": {
            **desired["metadata"],
            "resourceVersion": "9",
            "annotations": {"ebb.dev/pod-template-hash": desired["metadata"]["annotations"]["ebb.dev/pod-template-hash"], "x": "y"},
        },
        "spec": {**desired["spec"], "replicas": 5},
    }


# ----------------------------------------------------------------- observed state


def _slice(service: str, endpoints: list[dict], *, port_name: str = "http") -> dict:
    return {
        "metadata": {"name": f"{service}-abc", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": 8013, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def test_slice_addresses_ready_not_ready_and_terminating():
    slices = [
        _slice(
            "hello-00002-private",
            [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.1"], "conditions": {}},  # nil ready counts as ready
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": False, "serving": True, "terminating": True}},
                {"addresses": [], "conditions": {"ready": True}},
            ],
        ),
        # The same pod in a second slice (during a slice rewrite) counts once.
        _slice("hello-00002-private", [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}}]),
        _slice("other-private", [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}]),
        _slice("hello-00002-private", [{"addresses": ["10.8.8.8"], "conditions": {"ready": True}}], port_name="metrics"),
    ]
    ready, not_ready = ko.slice_addresses(slices, "hello-00002")
    assert ready == [Address("10.0.0.1", 8013), Address("10.0.0.2", 8013)]
    assert not_ready == [Address("10.0.0.3", 8013)]


def _pod(name: str, *statuses: dict, conditions: list | None = None) -> dict:
    return {"metadata": {"name": name}, "status": {"containerStatuses": list(statuses), "conditions": conditions or []}}


CRASH = {
    "name": "user-container",
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
    "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "boom\n"}},
}
PULL = {"name": "user-container", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
QUEUE_CRASH = {"name": "queue-proxy", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
RUNNING = {"name": "user-container", "state": {"running": {}}}
STARTING = {"name": "user-container", "state": {"waiting": {"reason": "ContainerCreating"}}}


@pytest.mark.parametrize(
    "deployment,pods,expected",
    [
        (None, [], ("", "")),
        (None, [_pod("a", RUNNING)], ("", "")),
        (None, [_pod("a", STARTING)], ("", "")),
        (None, [_pod("a", CRASH)], ("ExitCode2", "Container failed with: boom")),
        (None, [_pod("a", PULL)], ("ErrImagePull", "not found")),
        (None, [_pod("a", QUEUE_CRASH, RUNNING)], ("ExitCode1", "Container failed with: Error")),
        (None, [_pod("a", QUEUE_CRASH, PULL)], ("ErrImagePull", "not found")),  # the user's first
        (
            None,
            [_pod("a", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}])],
            ("Unschedulable", "0/3 nodes"),
        ),
        (
            {"status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"}]}},
            [],
            ("ProgressDeadlineExceeded", "slow"),
        ),
        (
            {"status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota"}]}},
            [],
            ("FailedCreate", "quota"),
        ),
    ],
)
def test_failure_of(deployment, pods, expected):
    assert ko.failure_of(deployment, pods) == expected


def test_instance_view():
    dep = {"metadata": {"annotations": {}}, "status": {"replicas": 3, "readyReplicas": 2}}
    assert ko.instance_view(dep, [_pod("a", CRASH)], desired=3) == InstanceView(desired=3, actual=3, ready=2, ever_ready=True)
    cold = {"metadata": {"annotations": {"ebb.dev/ever-ready": "true"}}, "status": {}}
    assert ko.instance_view(cold, [], desired=0) == InstanceView(ever_ready=True)
    failing = {"metadata": {}, "status": {"replicas": 1}}
    assert ko.instance_view(failing, [_pod("a", CRASH)], desired=1) == InstanceView(
        desired=1, actual=1, failure_reason="ExitCode2", failure_message="Container failed with: boom"
    )


def test_built_objects_validate_against_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.utils.latest_version()
    rev = _revision()
    for obj in (
        ko.revision_deployment(rev, instance_spec(rev), SIDECAR, replicas=1, autoscaler="a:1"),
        ko.revision_service(rev),
    ):
        kubernetes_validate.validate(obj, version, strict=True)


# ----------------------------------------------------------------- the app's readiness probe


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ({}, ""),  # no probe: the queue's default
        ({"tcp_socket": {}, "success_threshold": 1}, ""),  # the webhook's default
        ({"tcp_socket": {"port": 9000}}, ""),  # the serving port is the queue's own choice
        ({"tcp_socket": {"port": 9001}}, '{"tcpSocket":{"port":9001}}'),
        (
            {"http_get": {"path": "/healthz", "port": 9000,
                          "http_headers": [{"name": "X-Probe", "value": "1"}]},
             "period_seconds": 2, "failure_threshold": 4, "success_threshold": 2},
            '{"failureThreshold":4,"httpGet":{"httpHeaders":[{"name":"X-Probe","value":"1"}],'
            '"path":"/healthz"},"periodSeconds":2,"successThreshold":2}',
        ),
    ],
)  # fmt: skip
def test_the_readiness_probe_goes_to_the_queue_as_json(probe, expected):
    rev = _revision()
    container = rev.spec.containers[0]
    container.ClearField("readiness_probe")
    if probe:
        json_format.ParseDict(probe, container.readiness_probe)
    spec = instance_spec(rev)
    assert spec.readiness_probe == expected
    args = ko.queue_args(spec, SIDECAR, "")
    if expected:
        assert args[args.index("--readiness-probe") + 1] == expected
        assert parse_probe(expected).http == ("httpGet" in expected)  # the queue takes it
    else:
        assert "--readiness-probe" not in args
