"""Through the controller's pass: a revision name that is taken, traffic pinned to a revision
still deploying (the last good gateway config serves meanwhile, and the revision is started),
and a once-ready revision that crash-loops."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import Ads, FakeScaling

from ebb.controller import manager
from ebb.controller.manager import Controller
from ebb.controller.reconcile import Decision, InstanceView
from ebb.controller.resources import condition, from_json
from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.store import SqliteStore

ACTIVATOR = Address("127.0.0.1", 8012)


def key(name: str) -> RevisionKey:
    return RevisionKey("default", name)


def service(env: str = "1", *, name: str = "", traffic=None, min_scale: int = 0) -> dict:
    template = {"spec": {"containers": [{"image": "hello", "command": ["python", "app.py"],
                                        "env": [{"name": "V", "value": env}]}]}}
    if name:
        template["metadata"] = {"name": name}
    if min_scale:
        template.setdefault("metadata", {})["annotations"] = {"autoscaling.knative.dev/min-scale": str(min_scale)}
    spec = {"template": template}
    if traffic is not None:
        spec["traffic"] = traffic
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"}, "spec": spec}


class FakeRuntime:
    """Instances start as asked; the test says which revisions have ready ones, and which
    crash (exited, none ready, with the runtime's failure reason)."""

    def __init__(self) -> None:
        self.actual: dict[RevisionKey, int] = {}
        self.ready: set[RevisionKey] = set()
        self.ever_ready: set[RevisionKey] = set()
        self.crashed: dict[RevisionKey, str] = {}

    def set_listener(self, callback) -> None:
        pass

    def revisions(self) -> set[RevisionKey]:
        return {k for k, n in self.actual.items() if n}

    def view(self, key: RevisionKey) -> InstanceView:
        n = self.actual.get(key, 0)
        if key in self.crashed:
            return InstanceView(desired=n, actual=0, ever_ready=key in self.ever_ready,
                                failure_reason=self.crashed[key], failure_message="Container exited with code 3.")
        ready = n if key in self.ready else 0
        if ready:
            self.ever_ready.add(key)
        return InstanceView(desired=n, actual=n, ready=ready, ever_ready=key in self.ever_ready)

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        return [Address("127.0.0.1", 40000)] if self.view(key).ready else []

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        return []

    async def ensure(self, key, spec, count, *, now_s) -> None:
        self.actual[key] = count

    async def remove(self, key) -> None:
        self.actual.pop(key, None)


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "ebb.db")
    yield store
    store.close()


@pytest.fixture
def pushed(monkeypatch):
    """The gateway specs the controller builds, in order."""
    specs = []
    build = manager.build_snapshot

    def record(spec):
        specs.append(spec)
        return build(spec)

    monkeypatch.setattr(manager, "build_snapshot", record)
    return specs


def apply(store, manifest: dict) -> None:
    store.put(from_json("Service", json.dumps(manifest)), now_s=0.0)


def ready_of(store, kind: str, name: str = "hello", cond_type: str = "Ready"):
    cond = condition(store.get(kind, "default", name), cond_type)
    return (cond.status, cond.reason, cond.message) if cond else None


def main_host_weights(spec) -> list[tuple[str, int]]:
    (vh,) = [v for v in spec.virtual_hosts if v.name == "default/hello"]
    return [(t.cluster, t.weight) for t in vh.targets]


async def passes(controller: Controller, n: int = 2) -> None:
    for _ in range(n):
        await controller.reconcile_once()
        await asyncio.sleep(0)  # the gateway's ACK (the fake ACKs every snapshot at once)
        await asyncio.sleep(0)


async def test_traffic_pinned_to_a_deploying_revision_waits_and_the_last_good_config_serves(store, pushed):
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = Controller(store, runtime, Ads(), gateway_port=8080, scaling=scaling, activator=ACTIVATOR)
    apply(store, service("1"))
    await passes(controller)
    runtime.ready.add(key("hello-00001"))
    scaling.decisions[key("hello-00001")] = Decision(desired=1, excess_burst_capacity=10)
    await passes(controller, 3)
    assert ready_of(store, "Service")[0] == "True"
    assert main_host_weights(pushed[-1]) == [("default/hello-00001", 100)]

    # A new template, and half the traffic pinned to its revision while it is still starting.
    apply(store, service("2", traffic=[{"revisionName": "hello-00001", "percent": 50},
                                       {"revisionName": "hello-00002", "percent": 50}]))
    await passes(controller, 3)
    assert runtime.actual.get(key("hello-00002")) == 1  # started: it is named by traffic
    assert ready_of(store, "Route", cond_type="AllTrafficAssigned") == (
        "Unknown", "RevisionMissing", 'Revision "hello-00002" is not yet ready.')
    assert ready_of(store, "Route")[0] == ready_of(store, "Service")[0] == "Unknown"
    assert main_host_weights(pushed[-1]) == [("default/hello-00001", 100)]  # the last good config
    assert runtime.actual.get(key("hello-00001")) == 1  # ...whose revision keeps running

    runtime.ready.add(key("hello-00002"))
    await passes(controller, 3)
    assert ready_of(store, "Route")[0] == ready_of(store, "Service")[0] == "True"
    assert main_host_weights(pushed[-1]) == [("default/hello-00001", 50), ("default/hello-00002", 50)]


