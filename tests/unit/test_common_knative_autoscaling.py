"""The shared autoscaling-annotation table: aliases, per-key rules, cross-key rules, order."""

from __future__ import annotations

import pytest

from ebb.common.knative_autoscaling import (
    ALIASES,
    KPA,
    Problem,
    canonicalize,
    check,
    key,
    lookup,
)

A = "autoscaling.knative.dev/"


def test_every_name_is_its_own_first_spelling():
    assert all(aliases[0] == name for name, aliases in ALIASES.items())
    assert ALIASES["min-scale"] == ("min-scale", "minScale")
    assert key("window") == A + "window"


def test_lookup_prefers_the_canonical_spelling():
    assert lookup({A + "minScale": "3", A + "min-scale": "2"}, "min-scale") == (
        A + "min-scale",
        "2",
    )
    assert lookup({A + "maxScale": "3"}, "max-scale") == (A + "maxScale", "3")
    assert lookup({}, "max-scale") is None


def test_canonicalize_renames_only_when_unambiguous():
    assert canonicalize({A + "minScale": "1", "x": "y"}) == {A + "min-scale": "1", "x": "y"}
    both = {A + "minScale": "1", A + "min-scale": "2"}
    assert canonicalize(both) == both


@pytest.mark.parametrize(
    ("annotations", "values"),
    [
        ({A + "class": KPA}, {"class": KPA}),
        ({A + "metric": "rps"}, {"metric": "rps"}),
        ({A + "target": "0.01"}, {"target": 0.01}),
        ({A + "targetUtilizationPercentage": "70"}, {"target-utilization-percentage": 70.0}),
        ({A + "target-burst-capacity": "-1"}, {"target-burst-capacity": -1.0}),
        ({A + "window": "1m30s"}, {"window": 90}),
        ({A + "scale-down-delay": "0s"}, {"scale-down-delay": 0}),
        (
            {A + "scale-to-zero-pod-retention-period": "1.5s"},
            {"scale-to-zero-pod-retention-period": 1.5},
        ),
        ({A + "panic-threshold-percentage": "110"}, {"panic-threshold-percentage": 110.0}),
        ({A + "min-scale": "1", A + "max-scale": "0"}, {"min-scale": 1, "max-scale": 0}),
        ({A + "activation-scale": "2"}, {"activation-scale": 2}),
        ({A + "initial-scale": "3000000000"}, {"initial-scale": 3000000000}),  # 64 bits
        (
            {A + "metricAggregationAlgorithm": "weightedExponential"},
            {"metric-aggregation-algorithm": "weighted-exponential"},
        ),
        ({"example.com/x": "1", "autoscaling.knative.devx": "y"}, {}),
    ],
)
def test_values_that_pass(annotations, values):
    checked = check(annotations)
    assert checked.problems == ()
    assert checked.values == values
    assert all(type(checked.values[k]) is type(v) for k, v in values.items())


@pytest.mark.parametrize(
    ("annotations", "key_", "message"),
    [
        ({A + "min-scale": "+-5"}, "min-scale", "invalid value: +-5"),
        ({A + "min-scale": "2147483648"}, "min-scale", "expected 0 <= 2147483648 <= 2147483647"),
        ({A + "activation-scale": "2147483648"}, "activation-scale", "invalid value: 2147483648"),
        (
            {A + "initial-scale": "-0"},
            "initial-scale",
            "invalid value: -0 (initial-scale=0 not allowed by cluster)",
        ),
        ({A + "window": " 6s"}, "window", "invalid value:  6s"),
        ({A + "target": "1e999"}, "target", "invalid value: 1e999"),
        (
            {A + "target-utilization-percentage": "100.5"},
            "target-utilization-percentage",
            "expected 1 <= 100.5 <= 100",
        ),
        (
            {A + "scale-to-zero-pod-retention-period": "-1s"},
            "scale-to-zero-pod-retention-period",
            "expected 0s <= -1s <= 1h0m0s",
        ),
    ],
)
def test_problems_name_the_key_in_knatives_words(annotations, key_, message):
    checked = check(annotations)
    assert checked.problems == (Problem((A + key_,), message, key_),)
    assert checked.values == {}


def test_a_clash_keeps_the_canonical_value():
    checked = check({A + "min-scale": "2", A + "minScale": "3"})
    assert checked.problems == (
        Problem((A + "min-scale", A + "minScale"), "expected exactly one, got both"),
    )
    assert checked.problems[0].clash and checked.problems[0].name is None
    assert checked.values == {"min-scale": 2}


def test_max_scale_breaks_both_the_order_and_the_limit():
    checked = check({A + "min-scale": "10", A + "max-scale": "5"}, max_scale_limit=3)
    assert [p.message for p in checked.problems] == [
        "max-scale=5 is less than min-scale=10",
        "expected 1 <= 5 <= 3",
    ]
    assert checked.values == {"min-scale": 10}


def test_activation_is_compared_with_a_refused_max_scale():
    # max-scale=2 is refused (below min-scale), yet activation-scale is still held to it.
    checked = check({A + "min-scale": "3", A + "max-scale": "2", A + "activation-scale": "5"})
    assert [p.message for p in checked.problems] == [
        "max-scale=2 is less than min-scale=3",
        "max-scale=2 is less than activation-scale=5",
    ]
    assert checked.values == {"min-scale": 3}


def test_settings_rules():
    assert check({A + "max-scale": "0"}, max_scale_limit=10).problems == (
        Problem((A + "max-scale",), "max-scale=0 (unlimited), must be less than 10", "max-scale"),
    )
    assert check({A + "initial-scale": "0"}, allow_zero_initial_scale=True).values == {
        "initial-scale": 0
    }


def test_problems_come_in_the_webhook_order():
    checked = check(
        {
            A + "initial-scale": "x",
            A + "metric": "cpu",
            A + "window": "1s",
            A + "target": "0",
            A + "panic-window-percentage": "0",
            A + "max-scale": "x",
            A + "class": "hpa",
            A + "typo": "1",
        }
    )
    assert [p.keys[0].removeprefix(A) for p in checked.problems] == [
        "typo",
        "class",
        "max-scale",
        "panic-window-percentage",
        "target",
        "window",
        "metric",
        "initial-scale",
    ]
