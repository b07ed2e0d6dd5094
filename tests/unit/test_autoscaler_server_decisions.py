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
