"""The queue's breaker: at most CC requests in the app, 10 x CC waiting, the rest refused.

Pure: no clock, no I/O, no asyncio. Waiters are opaque tokens chosen by the caller (the
proxy uses its per-request objects); the breaker only decides who holds a slot.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

W = TypeVar("W")

# Outcomes of `Breaker.acquire`; plain ints because the proxy checks them on every request.
ADMITTED = 0  # the caller holds a slot now
QUEUED = 1  # the caller waits; `release` will hand it a slot
REJECTED = 2  # queue full: answer 503


class Breaker(Generic[W]):
    """Knative's queue-proxy breaker: `concurrency` slots and `queue_depth` waiting places.

    With concurrency 1 and depth 10 the 12th concurrent request is refused: 1 in the app,
    10 waiting (Knative's totalSlots = queueDepth + maxConcurrency).
    """

    __slots__ = ("concurrency", "queue_depth", "in_flight", "_waiting")

    def __init__(self, concurrency: int, queue_depth: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency = {concurrency}, must be at least 1")
        if queue_depth < 0:
            raise ValueError(f"queue_depth = {queue_depth}, must be at least 0")
        self.concurrency = concurrency
        self.queue_depth = queue_depth
        self.in_flight = 0
        self._waiting: deque[W] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    def acquire(self, waiter: W) -> int:
        """ADMITTED (slot taken), QUEUED (`waiter` waits in FIFO order) or REJECTED."""
        if self.in_flight < self.concurrency:
            self.in_flight += 1
            return ADMITTED
        if len(self._waiting) < self.queue_depth:
            self._waiting.append(waiter)
            return QUEUED
        return REJECTED

    def release(self) -> W | None:
        """Give back a slot; returns the waiter that now holds it, if any (FIFO)."""
        if self._waiting:
            return self._waiting.popleft()  # the slot passes on: in_flight is unchanged
        if self.in_flight <= 0:
            raise RuntimeError("breaker released more often than acquired")
        self.in_flight -= 1
        return None

    def abandon(self, waiter: W) -> bool:
        """A waiter gave up (client left, timeout) before getting a slot; True if it was waiting."""
        try:
            self._waiting.remove(waiter)
        except ValueError:
            return False
        return True
