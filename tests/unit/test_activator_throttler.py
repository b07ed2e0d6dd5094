"""The activator's per-revision throttle: slots, the waiting line and its depth (tables)."""

from __future__ import annotations

import random

import pytest

from ebb.activator.throttler import QueueFull, Throttler


def names(handed):
    return [(waiter, instance.address) for waiter, instance in handed]


def test_cc1_two_instances_depth_two():
    t = Throttler(1, 2)
    t.add("a")
    t.add("b")
    assert t.free_slots == 2
    assert t.acquire("r1").address == "a"  # first available
    assert t.acquire("r2").address == "b"
    assert t.acquire("r3") is None and t.acquire("r4") is None
    assert t.waiting == 2
    with pytest.raises(QueueFull):
        t.acquire("r5")
    a = t.instances[0]
    waiter, instance = t.release(a)
    assert (waiter, instance.address) == ("r3", "a")  # the longest waiter, at once
    assert (a.in_flight, t.waiting, t.free_slots) == (1, 1, 0)


def test_no_instance_means_wait_and_new_instances_take_the_line_in_order():
    t = Throttler(2, 10)
    assert [t.acquire(f"r{i}") for i in range(5)] == [None] * 5  # at zero: everything waits
    assert t.free_slots == 0
    t.add("a")
    assert names(t.dispatch()) == [("r0", "a"), ("r1", "a")]
    t.add("b")
    assert names(t.dispatch()) == [("r2", "b"), ("r3", "b")]
    assert t.waiting == 1
    assert t.dispatch() == []


def test_waiters_keep_their_order_even_when_a_slot_is_free():
    t = Throttler(1, 10)
    assert t.acquire("r1") is None
    t.add("a")
    # "r2" arrives before dispatch ran: it queues behind r1 instead of jumping the line
    assert t.acquire("r2") is None
    assert names(t.dispatch()) == [("r1", "a")]


def test_unlimited_capacity_cc0():
    t = Throttler(0, 3, random.Random(1))
    assert t.free_slots == 0
    assert t.acquire("r1") is None
    t.add("a")
    assert t.free_slots is None
    assert names(t.dispatch()) == [("r1", "a")]
    got = [t.acquire(f"x{i}") for i in range(100)]
    assert all(instance is not None for instance in got)
    assert t.instances[0].in_flight == 101


@pytest.mark.parametrize(("depth", "refused_at"), [(0, 2), (1, 3), (3, 5)])
def test_queue_depth(depth, refused_at):
    t = Throttler(1, depth)
    t.add("a")
    outcomes = []
    for i in range(1, refused_at + 1):
        try:
            outcomes.append("slot" if t.acquire(i) else "wait")
        except QueueFull:
            outcomes.append("503")
    assert outcomes == ["slot"] + ["wait"] * depth + ["503"]


def test_abandon_frees_the_place_in_line():
    t = Throttler(1, 1)
    t.add("a")
    t.acquire("r1")
    t.acquire("r2")
    with pytest.raises(QueueFull):
        t.acquire("r3")
    assert t.abandon("r2") is True
    assert t.abandon("r2") is False
    assert t.acquire("r3") is None
    assert t.release(t.instances[0])[0] == "r3"


def test_removed_instance_keeps_its_requests_but_not_its_slots():
    t = Throttler(2, 10)
    a = t.add("a")
    t.add("b")
    assert t.acquire("r1") is a
    assert t.free_slots == 3
    assert t.remove("a") is a and not a.active
    assert t.free_slots == 2
    assert t.remove("a") is None
    t.acquire("r2")
    t.acquire("r3")
    assert t.acquire("r4") is None  # b is full, a is gone
    assert t.release(a) is None  # its slot does not come back
    assert a.in_flight == 0
    assert t.free_slots == 0


def test_release_hands_capacity_to_the_line_through_the_policy():
    t = Throttler(5, 10)  # round robin
    a, b = t.add("a"), t.add("b")
    held = [t.acquire(i) for i in range(10)]
    assert [i.address for i in held] == ["a", "b"] * 5
    assert t.acquire("w") is None
    waiter, instance = t.release(b)
    assert waiter == "w" and instance is b
    assert (a.in_flight, b.in_flight, t.free_slots) == (5, 5, 0)


def test_try_acquire_never_queues():
    t = Throttler(1, 10)
    assert t.try_acquire() is None
    assert t.waiting == 0
    t.add("a")
    assert t.try_acquire().address == "a"
    assert t.try_acquire() is None


