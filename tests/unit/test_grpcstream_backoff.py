"""reconnect_forever's pauses: doubling, capped, and spread by ±20 % (gRPC's jitter)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from ebb.common import grpcstream


async def _pauses(monkeypatch, rand, failures: int = 9) -> list[float]:
    """The pauses between `failures` failed attempts (asyncio.sleep recorded, not slept)."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def attempt(progress) -> None:
        if len(pauses) >= failures:
            raise asyncio.CancelledError
        raise ConnectionError("down")

    async def record(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(grpcstream.asyncio, "sleep", record)
    with pytest.raises(asyncio.CancelledError):
        await grpcstream.reconnect_forever(
            attempt, what="stats stream", target="t", log=logging.getLogger("test"),
            initial_backoff_s=0.1, max_backoff_s=5.0, rand=rand,
        )
    monkeypatch.undo()
    return pauses


async def test_pauses_double_up_to_the_cap_within_the_jitter(monkeypatch):
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert await _pauses(monkeypatch, lambda: 0.5) == pytest.approx(nominal)  # the middle of the spread
    low, high = await _pauses(monkeypatch, lambda: 0.0), await _pauses(monkeypatch, lambda: 1.0 - 1e-12)
    assert low == pytest.approx([n * 0.8 for n in nominal])
    assert high == pytest.approx([n * 1.2 for n in nominal])


async def test_two_reporters_that_fail_together_do_not_retry_in_lockstep(monkeypatch):
    first = await _pauses(monkeypatch, random.Random(1).random)
    second = await _pauses(monkeypatch, random.Random(2).random)
    assert all(abs(a - b) > 1e-6 for a, b in zip(first, second, strict=True))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    for pauses in (first, second):
        assert all(0.8 * n <= p <= 1.2 * n for p, n in zip(pauses, nominal, strict=True))
