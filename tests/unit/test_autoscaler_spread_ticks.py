"""Spread ticks: each revision belongs to one slice, one round of slices decides every
revision exactly once, the poke stays immediate; and the process's GC settings and pause
metric (in-process, fake clock, no gRPC)."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.autoscaler.main import GC_THRESHOLD0, settle_gc
from ebb.autoscaler.metrics import GcPauses
from ebb.autoscaler.multiscaler import RevisionSpec
from ebb.autoscaler.server import AutoscalerServer, _Watcher
from ebb.autoscaler.settings import AutoscalerSettings

NAMESPACE = "default"


def names(n: int) -> list[str]:
    return [f"rev-{i:03d}" for i in range(n)]


def spread_server(slices: int, now: list[float]) -> AutoscalerServer:
    return AutoscalerServer(
        AutoscalerSettings(), tick_slices=slices, clock=lambda: now[0], wall_clock=lambda: 0.0
    )


def feed(server: AutoscalerServer, revisions: list[str], concurrency: float = 3.0) -> None:
    server.take_stats(
        [
            pb.Stat(
                instance=f"{name}-i",
                revision=pb.RevisionKey(namespace=NAMESPACE, name=name),
                average_concurrency=concurrency,
            )
            for name in revisions
        ]
    )


def loaded_server(slices: int, revisions: list[str]) -> AutoscalerServer:
    """A server with `revisions` registered (1 ready, reachable), one stat each, a second
    later."""
    now = [1000.0]
    server = spread_server(slices, now)
    for name in revisions:
        server.register(RevisionSpec(NAMESPACE, name, ready_instances=1, reachable=True))
    feed(server, revisions)
    now[0] += 1.0
    return server


def round_cpu_count(server: AutoscalerServer) -> float:
    return server.registry.get_sample_value("ebb_autoscaler_round_cpu_seconds_count") or 0.0


def test_a_round_of_slices_decides_every_revision_exactly_once():
    revisions = names(10)
    server = loaded_server(3, revisions)
    decided: list[tuple[str, str]] = []
    server._decide = lambda key, _now, _at: decided.append(key) or 0  # type: ignore[method-assign]
    for index in range(3):
        server.tick_slice(index)
        if index < 2:
            assert round_cpu_count(server) == 0  # the round is not over yet
    assert sorted(decided) == [(NAMESPACE, name) for name in revisions]  # each once
    assert round_cpu_count(server) == 1
    # 10 revisions over 3 slices, each to the least full: 4, 3, 3.
    assert sorted(len(s) for s in server._slices) == [3, 3, 4]


def test_slices_decide_like_one_tick():
    """The same stats and times give the same verdicts whether decided in one tick or in a
    round of slices (the KPA tables are not touched by spreading)."""
    verdicts = {}
    for slices in (1, 4):
        now = [1000.0]
        server = spread_server(slices, now)
        revisions = names(9)
        for i, name in enumerate(revisions):
            server.register(
                RevisionSpec(NAMESPACE, name, ready_instances=1 + i % 3, reachable=True)
            )
        for second in range(8):
            feed(server, revisions, concurrency=2.0 + second * 3)
            now[0] += 1.0
            if second % 2:
                for index in range(slices):
                    server.tick_slice(index)
        verdicts[slices] = server.scaler.latest()
    assert verdicts[1] == verdicts[4]
    assert any(v.desired > 1 for v in verdicts[4])


def test_register_fills_the_least_full_slice_and_unregister_frees_it():
    now = [1000.0]
    server = spread_server(2, now)
    for name in names(4):
        server.register(RevisionSpec(NAMESPACE, name))
    server.unregister((NAMESPACE, "rev-000"))
    server.unregister((NAMESPACE, "rev-002"))
    assert [len(s) for s in server._slices] == [0, 2]
    server.register(RevisionSpec(NAMESPACE, "late"))
    server.register(RevisionSpec(NAMESPACE, "late", ready_instances=3))  # re-registration
    assert [list(s) for s in server._slices][0] == [(NAMESPACE, "late")]
    assert sum(len(s) for s in server._slices) == 3


def test_tick_still_decides_every_revision_and_is_a_round():
    server = loaded_server(4, names(6))
    server.tick()
    assert server.counters["decisions"] == 6
    assert round_cpu_count(server) == 1


def test_poke_is_immediate_with_spread_ticks():
    now = [1000.0]
    server = spread_server(4, now)
    server.register(RevisionSpec(NAMESPACE, "cold", ready_instances=0, reachable=True))
    watcher = _Watcher("")
    server._watchers.add(watcher)
    feed(server, ["cold"], concurrency=1.0)  # load for a revision at zero: no tick needed
    assert server.counters["pokes"] == 1
    assert server.counters["ticks"] == 0
    assert watcher.pending[(NAMESPACE, "cold")].desired_scale == 1


def test_tick_slices_must_be_positive():
    with pytest.raises(ValueError, match="tick_slices = 0, must be at least 1"):
        AutoscalerServer(AutoscalerSettings(), tick_slices=0)


@pytest.fixture
def gc_state():
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settle_gc_freezes_start_up_objects_and_raises_the_young_threshold(gc_state):
    _, threshold1, threshold2 = gc.get_threshold()
    settle_gc()
    assert gc.get_threshold() == (GC_THRESHOLD0, threshold1, threshold2)
    assert gc.get_freeze_count() > 0


def test_gc_pauses_are_observed_by_generation_until_removed():
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    pauses.install()
    pauses.install()  # idempotent: one callback
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        pauses.remove()
    count = registry.get_sample_value

    def seen(generation: str) -> float:
        return count("ebb_autoscaler_gc_pause_seconds_count", {"generation": generation}) or 0

    assert seen("2") == 1
    assert seen("0") >= 1
    gc.collect(2)
    assert seen("2") == 1  # removed: no longer observed
