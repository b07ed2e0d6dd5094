"""The controller's Kubernetes backend, end to end against a Kubernetes API emulator.

The real reconcile loop (`Controller`) runs with `KubernetesStore` and `KubernetesRuntime`
over the real `kubernetes` client, talking HTTP to `k8s_emulator.KubernetesEmulator` on
127.0.0.1 (see its docstring for what it emulates and what it does not). Users act as
`kubectl` would, by writing custom resources into the emulator; the cluster's own
controllers (Deployment status, EndpointSlices, pods) are simulated by the test writing
those objects. Scale decisions are injected through a fake autoscaler client.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from helpers import REPO
from k8s_emulator import KubernetesEmulator
from kubernetes import client

from ebb.controller import k8s_objects as ko
from ebb.controller.manager import Controller, instance_spec
from ebb.controller.reconcile import Decision
from ebb.controller.resources import Key, is_ready, new
from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.runtime_k8s import KubernetesRuntime
from ebb.controller.store_k8s import KubernetesStore
from ebb.controller.xds import AdsServer

pytestmark = pytest.mark.timeout(60)

SERVICES = "serving.knative.dev/v1/services"
CONFIGURATIONS = "serving.knative.dev/v1/configurations"
REVISIONS = "serving.knative.dev/v1/revisions"
ROUTES = "serving.knative.dev/v1/routes"
DEPLOYMENTS = "apps/v1/deployments"
CORE_SERVICES = "v1/services"
PODS = "v1/pods"
SLICES = "discovery.k8s.io/v1/endpointslices"
AUTOSCALER = "ebb-autoscaler.ebb.svc:8091"
SIDECAR = ko.QueueSidecar(
    image="registry.example/ebb:0.1.0",
    image_pull_policy="IfNotPresent",
    http_port=8013,
    admin_port=8022,
    resources={"requests": {"cpu": "25m", "memory": "50Mi"}, "limits": {"cpu": "1", "memory": "200Mi"}},
    security_context={"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True},
)
HELLO = yaml.safe_load((REPO / "samples" / "knative" / "hello.yaml").read_text())


class FakeScaling:
    """What the Controller uses of ScalingClient: decisions, register, unregister, known."""

    def __init__(self) -> None:
        self.decisions: dict[RevisionKey, Decision] = {}
        self.specs: dict[RevisionKey, Any] = {}

    def register(self, key: RevisionKey, spec: Any) -> None:
        self.specs[key] = spec

    def unregister(self, key: RevisionKey) -> None:
        self.specs.pop(key, None)
        self.decisions.pop(key, None)

    def known(self) -> set[RevisionKey]:
        return set(self.specs)


class AckingAds(AdsServer):
    """The real ADS server, with an Envoy that accepts every snapshot: the controller only
    lets the last instance of a revision go once the gateway has ACKed the activator in
    its place (make-before-break), and no Envoy runs in this test."""

    async def wait_snapshot_acked(self, snapshot, timeout_s: float) -> bool:
        return True


ACTIVATOR = Address("ebb-activator.ebb.svc", 8012)


class Cluster:
    """The emulator, the backend and a running Controller."""

    def __init__(self, emu: KubernetesEmulator) -> None:
        self.emu = emu
        self.api = client.ApiClient(client.Configuration(host=emu.url))
        self.store = KubernetesStore(
            self.api,
            finalizer_check=lambda key: self.runtime.released(RevisionKey(key.namespace, key.name)),
            watch_timeout_s=10,
            finalize_period_s=0.1,
        )
        self.runtime = KubernetesRuntime(
            self.api,
            sidecar=SIDECAR,
            revision_of=lambda key: self.store.get("Revision", key.namespace, key.name),
            autoscaler=AUTOSCALER,
            watch_timeout_s=10,
        )
        self.scaling = FakeScaling()
        self.ads = AckingAds()
        self.controller = Controller(
            self.store, self.runtime, self.ads, gateway_port=8080, scaling=self.scaling, activator=ACTIVATOR
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.store.start()
        await self.runtime.start()
        self.task = asyncio.ensure_future(self.controller.run())

    async def stop(self) -> None:
        self.controller.stop()
        if self.task is not None:
            await self.task
        await self.runtime.close(stop_instances=True)
        await self.store.close()
        self.api.close()

    # -- what the cluster's own controllers would write --

    def pods_ready(self, revision: str, ips: list[str], *, namespace: str = "default") -> None:
        """Deployment status and the EndpointSlice for `ips` ready pods of the revision."""
        dep = self.emu.get(DEPLOYMENTS, namespace, ko.deployment_name(revision))
        n = len(ips)
        self.emu.set_status(
            DEPLOYMENTS,
            namespace,
            ko.deployment_name(revision),
            {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n,
                "availableReplicas": n,
            },
        )
        self.endpoints(revision, [(ip, True) for ip in ips], namespace=namespace)

    def endpoints(self, revision: str, endpoints: list[tuple], *, namespace: str = "default") -> None:
        """The EndpointSlice of the revision's Service: (ip, ready[, terminating]) per pod."""
        svc = self.emu.get(CORE_SERVICES, namespace, ko.service_name(revision))
        labels = {
            **svc["metadata"]["labels"],
            ko.LABEL_SERVICE_NAME: ko.service_name(revision),
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        }
        self.emu.apply(
            SLICES,
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{ko.service_name(revision)}-x7k2p", "namespace": namespace, "labels": labels},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8013, "protocol": "TCP"}],
                "endpoints": [
                    {
                        "addresses": [e[0]],
                        "conditions": {"ready": e[1], "serving": e[1] or e[2:] == (True,), "terminating": e[2:] == (True,)},
                        "targetRef": {"kind": "Pod", "namespace": namespace, "name": f"{revision}-deployment-{i}"},
                    }
                    for i, e in enumerate(endpoints)
                ],
            },
        )


