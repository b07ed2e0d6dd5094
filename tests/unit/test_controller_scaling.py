"""ScalingClient's reading of ScaleDecision protos (the stream itself is tested end to end)."""

from __future__ import annotations

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.controller.reconcile import Decision, ScaleBounds
from ebb.controller.scaling import decision_from_proto


def test_decision_carries_the_autoscalers_bounds():
    d = pb.ScaleDecision(
        desired_scale=3,
        excess_burst_capacity=-5,
        panic=True,
        stable_value=1.5,
        panic_value=2.5,
        requests_per_second=7.0,
        bounds=pb.ScaleBounds(min_scale=2, max_scale=8, initial_scale=0),
    )
    assert decision_from_proto(d) == Decision(
        desired=3,
        excess_burst_capacity=-5,
        panic=True,
        stable_value=1.5,
        panic_value=2.5,
        requests_per_second=7.0,
        bounds=ScaleBounds(min_scale=2, max_scale=8, initial_scale=0),
    )


def test_decision_without_bounds_leaves_them_to_the_annotations():
    assert decision_from_proto(pb.ScaleDecision(desired_scale=1)).bounds is None
