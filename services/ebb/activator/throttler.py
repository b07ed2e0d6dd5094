"""The activator's per-revision throttle: instance slots, the waiting line, its depth (pure).

Knative's revisionThrottler, in Ebb's terms: each ready instance of a revision has
`capacity` = containerConcurrency slots (0 = unlimited); a request takes a slot on the
instance the load-balancing policy picks, or waits in FIFO order when none is free (or
there is no instance yet: the revision is at zero); more than `queue_depth` waiting is
refused (503). A freed slot, or a new instance, goes to the longest waiter at once.

With several activators the instances are shared out (`assign`): each activator sends
to its own subset of them, or, with fewer instances than activators, to all of them with a
part of each one's capacity.

No clock, no I/O: waiters are opaque hashable tokens, each queued at most once;
instances carry an opaque `handle` (the adapter's connection pool). Time limits on
waiting are the exchange's own timeouts. Giving up is O(1) even with 10,000 waiting (a
mass timeout at a dead revision): the line forgets lazily.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from ebb.activator.lb import Policy, policy_for

W = TypeVar("W")


class QueueFull(Exception):
    """More requests are waiting than the revision's queue depth allows."""


def assign(
    addresses: Iterable[str], container_concurrency: int, index: int, count: int
) -> tuple[frozenset[str], int]:
    """This activator's part of a revision's instances, when `count` activators share them
    and this one is number `index` (Knative's activator capacity split): (the addresses it
    may use, the slots it may take on each).

    Every activator sorts the same listed addresses the same way. With at least as many
    instances as activators, each instance goes to one activator (round robin over the
    sorted list) with all its CC slots, so together they never overfill one. With fewer,
    every activator uses every instance, with ceil(CC / count) slots each (at least one: a
    little more than CC in all, which the queue's own breaker absorbs). CC 0 (unlimited)
    and a lone activator are not split.
    """
    listed = sorted(set(addresses))
    if count <= 1 or container_concurrency == 0 or not listed:
        return frozenset(listed), container_concurrency
    if len(listed) >= count:
        return frozenset(listed[index % count :: count]), container_concurrency
    return frozenset(listed), -(-container_concurrency // count)


class Instance:
    """One ready instance of a revision, as the throttle sees it."""

    __slots__ = ("address", "capacity", "in_flight", "active", "handle")

    def __init__(self, address: str, capacity: int, handle: object = None) -> None:
        self.address = address
        self.capacity = capacity  # 0 = unlimited
        self.in_flight = 0
        self.active = True  # False once removed; its requests finish, its slots are gone
        self.handle = handle

    def __repr__(self) -> str:
        return f"Instance({self.address!r}, {self.in_flight}/{self.capacity or 'inf'})"


class Throttler(Generic[W]):
    """Slots of one revision's instances and the requests waiting for one.

    With CC = 1, two instances and queue depth 2: two requests run, the next two wait,
    the fifth is refused; when one finishes, the first waiter takes its slot.
    """

    __slots__ = (
        "container_concurrency",
        "capacity",
        "queue_depth",
        "instances",
        "_line",
        "_waiting",
        "_free",
        "_policy",
        "_rng",
    )

    def __init__(
        self, container_concurrency: int, queue_depth: int, rng: random.Random | None = None
    ) -> None:
        for key, value in (("container_concurrency", container_concurrency), ("queue_depth", queue_depth)):
            if value < 0:
                raise ValueError(f"{key} = {value}, must be at least 0")
        self.container_concurrency = container_concurrency
        self.capacity = container_concurrency  # slots per instance for this activator
        self.queue_depth = queue_depth
        self.instances: list[Instance] = []
        self._line: deque[W] = deque()  # arrival order; may still hold waiters that gave up
        self._waiting: set[W] = set()  # who really waits
        self._free = 0  # free slots over active instances (CC > 0 only)
        self._rng = rng
        self._policy: Policy = policy_for(container_concurrency, rng)

    # -- reading

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def free_slots(self) -> int | None:
        """Free slots over all instances; None = unlimited (CC = 0 with an instance)."""
        if self.container_concurrency == 0:
            return None if self.instances else 0
        return self._free

    def _open(self) -> bool:
        if self.container_concurrency == 0:
            return bool(self.instances)
        return self._free > 0

    # -- requests

    def acquire(self, waiter: W) -> Instance | None:
        """The instance whose slot `waiter` now holds, or None: it waits (FIFO) and a later
        `release`/`dispatch` hands it one. Raises QueueFull when the line is full."""
        if not self._waiting:
            instances = self.instances
            if self.container_concurrency == 0:  # unlimited: any instance takes it
                if instances:
                    instance = instances[0] if len(instances) == 1 else self._policy(instances)
                    instance.in_flight += 1
                    return instance
            elif self._free > 0:
                instance = self._policy(instances)
                if instance is not None:
                    self._take(instance)
                    return instance
        if len(self._waiting) >= self.queue_depth:
            raise QueueFull
        self._line.append(waiter)
        self._waiting.add(waiter)
        return None

    def try_acquire(self) -> Instance | None:
        """A slot now if one is free, never waiting (a retry after a failed connect)."""
        if self._open():
            instance = self._policy(self.instances)
            if instance is not None:
                self._take(instance)
                return instance
        return None

    def release(self, instance: Instance) -> tuple[W, Instance] | None:
        """Give back `instance`'s slot; returns (waiter, instance) when the freed capacity
        goes to the longest waiter at once (the policy may pick another instance)."""
        instance.in_flight -= 1
        if not instance.active:
            return None
        if instance.capacity and instance.in_flight < instance.capacity:
            self._free += 1
        if self._waiting:
            nxt = self._policy(self.instances)
            if nxt is not None:
                self._take(nxt)
                return self._next_waiter(), nxt
        return None

    def abandon(self, waiter: W) -> bool:
        """A waiter gave up (timeout, client gone); True if it was waiting."""
        if waiter not in self._waiting:
            return False
        self._waiting.discard(waiter)
        line = self._line
        if len(line) > 2 * len(self._waiting) + 64:  # mostly gone: compact, amortized O(1)
            waiting = self._waiting
            self._line = deque(w for w in line if w in waiting)
        return True

    def _next_waiter(self) -> W:
        """The longest waiter, out of the line (there is one: `_waiting` is not empty)."""
        line, waiting = self._line, self._waiting
        while True:
            waiter = line.popleft()
            if waiter in waiting:
                waiting.discard(waiter)
                return waiter

    def _take(self, instance: Instance) -> None:
        if instance.capacity and instance.in_flight < instance.capacity:
            self._free -= 1
        instance.in_flight += 1

    # -- instances

    def add(self, address: str, handle: object = None) -> Instance:
        """A new ready instance (appended: policies see instances in the order added)."""
        for instance in self.instances:
            if instance.address == address:
                return instance
        instance = Instance(address, self.capacity, handle)
        self.instances.append(instance)
        self._free += self.capacity
        return instance

    def remove(self, address: str) -> Instance | None:
        """The instance is no longer ready; its in-flight requests go on, its slots are gone."""
        for i, instance in enumerate(self.instances):
            if instance.address == address:
                del self.instances[i]
                instance.active = False
                if instance.capacity:
                    self._free -= max(instance.capacity - instance.in_flight, 0)
                return instance
        return None

    def set_container_concurrency(self, container_concurrency: int) -> None:
        """The revision's CC changed (it should not: revisions are immutable)."""
        if container_concurrency == self.container_concurrency:
            return
        self.container_concurrency = container_concurrency
        self._policy = policy_for(container_concurrency, self._rng)
        self.set_capacity(container_concurrency)

    def set_capacity(self, capacity: int) -> None:
        """Slots per instance for this activator (its share of CC, see `assign`)."""
        if capacity == self.capacity:
            return
        self.capacity = capacity
        self._free = 0
        for instance in self.instances:
            instance.capacity = capacity
            if capacity:
                self._free += max(capacity - instance.in_flight, 0)

    def dispatch(self) -> list[tuple[W, Instance]]:
        """Hand free slots to waiters, longest waiting first (after instances were added)."""
        handed: list[tuple[W, Instance]] = []
        while self._waiting and self._open():
            instance = self._policy(self.instances)
            if instance is None:
                break
            self._take(instance)
            handed.append((self._next_waiter(), instance))
        return handed

    def clear(self) -> list[W]:
        """Every waiter, removed from the line (the revision is gone)."""
        waiting = self._waiting
        waiters = [w for w in self._line if w in waiting]
        self._line.clear()
        waiting.clear()
        return waiters
