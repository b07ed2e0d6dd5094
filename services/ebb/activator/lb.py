"""Load-balancing policies of the activator: which instance gets the next request (pure).

Knative's activator picks the policy by containerConcurrency (CC):
  CC = 0     random choice of two: two instances at random, the one with fewer in flight;
  CC 1..3    first available: the first instance in order with a free slot (packs small
             instances so each one's few slots are used before the next is touched);
  CC > 3     round robin among the instances with a free slot.
A policy is a callable `(instances) -> Instance | None`: None when none has a free slot.
Randomness is injected (`random.Random`) so tests can fix it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol


class Slot(Protocol):
    """What a policy reads of an instance."""

    in_flight: int
    capacity: int  # 0 = unlimited


Policy = Callable[[Sequence[Slot]], Slot | None]


def has_capacity(instance: Slot) -> bool:
    return instance.capacity == 0 or instance.in_flight < instance.capacity


class RandomChoiceOfTwo:
    """Two distinct instances at random; the one with fewer requests in flight (the first
    on a tie). With one instance, that one. Instances without a free slot are skipped by
    falling back to a scan, which never happens with unlimited capacity (CC = 0)."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, instances: Sequence[Slot]) -> Slot | None:
        n = len(instances)
        if n == 0:
            return None
        if n == 1:
            only = instances[0]
            return only if has_capacity(only) else None
        rand = self._rng.randrange
        i = rand(n)
        j = rand(n - 1)
        if j >= i:  # two distinct indexes without building a sample
            j += 1
        a, b = instances[i], instances[j]
        pick = b if b.in_flight < a.in_flight else a
        if has_capacity(pick):
            return pick
        other = a if pick is b else b
        if has_capacity(other):
            return other
        return first_available(instances)


def first_available(instances: Sequence[Slot]) -> Slot | None:
    """The first instance, in order, with a free slot."""
    for instance in instances:
        if instance.capacity == 0 or instance.in_flight < instance.capacity:
            return instance
    return None


class RoundRobin:
    """The next instance after the last one picked that has a free slot."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, instances: Sequence[Slot]) -> Slot | None:
        n = len(instances)
        start = self._next % n if n else 0
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            instance = instances[i]
            if instance.capacity == 0 or instance.in_flight < instance.capacity:
                self._next = i + 1
                return instance
        return None


def policy_for(container_concurrency: int, rng: random.Random | None = None) -> Policy:
    """Knative's choice of policy for a revision's containerConcurrency."""
    if container_concurrency == 0:
        return RandomChoiceOfTwo(rng)
    if container_concurrency <= 3:
        return first_available
    return RoundRobin()
