"""initial-scale through the controller: the floor until the scale target is initialized,
kept in the revision's status so that a restarted controller knows it."""

from __future__ import annotations

import json

import pytest
from helpers import Ads, FakeScaling

from ebb.controller.manager import Controller
from ebb.controller.reconcile import Decision, InstanceView
from ebb.controller.resources import from_json
from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.store import SqliteStore

KEY = RevisionKey("default", "hello-00001")
SERVICE = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Service",
    "metadata": {"name": "hello", "namespace": "default"},
    "spec": {
        "template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/initial-scale": "5"}},
            "spec": {"containers": [{"image": "hello", "command": ["python", "app.py"]}]},
        }
    },
}


class FakeRuntime:
    """Instances per revision, of which the test says how many are ready."""

    def __init__(self, actual: int = 0, ready: int = 0) -> None:
        self.actual: dict[RevisionKey, int] = {KEY: actual} if actual else {}
        self.ready: dict[RevisionKey, int] = {KEY: ready} if ready else {}
        self.calls: list[tuple[RevisionKey, int]] = []

    def set_listener(self, callback) -> None:
        pass

    def revisions(self) -> set[RevisionKey]:
        return {k for k, n in self.actual.items() if n}

    def _ready(self, key: RevisionKey) -> int:
        return min(self.ready.get(key, 0), self.actual.get(key, 0))

    def view(self, key: RevisionKey) -> InstanceView:
        n, ready = self.actual.get(key, 0), self._ready(key)
        return InstanceView(desired=n, actual=n, ready=ready, ever_ready=ready > 0)

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        return [Address("127.0.0.1", 40000 + i) for i in range(self._ready(key))]

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        return [Address("127.0.0.1", 41000 + i) for i in range(self.actual.get(key, 0) - self._ready(key))]

    async def ensure(self, key, spec, count, *, now_s) -> None:
        if count != self.actual.get(key, 0):
            self.calls.append((key, count))
        self.actual[key] = count

    async def remove(self, key) -> None:
        self.actual.pop(key, None)


def controller_on(store, runtime: FakeRuntime, scaling: FakeScaling) -> Controller:
    return Controller(store, runtime, Ads(), gateway_port=8080, scaling=scaling, activator=Address("127.0.0.1", 8012))


def revision_status(store):
    return store.get("Revision", KEY.namespace, KEY.name).status


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "ebb.db")
    store.put(from_json("Service", json.dumps(SERVICE)), now_s=0.0)
    yield store
    store.close()


async def test_initial_scale_holds_until_reached_then_is_remembered_across_a_restart(store):
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = controller_on(store, runtime, scaling)
    await controller.reconcile_once()  # no verdict yet: start at the initial scale
    assert runtime.actual[KEY] == 5
    assert revision_status(store).scale_target_initialized is False

    scaling.decisions[KEY] = Decision(desired=1)  # an idle first decision...
    for ready in (1, 4):
        runtime.ready[KEY] = ready
        await controller.reconcile_once()
        assert runtime.actual[KEY] == 5  # ...does not take it down while instances come up
        assert revision_status(store).scale_target_initialized is False
        assert revision_status(store).desired_replicas == 5

    runtime.ready[KEY] = 5
    await controller.reconcile_once()
    assert revision_status(store).scale_target_initialized is True
    assert revision_status(store).desired_replicas == 1
    assert runtime.actual[KEY] == 1

    # A new controller (after a crash): the instance is adopted, no verdict has come yet.
    adopted, fresh_scaling = FakeRuntime(actual=1, ready=1), FakeScaling()
    restarted = controller_on(store, adopted, fresh_scaling)
    await restarted.reconcile_once()
    assert adopted.calls == []  # not pushed back up to 5
    assert revision_status(store).scale_target_initialized is True
    fresh_scaling.decisions[KEY] = Decision(desired=-1)  # a restarted autoscaler, no data yet
    await restarted.reconcile_once()
    assert adopted.calls == []
    fresh_scaling.decisions[KEY] = Decision(desired=0)
    await restarted.reconcile_once()
    assert revision_status(store).desired_replicas == 0  # and it may go to zero


async def test_a_restart_before_the_initial_scale_is_reached_keeps_the_floor(store):
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = controller_on(store, runtime, scaling)
    scaling.decisions[KEY] = Decision(desired=1)
    runtime.ready[KEY] = 2
    await controller.reconcile_once()
    assert runtime.actual[KEY] == 5
    assert revision_status(store).scale_target_initialized is False

    adopted = FakeRuntime(actual=5, ready=3)
    restarted = controller_on(store, adopted, FakeScaling())
    await restarted.reconcile_once()
    assert adopted.actual[KEY] == 5 and adopted.calls == []
    assert revision_status(store).scale_target_initialized is False


async def test_the_fast_path_keeps_the_floor(store):
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = controller_on(store, runtime, scaling)
    scaling.decisions[KEY] = Decision(desired=1)
    await controller.reconcile_once()
    runtime.actual[KEY] = 2  # say two of the five were lost meanwhile
    runtime.calls.clear()
    scaling.decisions[KEY] = Decision(desired=3)
    await controller.scale_up_now()
    assert runtime.calls == [(KEY, 5)]  # the floor, not the decision's 3
