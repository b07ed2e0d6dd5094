"""What AutoscalerServer does with each verdict: publish every change, log the ones that
move desired scale or panic (in-process, fake clock, no gRPC)."""

from __future__ import annotations

import logging

import pytest

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.autoscaler.multiscaler import RevisionSpec
from ebb.autoscaler.server import AutoscalerServer, _Watcher
from ebb.autoscaler.settings import AutoscalerSettings

REV = pb.RevisionKey(namespace="default", name="hello-00001")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "scale decision":
            self.records.append(record)


@pytest.fixture
def decision_log():
    logger = logging.getLogger("ebb.autoscaler")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_ebc_only_changes_are_published_but_not_logged(decision_log):
    now = [1000.0]
    server = AutoscalerServer(AutoscalerSettings(), clock=lambda: now[0], wall_clock=lambda: 0.0)
    server.register(RevisionSpec(REV.namespace, REV.name, ready_instances=1, reachable=True))
    watcher = _Watcher("")
    server._watchers.add(watcher)

    def run(seconds: int, concurrency: float) -> list[pb.ScaleDecision]:
        published = []
        for second in range(seconds):
            server.take_stats([pb.Stat(instance="i1", revision=REV, average_concurrency=concurrency)])
            now[0] += 1.0
            if second % 2:
                server.tick()
                published += watcher.pending.values()
                watcher.pending.clear()
        return published

    first = run(4, 5.0)  # desired 1, EBC 1 x 100 - 211 - 5 = -116
    assert [(d.desired_scale, d.excess_burst_capacity) for d in first] == [(1, -116)]
    assert [(r.desired, r.ebc) for r in decision_log] == [(1, -116)]

    drift = run(4, 6.0)  # the panic average creeps up: only EBC moves
    assert drift and {d.desired_scale for d in drift} == {1}
    assert len(decision_log) == 1

    run(4, 300.0)  # desired and panic move: logged again
    assert decision_log[-1].desired > 1 and decision_log[-1].panic


def test_a_verdict_that_cannot_be_sent_costs_only_its_own_revision(monkeypatch, caplog):
    # Should a verdict still not fit the proto, the pass goes on for the other revisions,
    # the failure is logged and counted, and snapshots (a reconnecting controller's first
    # message) leave that one revision out instead of failing the whole watch.
    from ebb.autoscaler import server as server_mod

    now = [1000.0]
    server = AutoscalerServer(AutoscalerSettings(), clock=lambda: now[0], wall_clock=lambda: 0.0)
    names = ("a-00001", "bad-00001", "c-00001")
    for name in names:
        server.register(RevisionSpec("default", name, ready_instances=1, reachable=True))
    watcher = _Watcher("")
    server._watchers.add(watcher)
    real = server_mod.decision_to_proto

    def to_proto(verdict, decided_at_s, config):
        if verdict.key[1] == "bad-00001":
            raise ValueError("Value out of range")
        return real(verdict, decided_at_s, config)

    monkeypatch.setattr(server_mod, "decision_to_proto", to_proto)
    for name in names:
        rev = pb.RevisionKey(namespace="default", name=name)
        server.take_stats([pb.Stat(instance="i1", revision=rev, average_concurrency=30.0)])
    with caplog.at_level(logging.ERROR, logger="ebb.autoscaler"):
        assert server.tick() == 3
    assert sorted(key[1] for key in watcher.pending) == ["a-00001", "c-00001"]
    assert server.counters["publish_errors"] == 1
    assert server.counters["tick_errors"] == 0
    assert [r.revision for r in caplog.records if r.getMessage() == "cannot publish decision"] == [
        "default/bad-00001"
    ]
    assert [d.revision.name for d in server.snapshot("default")] == ["a-00001", "c-00001"]
    assert server.counters["publish_errors"] == 2


def test_huge_load_reaches_the_watchers_as_a_valid_decision():
    # One stat per revision: an absurd one is dropped; one at the concurrency bound
    # yields a decision that fits the proto; the other revision is decided as usual.
    now = [1000.0]
    server = AutoscalerServer(
        AutoscalerSettings(max_scale_up_rate=1e300), clock=lambda: now[0], wall_clock=lambda: 0.0
    )
    for name in ("big-00001", "huge-00001", "ok-00001"):
        server.register(RevisionSpec("default", name, ready_instances=1, reachable=True))

    def stat(name: str, concurrency: float) -> pb.Stat:
        rev = pb.RevisionKey(namespace="default", name=name)
        return pb.Stat(instance="i1", revision=rev, average_concurrency=concurrency)

    accepted, dropped = server.take_stats(
        [stat("big-00001", 1e6), stat("huge-00001", 1e300), stat("ok-00001", 3.0)]
    )
    assert (accepted, dropped) == (2, 1)
    assert dict(server.scaler.collector.dropped) == {"out_of_range": 1}
    server.tick()
    decisions = {d.revision.name: d for d in server.snapshot("default")}
    assert decisions["big-00001"].desired_scale == 14286  # ceil(1e6 / 70)
    assert decisions["huge-00001"].desired_scale == -1  # no data: not decided yet
    assert decisions["ok-00001"].desired_scale == 1
    assert server.counters["publish_errors"] == 0