async def test_an_old_revision_in_the_last_good_config_keeps_its_instances(store, pushed):
    """hello-00001 is neither latest nor in the new traffic's resolved targets while the
    route waits: the last good config still sends it traffic, so it must keep running."""
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = Controller(store, runtime, Ads(), gateway_port=8080, scaling=scaling, activator=ACTIVATOR)
    apply(store, service("1", traffic=[{"revisionName": "hello-00001", "percent": 100}]))
    await passes(controller)
    runtime.ready.add(key("hello-00001"))
    scaling.decisions[key("hello-00001")] = Decision(desired=1, excess_burst_capacity=10)
    await passes(controller, 3)
    apply(store, service("2", traffic=[{"revisionName": "hello-00001", "percent": 100}]))
    await passes(controller, 2)
    apply(store, service("3", traffic=[{"revisionName": "hello-00002", "percent": 100}]))
    await passes(controller, 3)  # hello-00002 is not ready; hello-00003 is the latest
    assert ready_of(store, "Route")[0] == "Unknown"
    assert main_host_weights(pushed[-1]) == [("default/hello-00001", 100)]
    assert runtime.actual.get(key("hello-00001")) == 1
    assert runtime.actual.get(key("hello-00002")) == 1


async def test_a_taken_revision_name_shows_in_the_service_status(store):
    runtime = FakeRuntime()
    controller = Controller(store, runtime, Ads(), gateway_port=8080)
    apply(store, service("1", name="hello-a"))
    await passes(controller)
    runtime.ready.add(key("hello-a"))
    apply(store, service("2", name="hello-b"))
    await passes(controller)
    runtime.ready.add(key("hello-b"))
    await passes(controller)
    assert ready_of(store, "Service")[0] == "True"

    apply(store, service("3", name="hello-a"))  # hello-a's name, another template
    await passes(controller)
    svc = store.get("Service", "default", "hello")
    assert ready_of(store, "Service") == ("False", "RevisionFailed",
        'Revision creation failed with message: revisions.serving.knative.dev "hello-a" already exists.')
    assert (svc.status.latest_created_revision_name, svc.status.latest_ready_revision_name) == ("hello-b", "hello-b")
    assert sorted(v.metadata.name for v in store.list("Revision")) == ["hello-a", "hello-b"]

    apply(store, service("1", name="hello-a"))  # hello-a's very template: a rollback
    await passes(controller)
    svc = store.get("Service", "default", "hello")
    assert ready_of(store, "Service")[0] == "True"
    assert (svc.status.latest_created_revision_name, svc.status.latest_ready_revision_name) == ("hello-a", "hello-a")
    assert [t.revision_name for t in svc.status.traffic] == ["hello-a"]


async def test_a_once_ready_revision_that_crash_loops_is_not_ready_until_it_serves_again(store):
    runtime = FakeRuntime()
    controller = Controller(store, runtime, Ads(), gateway_port=8080)
    apply(store, service("1", min_scale=1))
    await passes(controller)
    runtime.ready.add(key("hello-00001"))
    await passes(controller)
    assert ready_of(store, "Revision", "hello-00001")[0] == "True"

    runtime.crashed[key("hello-00001")] = "ExitCode3"
    await passes(controller)
    assert ready_of(store, "Revision", "hello-00001", "ContainerHealthy") == (
        "False", "ExitCode3", "Container exited with code 3.")
    assert ready_of(store, "Revision", "hello-00001")[:2] == ("False", "ExitCode3")
    assert ready_of(store, "Service")[:2] == ("False", "RevisionFailed")
    svc = store.get("Service", "default", "hello")
    assert svc.status.latest_ready_revision_name == "hello-00001"  # its traffic stays
    assert [t.revision_name for t in svc.status.traffic] == ["hello-00001"]

    del runtime.crashed[key("hello-00001")]
    await passes(controller)
    assert ready_of(store, "Revision", "hello-00001")[0] == ready_of(store, "Service")[0] == "True"
