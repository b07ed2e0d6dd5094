"""The three Knative timeouts as the shared proxy applies them (ebb.common.http1.Limits),
with a fake clock: which deadline applies and which 504 body names it."""

from __future__ import annotations

import pytest

from ebb.common.http1 import Limits

HELD = b"timeout: held\n"


@pytest.mark.parametrize(
    ("limits", "t_activity", "started", "deadline"),
    [
        ((10, 0, 0), 0, False, 10),
        ((10, 3, 0), 0, False, 3),  # until the response starts
        ((10, 3, 0), 0, True, 10),  # started: only the total remains
        ((10, 0, 2), 0, False, 2),
        ((10, 0, 2), 7, True, 9),  # idle counts from the last byte
        ((10, 0, 2), 9, True, 10),  # never beyond the total
        ((10, 3, 2), 0, False, 2),
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
        (5.0, 4.0, True, False, None),
        (6.0, 4.0, True, False, "idleTimeoutSeconds=2"),
        (10.0, 9.5, True, False, "within timeoutSeconds=10"),
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


def test_bodies_name_the_upstream():
    limits = Limits(300, 1, 2, upstream=b"revision default/r")
    assert limits.held_body == limits.timeout_body == b"timeout: no complete response within timeoutSeconds=300\n"
    assert b"revision default/r did not start answering" in limits.response_start_body
    assert b"no bytes from revision default/r for idleTimeoutSeconds=2" in limits.idle_body
