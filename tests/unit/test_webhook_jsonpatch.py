"""The webhook's RFC 6902 diff: exact operations for known cases, and round trips for many."""

from __future__ import annotations

import copy
import random

import pytest

from ebb.webhook import jsonpatch
from ebb.webhook.jsonpatch import PatchError


@pytest.mark.parametrize(
    ("token", "escaped"),
    [
        ("plain", "plain"),
        ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev~1min-scale"),
        ("a~b/c", "a~0b~1c"),
        ("~1", "~01"),
    ],
)
def test_escape_round_trip(token, escaped):
    assert jsonpatch.escape(token) == escaped
    assert jsonpatch.unescape(escaped) == token


DIFFS = [
    ("equal", {"a": 1}, {"a": 1}, []),
    (
        "add key",
        {"a": 1},
        {"a": 1, "b": {"c": 2}},
        [{"op": "add", "path": "/b", "value": {"c": 2}}],
    ),
    ("remove key", {"a": 1, "b": 2}, {"a": 1}, [{"op": "remove", "path": "/b"}]),
    ("replace scalar", {"a": 1}, {"a": "1"}, [{"op": "replace", "path": "/a", "value": "1"}]),
    ("true is not 1", {"a": 1}, {"a": True}, [{"op": "replace", "path": "/a", "value": True}]),
    ("1 and 1.0 are one number", {"a": 1}, {"a": 1.0}, []),
    (
        "nested",
        {"m": {"n": {"o": 1}}},
        {"m": {"n": {"o": 2}}},
        [{"op": "replace", "path": "/m/n/o", "value": 2}],
    ),
    (
        "list append",
        {"l": [1]},
        {"l": [1, 2, 3]},
        [{"op": "add", "path": "/l/1", "value": 2}, {"op": "add", "path": "/l/2", "value": 3}],
    ),
    (
        "list shrink from the end",
        {"l": [1, 2, 3]},
        {"l": [1]},
        [{"op": "remove", "path": "/l/2"}, {"op": "remove", "path": "/l/1"}],
    ),
    (
        "list element changed",
        {"l": [{"x": 1}, {"x": 2}]},
        {"l": [{"x": 1}, {"x": 3}]},
        [{"op": "replace", "path": "/l/1/x", "value": 3}],
    ),
    ("dict becomes list", {"a": {}}, {"a": []}, [{"op": "replace", "path": "/a", "value": []}]),
    ("null to value", {"a": None}, {"a": {}}, [{"op": "replace", "path": "/a", "value": {}}]),
    (
        "annotation key with slash",
        {"metadata": {"annotations": {}}},
        {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}}},
        [
            {
                "op": "add",
                "path": "/metadata/annotations/autoscaling.knative.dev~1min-scale",
                "value": "1",
            }
        ],
    ),
    ("root type change", {"a": 1}, [1], [{"op": "replace", "path": "", "value": [1]}]),
]


@pytest.mark.parametrize(("src", "dst", "ops"), [d[1:] for d in DIFFS], ids=[d[0] for d in DIFFS])
def test_diff(src, dst, ops):
    assert jsonpatch.diff(src, dst) == ops
    assert jsonpatch.apply(src, ops) == dst


def test_diff_values_are_copies():
    dst = {"a": {"b": [1]}}
    ops = jsonpatch.diff({}, dst)
    dst["a"]["b"].append(2)
    assert ops == [{"op": "add", "path": "/a", "value": {"b": [1]}}]


def _random_json(rng: random.Random, depth: int):
    choice = rng.randrange(7 if depth < 4 else 4)
    if choice == 0:
        return rng.randrange(-3, 4)
    if choice == 1:
        return rng.choice(["", "x", "a/b", "~", "user-container"])
    if choice == 2:
        return rng.choice([True, False, None])
    if choice == 3:
        return rng.choice([0.5, 1.0, -2.25])
    if choice in (4, 5):
        keys = ["a", "b", "c/d", "e~f", "g"]
        return {k: _random_json(rng, depth + 1) for k in rng.sample(keys, rng.randrange(len(keys)))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def _mutate(rng: random.Random, value):
    value = copy.deepcopy(value)
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        if rng.random() < 0.3:
            del value[key]
        else:
            value[key] = _mutate(rng, value[key])
        if rng.random() < 0.3:
            value["new"] = _random_json(rng, 3)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        value[i] = _mutate(rng, value[i])
        if rng.random() < 0.3:
            value.append(_random_json(rng, 3))
        elif rng.random() < 0.3:
            value.pop(0)
        return value
    return _random_json(rng, 2)


@pytest.mark.parametrize("seed", range(300))
def test_round_trip(seed):
    rng = random.Random(seed)
    src = _random_json(rng, 0)
    dst = _mutate(rng, src)
    ops = jsonpatch.diff(src, dst)
    assert jsonpatch.apply(src, ops) == dst
    assert (ops == []) == jsonpatch._same(src, dst)


def test_apply_does_not_modify_the_document():
    doc = {"a": [1, 2]}
    jsonpatch.apply(doc, [{"op": "remove", "path": "/a/0"}])
    assert doc == {"a": [1, 2]}


def test_apply_add_to_list_end_with_dash():
    assert jsonpatch.apply({"l": [1]}, [{"op": "add", "path": "/l/-", "value": 2}]) == {"l": [1, 2]}


@pytest.mark.parametrize(
    ("doc", "op"),
    [
        ({}, {"op": "remove", "path": "/missing"}),
        ({"l": [1]}, {"op": "replace", "path": "/l/1", "value": 0}),
        ({"l": [1]}, {"op": "add", "path": "/l/01", "value": 0}),
        ({"a": 1}, {"op": "add", "path": "/a/b", "value": 0}),
        ({}, {"op": "move", "from": "/a", "path": "/b"}),
        ({}, {"op": "add", "path": "no-slash", "value": 0}),
        ({}, {"op": "remove", "path": ""}),
        ({}, {"op": "add", "value": 0}),
        ({"a": {}}, {"op": "add", "path": "/x/y", "value": 0}),
    ],
)
def test_apply_rejects_bad_operations(doc, op):
    with pytest.raises(PatchError):
        jsonpatch.apply(doc, [op])
