"""The queue's breaker: CC slots, 10 x CC waiting places, FIFO hand-over, refusal when full."""

import pytest

from ebb.queue.breaker import ADMITTED, QUEUED, REJECTED, Breaker

A, Q, R = ADMITTED, QUEUED, REJECTED


@pytest.mark.parametrize(
    ("concurrency", "depth", "arrivals", "expected"),
    [
        (1, 0, 2, [A, R]),
        (1, 10, 12, [A] + [Q] * 10 + [R]),  # Knative: CC 1 -> 1 in the app, 10 waiting
        (2, 20, 23, [A, A] + [Q] * 20 + [R]),
        (3, 1, 5, [A, A, A, Q, R]),
    ],
)
def test_acquire_admits_then_queues_then_rejects(concurrency, depth, arrivals, expected):
    breaker = Breaker(concurrency, depth)
    assert [breaker.acquire(i) for i in range(arrivals)] == expected
    assert breaker.in_flight == concurrency
    assert breaker.waiting == min(depth, arrivals - concurrency)


def test_release_hands_the_slot_to_the_oldest_waiter():
    breaker = Breaker(1, 3)
    assert breaker.acquire("a") == A
    assert [breaker.acquire(w) for w in "bcd"] == [Q, Q, Q]
    assert breaker.release() == "b"
    assert breaker.in_flight == 1  # passed on, not freed
    assert breaker.release() == "c"
    assert breaker.release() == "d"
    assert breaker.release() is None
    assert breaker.in_flight == 0


def test_released_slot_makes_room_for_a_new_arrival():
    breaker = Breaker(1, 1)
    assert [breaker.acquire(w) for w in "abc"] == [A, Q, R]
    assert breaker.release() == "b"
    assert breaker.acquire("c") == Q


def test_abandon_removes_only_waiters():
    breaker = Breaker(1, 2)
    assert [breaker.acquire(w) for w in "abc"] == [A, Q, Q]
    assert breaker.abandon("b") is True
    assert breaker.abandon("b") is False
    assert breaker.abandon("a") is False  # holds a slot: it must release instead
    assert breaker.release() == "c"
    assert breaker.release() is None
    assert (breaker.in_flight, breaker.waiting) == (0, 0)


def test_release_without_acquire_is_a_bug():
    with pytest.raises(RuntimeError):
        Breaker(1, 1).release()


@pytest.mark.parametrize(("concurrency", "depth"), [(0, 0), (-1, 10), (1, -1)])
def test_invalid_sizes(concurrency, depth):
    with pytest.raises(ValueError):
        Breaker(concurrency, depth)