@pytest.fixture
async def cluster():
    emu = KubernetesEmulator()
    c = Cluster(emu)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()
        emu.close()


async def eventually(predicate: Callable[[], Any], timeout_s: float = 10.0, message: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = None
    while loop.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (KeyError, TypeError, IndexError, AssertionError) as exc:
            last = exc
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {message}" + (f" (last: {last!r})" if last else ""))


def cond(obj: dict | None, type_: str) -> dict:
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == type_), {})


def user_fields(obj: dict) -> dict:
    """An object without what the API server adds (uid, versions, timestamps, status)."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    for key in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        out["metadata"].pop(key, None)
    return out


async def hello_ready(c: Cluster) -> dict:
    """Apply samples/knative/hello.yaml as kubectl would; make its first revision's pod ready."""
    c.emu.apply(SERVICES, HELLO)
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment"), message="first Deployment")
    c.pods_ready("hello-00001", ["10.0.0.5"])
    return await eventually(
        lambda: (s := c.emu.get(SERVICES, "default", "hello"))
        and s.get("status", {}).get("latestReadyRevisionName") == "hello-00001"
        and s,
        message="hello ready",
    )


# ------------------------------------------------------------------------------- new Service


async def test_new_service_creates_its_resources_deployment_and_service(cluster):
    c = cluster
    c.emu.apply(SERVICES, HELLO)
    svc = c.emu.get(SERVICES, "default", "hello")

    cfg = await eventually(lambda: c.emu.get(CONFIGURATIONS, "default", "hello"), message="Configuration")
    route = await eventually(lambda: c.emu.get(ROUTES, "default", "hello"), message="Route")
    rev = await eventually(lambda: c.emu.get(REVISIONS, "default", "hello-00001"), message="Revision")
    dep = await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment"), message="Deployment")
    private = await eventually(lambda: c.emu.get(CORE_SERVICES, "default", "hello-00001-private"), message="Service")

    def owner(kind: str, obj: dict) -> list[dict]:
        return [
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": kind,
                "name": obj["metadata"]["name"],
                "uid": obj["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    template = HELLO["spec"]["template"]
    assert user_fields(cfg) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "labels": {"serving.knative.dev/service": "hello"},
            "ownerReferences": owner("Service", svc),
        },
        "spec": {"template": template},
    }
    assert user_fields(route) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "labels": {"serving.knative.dev/service": "hello"},
            "ownerReferences": owner("Service", svc),
        },
        "spec": {"traffic": [{"configurationName": "hello", "latestRevision": True, "percent": 100}]},
    }
    assert user_fields(rev) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": "hello-00001",
            "namespace": "default",
            "labels": {
                "serving.knative.dev/configuration": "hello",
                "serving.knative.dev/configurationGeneration": "1",
                "serving.knative.dev/service": "hello",
            },
            "ownerReferences": owner("Configuration", cfg),
            "finalizers": ["serving.knative.dev/ebb-controller"],
        },
        "spec": template["spec"],
    }
    # The API server's bookkeeping, not the controller's.
    assert (cfg["metadata"]["generation"], rev["metadata"]["generation"]) == (1, 1)

    # The Deployment: exactly what the builder makes of the stored Revision, 1 replica
    # (initial scale before any decision), owned by the Revision.
    stored_rev = c.store.get("Revision", "default", "hello-00001")
    expected = ko.revision_deployment(
        stored_rev, instance_spec(stored_rev), SIDECAR, replicas=1, autoscaler=AUTOSCALER
    )
    assert user_fields(dep) == expected
    assert dep["metadata"]["ownerReferences"] == owner("Revision", rev)
    pod = dep["spec"]["template"]["spec"]
    user, queue = pod["containers"]
    assert (user["name"], user["image"]) == ("user-container", "ghcr.io/knative/helloworld-go:latest")
    assert user["env"] == [
        {"name": "TARGET", "value": "World"},
        {"name": "PORT", "value": "8080"},
        {"name": "K_REVISION", "value": "hello-00001"},
        {"name": "K_CONFIGURATION", "value": "hello"},
        {"name": "K_SERVICE", "value": "hello"},
    ]
    assert queue["args"] == [
        "ebb.queue", "--host", "0.0.0.0", "--http-port", "8013", "--admin-port", "8022",
        "--metrics-port", "9091", "--app-port", "8080",
        "--revision", "default/hello-00001", "--instance", "$(POD_NAME)",
        "--container-concurrency", "0", "--timeout-seconds", "300", "--drain-max-s", "310",
        "--autoscaler", AUTOSCALER,
    ]  # fmt: skip
    assert dep["spec"]["selector"] == {"matchLabels": {"serving.knative.dev/revisionUID": rev["metadata"]["uid"]}}
    assert user_fields(private) == ko.revision_service(stored_rev)
    assert private["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    # Written once each: no churn from the level-based loop.
    await asyncio.sleep(0.3)
    assert [(w.method, w.name) for w in c.emu.writes_to(DEPLOYMENTS)] == [("POST", "")]
    assert [(w.method, w.name) for w in c.emu.writes_to(CORE_SERVICES)] == [("POST", "")]
    assert [w.method for w in c.emu.writes_to(CONFIGURATIONS) if not w.subresource] == ["POST"]
    assert [w.method for w in c.emu.writes_to(ROUTES) if not w.subresource] == ["POST"]
    assert [w.method for w in c.emu.writes_to(REVISIONS) if not w.subresource] == ["POST"]

    # Before any pod is ready the revision is deploying; the status subresource says so.
    rev = c.emu.get(REVISIONS, "default", "hello-00001")
    assert cond(rev, "Ready")["status"] == "Unknown"
    assert rev["status"]["desiredReplicas"] == 1

    # The cluster brings a pod up: ready endpoint -> Revision Ready -> latest ready -> routed.
    c.pods_ready("hello-00001", ["10.0.0.5"])
    key = RevisionKey("default", "hello-00001")
    await eventually(lambda: c.runtime.ready_addresses(key) == [Address("10.0.0.5", 8013)], message="endpoints")
    svc = await eventually(
        lambda: (s := c.emu.get(SERVICES, "default", "hello"))
        and s.get("status", {}).get("latestReadyRevisionName") == "hello-00001"
        and s,
        message="Service status",
    )
    rev = c.emu.get(REVISIONS, "default", "hello-00001")
    assert cond(rev, "Ready")["status"] == "True"
    assert (rev["status"]["actualReplicas"], rev["status"]["readyReplicas"]) == (1, 1)
    assert svc["status"]["url"] == "http://hello.default.localhost:8080"
    assert svc["status"]["traffic"] == [{"revisionName": "hello-00001", "percent": 100, "latestRevision": True}]
    assert c.controller.endpoints_of(key) == [Address("10.0.0.5", 8013)]
    # A restarted controller must still know the revision was once ready (scale to zero).
    await eventually(
        lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")["metadata"]["annotations"].get(
            ko.ANNOTATION_EVER_READY
        )
        == "true",
        message="ever-ready annotation",
    )


