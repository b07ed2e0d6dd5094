"""Load-balancing policies of the activator (tables; randomness fixed)."""

from __future__ import annotations

import random

import pytest

from ebb.activator.lb import RandomChoiceOfTwo, RoundRobin, first_available, policy_for
from ebb.activator.throttler import Instance


def instances(*loads: tuple[int, int]) -> list[Instance]:
    """(in_flight, capacity) per instance, addressed i0, i1, ..."""
    made = []
    for i, (in_flight, capacity) in enumerate(loads):
        instance = Instance(f"i{i}", capacity)
        instance.in_flight = in_flight
        made.append(instance)
    return made


def address(instance: Instance | None) -> str | None:
    return None if instance is None else instance.address


@pytest.mark.parametrize(
    ("cc", "kind"),
    [(0, RandomChoiceOfTwo), (1, type(first_available)), (3, type(first_available)), (4, RoundRobin), (1000, RoundRobin)],
)
def test_policy_by_container_concurrency(cc, kind):
    assert isinstance(policy_for(cc), kind)


@pytest.mark.parametrize(
    ("loads", "picked"),
    [
        ([], None),
        ([(0, 1)], "i0"),
        ([(1, 1)], None),
        ([(1, 1), (0, 1)], "i1"),
        ([(2, 3), (0, 3)], "i0"),  # packs: the first with a free slot, not the emptiest
        ([(3, 3), (3, 3), (1, 3)], "i2"),
        ([(1, 1), (1, 1)], None),
    ],
)
def test_first_available(loads, picked):
    assert address(first_available(instances(*loads))) == picked


def test_round_robin_skips_full_instances_and_wraps():
    pool = instances((0, 4), (4, 4), (0, 4))
    rr = RoundRobin()
    assert [address(rr(pool)) for _ in range(4)] == ["i0", "i2", "i0", "i2"]
    pool[1].in_flight = 3
    assert [address(rr(pool)) for _ in range(3)] == ["i0", "i1", "i2"]
    for instance in pool:
        instance.in_flight = 4
    assert rr(pool) is None
    assert RoundRobin()([]) is None


def test_round_robin_survives_a_shrinking_list():
    rr = RoundRobin()
    pool = instances((0, 5), (0, 5), (0, 5))
    assert [address(rr(pool)) for _ in range(3)] == ["i0", "i1", "i2"]
    assert address(rr(pool[:1])) == "i0"


class FixedRandom(random.Random):
    """randrange answers from a script."""

    def __init__(self, *answers: int) -> None:
        super().__init__(0)
        self.answers = list(answers)

    def randrange(self, n):  # noqa: D401 - random's signature
        value = self.answers.pop(0)
        assert 0 <= value < n
        return value


@pytest.mark.parametrize(
    ("loads", "draws", "picked"),
    [
        ([], (), None),
        ([(5, 0)], (), "i0"),  # one instance: no draw
        ([(3, 0), (1, 0), (2, 0)], (0, 0), "i1"),  # i=0, j=0 -> 1 (skips i): i0 vs i1
        ([(3, 0), (1, 0), (2, 0)], (2, 0), "i2"),  # i2 vs i0: fewer in flight wins
        ([(1, 0), (1, 0)], (1, 0), "i1"),  # a tie keeps the first drawn
        ([(0, 1), (1, 1), (1, 1)], (1, 1), "i0"),  # both drawn are full: first with a slot
    ],
)
def test_random_choice_of_two(loads, draws, picked):
    policy = RandomChoiceOfTwo(FixedRandom(*draws))
    assert address(policy(instances(*loads))) == picked


def test_random_choice_of_two_spreads_load():
    policy = RandomChoiceOfTwo(random.Random(7))
    pool = instances(*[(0, 0)] * 4)
    for _ in range(400):
        policy(pool).in_flight += 1
    counts = [instance.in_flight for instance in pool]
    assert sum(counts) == 400
    assert max(counts) - min(counts) <= 2  # the power of two choices keeps them level
