"""The readiness schedule: aggressive at start, periodic once ready, back to aggressive on failure."""

import pytest

from ebb.queue.readiness import (
    AGGRESSIVE_FOR_S,
    AGGRESSIVE_PERIOD_S,
    EAGER_FOR_S,
    EAGER_PERIOD_S,
    FAILURE_THRESHOLD,
    PERIOD_S,
    ProbeSchedule,
)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        # (now, ok) -> (ready, next delay)
        ([(0.0, False)], [(False, EAGER_PERIOD_S)]),
        ([(0.0, False), (0.05, True)], [(False, EAGER_PERIOD_S), (True, PERIOD_S)]),
        # past the first second: every 50 ms
        ([(0.9, False), (1.0, False)], [(False, EAGER_PERIOD_S), (False, AGGRESSIVE_PERIOD_S)]),
        # the app takes longer than 10 s: fall back to 1 s probes
        ([(9.9, False), (10.0, False)], [(False, AGGRESSIVE_PERIOD_S), (False, PERIOD_S)]),
        # once ready, only three failures in a row make it not ready
        (
            [(20.0, True), (21.0, False), (22.0, False), (23.0, False)],
            [(True, PERIOD_S), (True, PERIOD_S), (True, PERIOD_S), (False, EAGER_PERIOD_S)],
        ),
        (
            [(20.0, True), (21.0, False), (22.0, True), (23.0, False), (24.0, False)],
            [(True, PERIOD_S)] * 5,
        ),
    ],
)
def test_schedule(results, expected):
    schedule = ProbeSchedule(now=0.0)
    seen = []
    for now, ok in results:
        delay = schedule.observe(ok, now)
        seen.append((schedule.ready, delay))
    assert seen == expected


def test_lost_app_is_probed_eagerly_then_aggressively_again_for_ten_seconds():
    schedule = ProbeSchedule(now=0.0)
    schedule.observe(True, 1.0)
    for i in range(FAILURE_THRESHOLD):
        schedule.observe(False, 100.0 + i)
    down_at = 100.0 + FAILURE_THRESHOLD - 1
    assert not schedule.ready
    assert schedule.observe(False, down_at + EAGER_FOR_S - 0.1) == EAGER_PERIOD_S
    assert schedule.observe(False, down_at + AGGRESSIVE_FOR_S - 0.1) == AGGRESSIVE_PERIOD_S
    assert schedule.observe(False, down_at + AGGRESSIVE_FOR_S) == PERIOD_S