def test_changing_container_concurrency_recounts_slots():
    t = Throttler(1, 10)
    a = t.add("a")
    t.acquire("r1")
    t.set_container_concurrency(3)
    assert (a.capacity, t.free_slots) == (3, 2)
    t.acquire("r2")
    t.acquire("r3")
    t.set_container_concurrency(1)
    assert (a.in_flight, t.free_slots) == (3, 0)
    free_after_each_release = []
    for _ in range(3):
        assert t.release(a) is None
        free_after_each_release.append(t.free_slots)
    assert free_after_each_release == [0, 0, 1]  # over capacity: only the last frees a slot


def test_clear_returns_every_waiter():
    t = Throttler(1, 10)
    for i in range(3):
        t.acquire(i)
    assert t.clear() == [0, 1, 2]
    assert t.waiting == 0


@pytest.mark.parametrize(("cc", "depth"), [(-1, 1), (1, -1)])
def test_rejects_negative_settings(cc, depth):
    with pytest.raises(ValueError):
        Throttler(cc, depth)


def test_many_give_ups_keep_the_line_in_order_and_bounded():
    t = Throttler(1, 10_000)
    for i in range(5000):
        t.acquire(i)
    for i in range(0, 5000, 2):
        assert t.abandon(i)
    for i in range(1, 4000, 2):
        assert t.abandon(i)
    assert t.waiting == 500
    assert len(t._line) <= 2 * 500 + 64  # compacted as it emptied
    t.add("a")
    assert [w for w, _ in t.dispatch()] == [4001]
    assert t.release(t.instances[0])[0] == 4003
    assert t.clear()[:3] == [4005, 4007, 4009]


# -- several activators sharing a revision's instances (Knative's capacity split)

from ebb.activator.throttler import assign  # noqa: E402 - grouped with its tests

FOUR = ("10.0.0.4:8012", "10.0.0.1:8012", "10.0.0.3:8012", "10.0.0.2:8012")


@pytest.mark.parametrize(
    ("addresses", "cc", "index", "count", "mine", "capacity"),
    [
        (FOUR, 10, 0, 1, FOUR, 10),  # alone: everything
        (FOUR, 0, 1, 3, FOUR, 0),  # unlimited: not split
        ((), 10, 0, 2, (), 10),
        # at least as many instances as activators: each instance to one activator, whole
        (FOUR, 10, 0, 2, ("10.0.0.1:8012", "10.0.0.3:8012"), 10),
        (FOUR, 10, 1, 2, ("10.0.0.2:8012", "10.0.0.4:8012"), 10),
        (FOUR, 1, 2, 3, ("10.0.0.3:8012",), 1),
        (FOUR, 1, 0, 3, ("10.0.0.1:8012", "10.0.0.4:8012"), 1),
        # fewer: every instance, a share of its slots (rounded up, at least one)
        (FOUR[:1], 10, 0, 3, FOUR[:1], 4),
        (FOUR[:1], 10, 2, 3, FOUR[:1], 4),
        (FOUR[:2], 1, 1, 3, FOUR[:2], 1),
    ],
)  # fmt: skip
def test_assign(addresses, cc, index, count, mine, capacity):
    assert assign(addresses, cc, index, count) == (frozenset(mine), capacity)


def test_every_instance_has_exactly_one_activator_when_there_are_enough():
    addresses = [f"10.0.{i // 256}.{i % 256}:8012" for i in range(23)]
    parts = [assign(reversed(addresses), 2, k, 5)[0] for k in range(5)]
    assert sorted(a for part in parts for a in part) == sorted(addresses)
    assert sum(len(part) for part in parts) == 23  # no overlap
    assert {len(part) for part in parts} == {4, 5}  # as even as it gets


def test_a_smaller_capacity_per_instance_limits_the_slots():
    t = Throttler(10, 100)
    t.add("a")
    t.set_capacity(4)
    taken = [t.acquire(f"r{i}") for i in range(5)]
    assert [i is not None for i in taken] == [True] * 4 + [False]
    assert t.free_slots == 0
    t.set_capacity(10)  # the other activators left: the whole CC again
    assert t.free_slots == 6
    assert [w for w, _ in t.dispatch()] == ["r4"]
    t.add("b")  # a new instance gets this activator's capacity
    assert t.instances[1].capacity == 10
