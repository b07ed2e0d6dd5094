"""The controller's fast path: a new scaling decision starts instances before the pass."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import Ads, FakeScaling

from ebb.controller import reconcile as rc
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
    "spec": {"template": {"spec": {"containers": [{"image": "hello", "command": ["python", "app.py"]}]}}},
}


class FakeRuntime:
    """Counts instances per revision; every `ensure` is recorded."""

    def __init__(self) -> None:
        self.actual: dict[RevisionKey, int] = {}
        self.calls: list[tuple[RevisionKey, int]] = []
        self.listener = lambda: None

    def set_listener(self, callback) -> None:
        self.listener = callback

    def revisions(self) -> set[RevisionKey]:
        return {k for k, n in self.actual.items() if n}

    def view(self, key: RevisionKey) -> InstanceView:
        n = self.actual.get(key, 0)
        return InstanceView(desired=n, actual=n)

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        return []

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        return [Address("127.0.0.1", 40000 + i) for i in range(self.actual.get(key, 0))]

    async def ensure(self, key, spec, count, *, now_s) -> None:
        self.calls.append((key, count))
        self.actual[key] = count

    async def remove(self, key) -> None:
        self.actual.pop(key, None)


@pytest.fixture
async def at_zero(tmp_path):
    """A controller whose hello revision has been scaled to zero by a decision."""
    store = SqliteStore(tmp_path / "ebb.db")
    store.put(from_json("Service", json.dumps(SERVICE)), now_s=0.0)
    runtime, scaling = FakeRuntime(), FakeScaling()
    controller = Controller(
        store, runtime, Ads(), gateway_port=8080, scaling=scaling, activator=Address("127.0.0.1", 8012)
    )
    scaling.decisions[KEY] = Decision(desired=0)
    for _ in range(4):  # the revision appears, then the gateway acks the activator
        await controller.reconcile_once()
        await asyncio.sleep(0)
    assert runtime.actual.get(KEY, 0) == 0
    runtime.calls.clear()
    return controller, runtime, scaling


async def test_a_decision_to_scale_up_starts_instances_and_lists_them(at_zero):
    controller, runtime, scaling = at_zero
    updates = controller.watch_endpoints()
    updates.get_nowait()  # the snapshot
    scaling.decisions[KEY] = Decision(desired=2)
    await controller.scale_up_now()
    assert runtime.calls == [(KEY, 2)]
    changed, removed, snapshot = updates.get_nowait()
    assert not snapshot and removed == []
    assert changed[KEY].not_ready_addresses == ("127.0.0.1:40000", "127.0.0.1:40001")


async def test_nothing_to_add_means_no_call(at_zero):
    controller, runtime, scaling = at_zero
    await controller.scale_up_now()  # still desired 0
    scaling.decisions[KEY] = Decision(desired=1)
    runtime.actual[KEY] = 3  # already more than asked: scaling down is the pass's job
    await controller.scale_up_now()
    assert runtime.calls == []


async def test_bounds_of_the_last_pass_apply(at_zero, monkeypatch):
    controller, runtime, scaling = at_zero
    monkeypatch.setattr(rc, "desired_instances", lambda *a, **k: 1)
    scaling.decisions[KEY] = Decision(desired=5)
    await controller.scale_up_now()
    assert runtime.calls == [(KEY, 1)]


async def one_loop_pass(controller: Controller) -> None:
    passes = controller.passes
    controller.trigger()
    for _ in range(200):
        await asyncio.sleep(0.005)
        if controller.passes > passes:
            return
    raise AssertionError("no pass ran")


async def test_the_loop_takes_the_fast_path_only_when_no_resource_changed(at_zero, monkeypatch):
    controller, runtime, scaling = at_zero
    fast: list[int] = []

    async def record() -> None:
        fast.append(controller.passes)

    monkeypatch.setattr(controller, "scale_up_now", record)
    task = asyncio.ensure_future(controller.run())
    try:
        controller._on_store_event(None)  # e.g. the service was just updated
        await one_loop_pass(controller)
        assert fast == []
        await one_loop_pass(controller)  # nothing changed since that pass began
        assert len(fast) == 1
    finally:
        controller.stop()
        await task