# ------------------------------------------------------------------------------- new revision


async def test_new_revision_gets_a_second_deployment_and_the_old_one_scales_down(cluster):
    c = cluster
    await hello_ready(c)
    v2 = copy.deepcopy(HELLO)
    v2["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "v2"
    c.emu.apply(SERVICES, v2)  # kubectl apply of a changed template

    cfg = await eventually(
        lambda: (x := c.emu.get(CONFIGURATIONS, "default", "hello")) and x["metadata"]["generation"] == 2 and x,
        message="Configuration generation 2",
    )
    assert cfg["spec"]["template"] == v2["spec"]["template"]
    dep2 = await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00002-deployment"), message="2nd Deployment")
    rev2 = c.emu.get(REVISIONS, "default", "hello-00002")
    assert rev2["metadata"]["labels"]["serving.knative.dev/configurationGeneration"] == "2"
    assert dep2["spec"]["replicas"] == 1
    assert dep2["spec"]["template"]["spec"]["containers"][0]["env"][0] == {"name": "TARGET", "value": "v2"}
    # The old revision serves until the new one is ready.
    assert c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")["spec"]["replicas"] == 1

    c.pods_ready("hello-00002", ["10.0.0.6"])
    await eventually(
        lambda: c.emu.get(SERVICES, "default", "hello")["status"]["latestReadyRevisionName"] == "hello-00002",
        message="hello-00002 latest ready",
    )
    # hello-00001 is neither routed nor the latest: its Deployment goes to 0 replicas.
    await eventually(
        lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")["spec"]["replicas"] == 0,
        message="hello-00001 scaled to 0",
    )
    scales = [w for w in c.emu.writes_to(DEPLOYMENTS, name="hello-00001-deployment") if w.subresource == "scale"]
    assert [(w.method, w.content_type, w.body) for w in scales] == [
        ("PATCH", "application/merge-patch+json", {"spec": {"replicas": 0}})
    ]
    route = c.emu.get(ROUTES, "default", "hello")
    assert route["status"]["traffic"] == [{"revisionName": "hello-00002", "percent": 100, "latestRevision": True}]


# ------------------------------------------------------------------------------- traffic


async def test_traffic_change_updates_the_route_and_scales_the_pinned_revision_back(cluster):
    c = cluster
    await hello_ready(c)
    v2 = copy.deepcopy(HELLO)
    v2["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "v2"
    c.emu.apply(SERVICES, v2)
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00002-deployment"), message="2nd Deployment")
    c.pods_ready("hello-00002", ["10.0.0.6"])
    await eventually(
        lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")["spec"]["replicas"] == 0,
        message="hello-00001 scaled to 0",
    )
    c.pods_ready("hello-00001", [])

    split = copy.deepcopy(v2)
    split["spec"]["traffic"] = [
        {"revisionName": "hello-00001", "percent": 40, "tag": "old"},
        {"latestRevision": True, "percent": 60},
    ]
    c.emu.apply(SERVICES, split)

    route = await eventually(
        lambda: (x := c.emu.get(ROUTES, "default", "hello")) and len(x["spec"]["traffic"]) == 2 and x,
        message="Route spec",
    )
    assert route["spec"]["traffic"] == [
        {"tag": "old", "revisionName": "hello-00001", "percent": 40},
        {"configurationName": "hello", "latestRevision": True, "percent": 60},
    ]
    assert route["metadata"]["generation"] == 2
    # Routed again: hello-00001 is scaled back up (initial scale, no decision yet).
    await eventually(
        lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")["spec"]["replicas"] == 1,
        message="hello-00001 scaled back to 1",
    )
    c.pods_ready("hello-00001", ["10.0.0.7"])
    route = await eventually(
        lambda: (x := c.emu.get(ROUTES, "default", "hello")) and len(x["status"].get("traffic", [])) == 2 and x,
        message="Route status traffic",
    )
    assert route["status"]["traffic"] == [
        {
            "tag": "old",
            "revisionName": "hello-00001",
            "latestRevision": False,
            "percent": 40,
            "url": "http://old-hello.default.localhost:8080",
        },
        {"revisionName": "hello-00002", "percent": 60, "latestRevision": True},
    ]
    svc = await eventually(
        lambda: (s := c.emu.get(SERVICES, "default", "hello")) and len(s["status"].get("traffic", [])) == 2 and s,
        message="Service status traffic",
    )
    assert svc["status"]["traffic"] == route["status"]["traffic"]
    scales = [
        w.body["spec"]["replicas"]
        for w in c.emu.writes_to(DEPLOYMENTS, name="hello-00001-deployment")
        if w.subresource == "scale"
    ]
    assert scales == [0, 1]


# ------------------------------------------------------------------------------- scale to zero


async def test_scale_decisions_set_replicas_down_to_zero_and_back(cluster):
    c = cluster
    await hello_ready(c)
    key = RevisionKey("default", "hello-00001")
    name = "hello-00001-deployment"
    await eventually(lambda: key in c.scaling.specs and c.scaling.specs[key].reachable, message="registered")

    c.scaling.decisions[key] = Decision(desired=0, stable_value=0.0)
    c.controller.trigger()
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", name)["spec"]["replicas"] == 0, message="replicas 0")
    c.pods_ready("hello-00001", [])
    rev = await eventually(
        lambda: (x := c.emu.get(REVISIONS, "default", "hello-00001"))
        and x["status"].get("desiredReplicas", 0) == 0
        and x["status"].get("readyReplicas", 0) == 0
        and x,
        message="revision status at zero",
    )
    # Scaled to zero, still Ready (it was ready once), not Active.
    assert cond(rev, "Ready")["status"] == "True"
    assert (cond(rev, "Active")["status"], cond(rev, "Active")["reason"]) == ("False", "NoTraffic")
    assert c.runtime.ready_addresses(key) == []
    assert c.emu.get(SERVICES, "default", "hello")["status"]["latestReadyRevisionName"] == "hello-00001"

    c.scaling.decisions[key] = Decision(desired=3, stable_value=14.0, requests_per_second=20.0)
    c.controller.trigger()
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", name)["spec"]["replicas"] == 3, message="replicas 3")
    c.pods_ready("hello-00001", ["10.0.0.8", "10.0.0.9", "10.0.0.10"])
    await eventually(lambda: len(c.runtime.ready_addresses(key)) == 3, message="3 endpoints")
    rev = await eventually(
        lambda: (x := c.emu.get(REVISIONS, "default", "hello-00001")) and x["status"].get("readyReplicas") == 3 and x,
        message="3 ready",
    )
    assert rev["status"]["stableValue"] == 14.0
    scales = [w.body for w in c.emu.writes_to(DEPLOYMENTS, name=name) if w.subresource == "scale"]
    assert scales == [{"spec": {"replicas": 0}}, {"spec": {"replicas": 3}}]
    # The Deployment object itself was never rewritten, only scaled (and marked ever-ready).
    assert [w.method for w in c.emu.writes_to(DEPLOYMENTS, name=name) if not w.subresource] == ["PATCH"]


async def test_a_new_sidecar_image_replaces_the_pod_template_and_keeps_the_replicas(cluster):
    c = cluster
    await hello_ready(c)
    key = RevisionKey("default", "hello-00001")
    c.scaling.decisions[key] = Decision(desired=2)
    c.controller.trigger()
    name = "hello-00001-deployment"
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", name)["spec"]["replicas"] == 2, message="2 replicas")
    before = c.emu.get(DEPLOYMENTS, "default", name)

    c.runtime._sidecar = dataclasses.replace(SIDECAR, image="registry.example/ebb:0.2.0")  # a controller upgrade
    c.controller.trigger()
    after = await eventually(
        lambda: (d := c.emu.get(DEPLOYMENTS, "default", name))
        and d["spec"]["template"]["spec"]["containers"][1]["image"] == "registry.example/ebb:0.2.0"
        and d,
        message="new queue image",
    )
    assert after["spec"]["replicas"] == 2
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["metadata"]["annotations"][ko.ANNOTATION_EVER_READY] == "true"
    assert after["metadata"]["annotations"][ko.ANNOTATION_POD_TEMPLATE_HASH] != (
        before["metadata"]["annotations"][ko.ANNOTATION_POD_TEMPLATE_HASH]
    )
    (put,) = [w for w in c.emu.writes_to(DEPLOYMENTS, name=name) if w.method == "PUT"]
    # A conditional replace: it names the version it was built from.
    assert int(put.body["metadata"]["resourceVersion"]) >= int(before["metadata"]["resourceVersion"])


async def test_endpoints_follow_readiness_and_termination(cluster):
    c = cluster
    await hello_ready(c)
    key = RevisionKey("default", "hello-00001")
    c.endpoints("hello-00001", [("10.0.0.5", True), ("10.0.0.6", False)])
    await eventually(lambda: c.runtime.not_ready_addresses(key) == [Address("10.0.0.6", 8013)], message="not ready")
    assert c.runtime.ready_addresses(key) == [Address("10.0.0.5", 8013)]
    # What activators are told.
    await eventually(
        lambda: (c.controller._endpoints[key].addresses, c.controller._endpoints[key].not_ready_addresses)
        == (("10.0.0.5:8013",), ("10.0.0.6:8013",)),
        message="endpoints published",
    )
    # A terminating pod (still serving what it holds) is in neither list.
    c.endpoints("hello-00001", [("10.0.0.5", True), ("10.0.0.6", False, True)])
    await eventually(lambda: c.runtime.not_ready_addresses(key) == [], message="terminating")
    assert c.runtime.ready_addresses(key) == [Address("10.0.0.5", 8013)]


# ------------------------------------------------------------------------------- deletion


async def test_deleting_the_service_removes_children_deployments_and_releases_finalizers(cluster):
    c = cluster
    await hello_ready(c)
    v2 = copy.deepcopy(HELLO)
    v2["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/knative/helloworld-go:v2"
    c.emu.apply(SERVICES, v2)
    await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00002-deployment"), message="2nd Deployment")
    first_write = len(c.emu.writes)

    c.emu.delete(SERVICES, "default", "hello")  # kubectl delete ksvc hello

    for resource in (CONFIGURATIONS, ROUTES, REVISIONS, DEPLOYMENTS, CORE_SERVICES):
        await eventually(lambda r=resource: c.emu.list(r) == [], message=f"{resource} empty")
    writes = [(w.method, w.resource, w.name, w.subresource) for w in c.emu.writes[first_write:]]
    deletes = sorted(w for w in writes if w[0] == "DELETE")
    assert deletes == [
        ("DELETE", DEPLOYMENTS, "hello-00001-deployment", ""),
        ("DELETE", DEPLOYMENTS, "hello-00002-deployment", ""),
        ("DELETE", CONFIGURATIONS, "hello", ""),
        ("DELETE", REVISIONS, "hello-00001", ""),
        ("DELETE", REVISIONS, "hello-00002", ""),
        ("DELETE", ROUTES, "hello", ""),
        ("DELETE", CORE_SERVICES, "hello-00001-private", ""),
        ("DELETE", CORE_SERVICES, "hello-00002-private", ""),
    ]
    # Each Revision went away only after its Deployment: the finalizer was removed last.
    for rev in ("hello-00001", "hello-00002"):
        release = [
            i for i, w in enumerate(c.emu.writes) if w.resource == REVISIONS and w.name == rev and w.method == "PATCH"
        ]
        assert len(release) == 1
        patch = c.emu.writes[release[0]]
        assert patch.content_type == "application/merge-patch+json"
        assert patch.body["metadata"]["finalizers"] == []
        dep_deleted = next(
            i
            for i, w in enumerate(c.emu.writes)
            if w.method == "DELETE" and w.resource == DEPLOYMENTS and w.name == ko.deployment_name(rev)
        )
        assert dep_deleted < release[0]
    await eventually(lambda: c.store.finalizers_removed == 2, message="2 finalizers removed")
    await eventually(lambda: c.runtime.revisions() == set() and c.scaling.known() == set(), message="forgotten")
    assert c.store.list("Revision") == [] and c.store.list("Service") == []


async def test_the_latest_revision_deleted_with_kubectl_goes_after_its_deployment_and_comes_back(cluster):
    c = cluster
    await hello_ready(c)
    old = c.emu.get(REVISIONS, "default", "hello-00001")
    old_dep = c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    first_write = len(c.emu.writes)
    # The finalizer holds it: kubectl delete only marks it...
    c.emu.delete(REVISIONS, "default", "hello-00001")
    # ...the controller deletes its Deployment and Service, then releases it; the
    # Configuration's generation has no revision any more, so it is stamped again (Knative).
    new_rev = await eventually(
        lambda: (x := c.emu.get(REVISIONS, "default", "hello-00001")) and x["metadata"]["uid"] != old["metadata"]["uid"] and x,
        message="revision stamped again",
    )
    new_dep = await eventually(
        lambda: (x := c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment"))
        and x["metadata"]["uid"] != old_dep["metadata"]["uid"]
        and x,
        message="new Deployment",
    )
    assert new_dep["metadata"]["ownerReferences"][0]["uid"] == new_rev["metadata"]["uid"]
    writes = [(w.method, w.resource, w.name, w.subresource) for w in c.emu.writes[first_write:]]
    order = [
        writes.index(("DELETE", DEPLOYMENTS, "hello-00001-deployment", "")),
        writes.index(("DELETE", CORE_SERVICES, "hello-00001-private", "")),
        writes.index(("PATCH", REVISIONS, "hello-00001", "")),  # the finalizer released
        writes.index(("POST", REVISIONS, "", "")),
        writes.index(("POST", DEPLOYMENTS, "", "")),
    ]
    assert order[:2] < order[2:3] and order[2] < order[3] < order[4]


# ------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "container_status,reason,message",
    [
        (
            {
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "panic: no TARGET"}},
            },
            "ExitCode1",
            "Container failed with: panic: no TARGET",
        ),
        (
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope"'}}},
            "ImagePullBackOff",
            'Back-off pulling image "nope"',
        ),
    ],
)
async def test_pod_failures_fail_the_revision_with_the_kubelets_reason(cluster, container_status, reason, message):
    c = cluster
    c.emu.apply(SERVICES, HELLO)
    dep = await eventually(lambda: c.emu.get(DEPLOYMENTS, "default", "hello-00001-deployment"), message="Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c.emu.apply(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hello-00001-deployment-5d9c7-abcde", "namespace": "default", "labels": labels},
            "spec": copy.deepcopy(dep["spec"]["template"]["spec"]),
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "user-container",
                        "ready": False,
                        "restartCount": 3,
                        "image": "ghcr.io/knative/helloworld-go:latest",
                        "imageID": "",
                        **container_status,
                    },
                    {
                        "name": "queue-proxy",
                        "ready": False,
                        "restartCount": 0,
                        "image": SIDECAR.image,
                        "imageID": "",
                        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                    },
                ],
            },
        },
    )
    rev = await eventually(
        lambda: (x := c.emu.get(REVISIONS, "default", "hello-00001")) and cond(x, "Ready")["status"] == "False" and x,
        message="revision failed",
    )
    assert (cond(rev, "Ready")["reason"], cond(rev, "Ready")["message"]) == (reason, message)
    assert cond(rev, "ContainerHealthy")["reason"] == reason
    cfg = c.emu.get(CONFIGURATIONS, "default", "hello")
    assert cond(cfg, "Ready")["reason"] == "RevisionFailed"


