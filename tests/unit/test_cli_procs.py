"""`ebb up`'s child bookkeeping: its direct children from /proc, and reaping the zombies
among them that no Popen owns."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from ebb.cli import procs


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while (info := procs.read_proc(pid)) is not None and info.state != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)


def test_child_pids_lists_our_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procs.child_pids()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procs.child_pids()


def test_reap_zombies_reaps_ours_and_leaves_skipped_ones_to_popen():
    owned = subprocess.Popen([sys.executable, "-c", "pass"])
    # A child nobody holds a Popen for (as an orphan re-parented to `ebb up`).
    stray = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)
    try:
        for pid in (owned.pid, stray):
            _wait_zombie(pid)
        procs.reap_zombies({owned.pid})
        assert procs.read_proc(stray) is None  # reaped: gone from /proc
        assert procs.read_proc(owned.pid).state == "Z"  # left for its Popen
        assert owned.wait(timeout=5) == 0
    finally:
        if owned.returncode is None:
            owned.kill()
            owned.wait()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(stray, 0)
