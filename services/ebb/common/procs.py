"""Process helpers shared by the services, the controller's local runtime and `ebb up`
(Linux /proc, resource limits)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as dead.

    A zombie that is our own child is reaped on the way, so it does not linger.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# Where the hard limit is "unlimited", the soft one goes no higher than Linux's default
# per-process ceiling (fs.nr_open), which setrlimit would refuse to pass.
_OPEN_FILES_CAP = 1 << 20


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, as Go programs do
    at start, and return the soft limit in force after. Each connection is a file: the
    usual soft default of 1,024 would cap a server at about a thousand peers (for the
    autoscaler, a thousand queues). Never raises: if the kernel refuses, nothing changes.
    Processes started afterwards (the apps under `ebb up`) inherit the raised limit, as
    containers get a high one from their runtime."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target