# ------------------------------------------------------------------------------- the store itself


async def test_store_semantics_match_the_sqlite_store(cluster):
    c = cluster
    store = c.store
    svc = new("Service")
    svc.metadata.name = "s"
    svc.metadata.namespace = "team"
    svc.metadata.labels["a"] = "1"
    svc.spec.template.spec.containers.add(image="img:1")
    stored, changed = store.put(svc, now_s=0)
    assert changed and stored.metadata.uid and stored.metadata.generation == 1
    again, changed = store.put(svc, now_s=0)
    assert not changed and again.metadata.resource_version == stored.metadata.resource_version

    stored.status.url = "http://s.team.localhost:8080"
    store.put_status(stored)
    relabelled = new("Service")
    relabelled.CopyFrom(svc)
    relabelled.metadata.labels.clear()
    relabelled.metadata.labels["b"] = "2"
    out, changed = store.put(relabelled, now_s=0)
    assert changed and out.metadata.generation == 1  # metadata only: the server keeps the generation
    assert dict(out.metadata.labels) == {"b": "2"}  # replaced, not merged
    assert out.status.url == "http://s.team.localhost:8080"  # status kept
    relabelled.spec.template.spec.containers[0].image = "img:2"
    out, changed = store.put(relabelled, now_s=0)
    assert changed and out.metadata.generation == 2
    assert store.get("Service", "team", "s") == out
    assert [s.metadata.name for s in store.list("Service", "team")] == ["s"]

    # A write by someone else arrives through the watch.
    c.emu.set_status(SERVICES, "team", "s", {"url": "http://elsewhere"})
    await eventually(lambda: store.get("Service", "team", "s").status.url == "http://elsewhere", message="watch")

    # A stale cache meets 409 Conflict: the store reads the object again and retries.
    stale_rv = store._parsed[Key("Service", "team", "s")].raw["metadata"]["resourceVersion"]
    current = c.emu.get(SERVICES, "team", "s")
    current["metadata"]["annotations"] = {"touched": "by-kubectl"}
    c.emu.apply(SERVICES, current)
    store._parsed[Key("Service", "team", "s")].raw["metadata"]["resourceVersion"] = stale_rv  # the watch lags
    puts = len([w for w in c.emu.writes_to(SERVICES, name="s") if w.method == "PUT"])
    relabelled.spec.template.spec.containers[0].image = "img:3"
    out, changed = store.put(relabelled, now_s=0)
    assert changed and out.metadata.generation == 3
    sent = [w.body["metadata"]["resourceVersion"] for w in c.emu.writes_to(SERVICES, name="s") if w.method == "PUT"]
    assert len(sent) == puts + 2 and sent[-2] == stale_rv and sent[-1] != stale_rv

    deleted = store.delete("Service", "team", "s")
    assert deleted is not None and store.get("Service", "team", "s") is None
    assert c.emu.get(SERVICES, "team", "s") is None
    assert store.delete("Service", "team", "s") is None


async def test_informers_list_again_after_410_gone_and_catch_up(cluster):
    c = cluster
    await hello_ready(c)
    lists = {kind: i.lists for kind, i in c.store.informers.items()}
    # While the watches are down the history is compacted and someone deletes the Route.
    c.emu.compact()
    c.emu.delete(ROUTES, "default", "hello")
    c.emu.break_watches()
    # The informers get 410 Gone, list again, see the Route gone; the controller recreates it.
    await eventually(lambda: all(i.lists > lists[k] for k, i in c.store.informers.items() if k == "Route"), message="relist")
    route = await eventually(lambda: c.emu.get(ROUTES, "default", "hello"), message="Route recreated")
    assert route["spec"]["traffic"] == [{"configurationName": "hello", "latestRevision": True, "percent": 100}]
    assert c.store.get("Route", "default", "hello").metadata.uid == route["metadata"]["uid"]
    assert is_ready(c.store.get("Revision", "default", "hello-00001"))

