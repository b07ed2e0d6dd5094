"""The revision flags both runtimes give a queue, and how long its drain may last."""

from __future__ import annotations

from ebb.controller import runtime_local
from ebb.controller.runtime import InstanceSpec, queue_drain_max_s, revision_queue_args

SPEC = InstanceSpec(
    service="hello", configuration="hello", revision="hello-00001", namespace="default", command=("app",)
)


def test_the_drain_outlasts_the_revisions_timeout():
    """No accepted request is cut by the drain: a request may take timeoutSeconds, and those
    that arrive while the instance leaves the endpoints need as long."""
    assert queue_drain_max_s(SPEC) == 300 + 10
    assert queue_drain_max_s(InstanceSpec(**{**SPEC.__dict__, "timeout_s": 600})) == 610


def test_revision_queue_args():
    assert revision_queue_args(SPEC) == [
        "--container-concurrency", "0", "--timeout-seconds", "300", "--drain-max-s", "310",
    ]  # fmt: skip
    spec = InstanceSpec(
        **{**SPEC.__dict__, "container_concurrency": 4, "timeout_s": 20, "idle_timeout_s": 5}
    )
    assert revision_queue_args(spec) == [
        "--container-concurrency", "4", "--timeout-seconds", "20", "--drain-max-s", "30",
        "--idle-timeout-seconds", "5",
    ]  # fmt: skip


def test_a_local_instance_keeps_its_drain_across_a_controller_restart():
    inst = runtime_local.Instance("i", "default", "hello-00001", 1, 2, drain_max_s=610)
    assert runtime_local.Instance(**inst.record()).drain_max_s == 610
    # saved by a controller that did not record it: the queue's own default
    old = {k: v for k, v in inst.record().items() if k != "drain_max_s"}
    assert runtime_local.Instance(**old).drain_max_s == runtime_local.QUEUE_DRAIN_MAX_S
