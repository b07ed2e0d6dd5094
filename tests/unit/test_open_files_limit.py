"""ebb.common.procs.raise_open_files_limit: the soft limit goes up to the hard one."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

# Run in a child process: the test runner's own limits stay as they are.
CHILD = """
import json, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
from ebb.common.procs import raise_open_files_limit
returned = raise_open_files_limit()
print(json.dumps([returned, *resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def _child(start_soft: int) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(start_soft)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return tuple(json.loads(out))


def test_a_low_soft_limit_is_raised_to_the_hard_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    returned, soft, hard_after = _child(256)
    assert hard_after == hard
    assert soft > 256 and returned == soft
    if hard != resource.RLIM_INFINITY:
        assert soft == hard


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit here")
    returned, soft_after, _ = _child(hard)
    assert returned == soft_after == hard
