"""The three Knative timeouts as the shared proxy applies them (ebb.common.http1.Limits),
with a fake clock: which deadline applies and which 504 body names it. As in Knative, a
response that has started is ended only by idleTimeoutSeconds."""

from __future__ import annotations

import math

import pytest

from ebb.common.http1 import Limits

HELD = b"timeout: held\n"


@pytest.mark.parametrize(
    ("limits", "t_activity", "started", "deadline"),
    [
        ((10, 0, 0), 0, False, 10),
        ((10, 0, 0), 0, True, math.inf),  # started: timeoutSeconds no longer applies
        ((10, 3, 0), 0, False, 3),  # until the response starts
        ((10, 3, 0), 0, True, math.inf),  # ... and not after
        ((10, 0, 2), 0, False, 2),
        ((10, 0, 2), 7, False, 9),  # idle counts from the last byte
        ((10, 0, 2), 9, False, 10),  # before the start: never beyond the total
        ((10, 0, 2), 7, True, 9),
        ((10, 0, 2), 9, True, 11),  # started: only silence ends it, past the total too
        ((10, 3, 2), 0, False, 2),
        ((10, 3, 2), 4, True, 6),
    ],
)
def test_deadline(limits, t_activity, started, deadline):
    assert Limits(*limits).deadline(0.0, t_activity, started) == deadline


@pytest.mark.parametrize(
    ("now", "t_activity", "started", "waiting", "expected"),
    [
        (4.9, 4.0, False, False, None),
        (5.0, 0, False, False, "responseStartTimeoutSeconds=5"),
        (5.0, 0, False, True, "responseStartTimeoutSeconds=5"),
        (5.0, 4.0, True, False, None),  # started: responseStartTimeoutSeconds is over
        (6.0, 4.0, True, False, "idleTimeoutSeconds=2"),
        (10.0, 9.5, False, False, "within timeoutSeconds=10"),
        (10.0, 9.5, True, False, None),  # started and not silent: timeoutSeconds is over
        (30.0, 29.5, True, False, None),  # ... however long it streams
        (31.5, 29.5, True, False, "idleTimeoutSeconds=2"),  # until it falls silent
        (10.0, 9.5, False, True, "held"),  # waited for a slot the whole time
    ],
)
def test_expired_names_the_timeout(now, t_activity, started, waiting, expected):
    limits = Limits(10, 5, 2, upstream=b"revision default/r", held_body=HELD)
    reason = limits.expired(now, 0.0, t_activity, started, waiting)
    if expected is None:
        assert reason is None
    else:
        assert expected.encode() in reason


@pytest.mark.parametrize(
    ("limits", "now", "started", "expected"),
    [
        # timeoutSeconds alone: a 504 before the response starts, nothing after.
        ((2, 0, 0), 1.9, False, None),
        ((2, 0, 0), 2.0, False, "timeoutSeconds=2"),
        ((2, 0, 0), 2.0, True, None),
        ((2, 0, 0), 3600.0, True, None),
        # responseStartTimeoutSeconds likewise.
        ((10, 1, 0), 1.0, False, "responseStartTimeoutSeconds=1"),
        ((10, 1, 0), 1.0, True, None),
        ((10, 1, 0), 10.0, True, None),
    ],
)
def test_started_responses_outlive_timeout_seconds(limits, now, started, expected):
    reason = Limits(*limits).expired(now, 0.0, 0.0, started, False)
    if expected is None:
        assert reason is None
    else:
        assert expected.encode() in reason


def test_bodies_name_the_upstream():
    limits = Limits(300, 1, 2, upstream=b"revision default/r")
    assert limits.timeout_body == b"timeout: revision default/r did not answer within timeoutSeconds=300\n"
    assert limits.held_body == limits.timeout_body
    assert b"revision default/r did not start answering" in limits.response_start_body
    assert b"no bytes from revision default/r for idleTimeoutSeconds=2" in limits.idle_body
