"""Linux process helpers for `ebb up`'s safety net: subreaper, parent-death signal, /proc walks.

`ebb up` makes itself a child subreaper, so a process orphaned by a crashed component (an
app started by the controller, say) is re-parented to `ebb up` instead of init, and the
final sweep can find and stop it. Everything here degrades to a no-op off Linux.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux >= 3.4); False where unsupported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """preexec_fn for children: SIGTERM them if `ebb up` dies (even by SIGKILL)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str  # R, S, D, Z, ...
    start_ticks: int  # start time since boot, tells a pid from its reuse


def read_proc(pid: int) -> ProcInfo | None:
    """The /proc/PID/stat facts we need, or None when it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcInfo(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), state=rest[0], start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


def all_procs() -> list[ProcInfo]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    infos = []
    for name in names:
        if name.isdigit():
            info = read_proc(int(name))
            if info is not None:
                infos.append(info)
    return infos


def descendants(root: int) -> list[ProcInfo]:
    """Every live-or-zombie process below `root`, parents before children."""
    by_parent: dict[int, list[ProcInfo]] = {}
    for info in all_procs():
        by_parent.setdefault(info.ppid, []).append(info)
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop(0)
        for child in by_parent.get(pid, []):
            found.append(child)
            frontier.append(child.pid)
    return found


def alive(info: ProcInfo) -> bool:
    """True while this very process (same start time) exists and is not a zombie."""
    now = read_proc(info.pid)
    return now is not None and now.start_ticks == info.start_ticks and now.state != "Z"


def child_pids() -> list[int] | None:
    """Our direct children, from /proc/self/task/*/children (one small read per thread,
    where a /proc walk reads every process on the machine); None where the kernel has no
    such file."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
        for tid in tasks:
            with open(f"/proc/self/task/{tid}/children", "rb") as handle:
                pids.extend(int(pid) for pid in handle.read().split())
    except (OSError, ValueError):
        return None
    return pids


def reap_zombies(skip: set[int]) -> None:
    """Collect exit statuses of our zombie children, except the pids in `skip` (Popen owns them)."""
    children = child_pids()
    if children is None:
        me = os.getpid()
        zombies = [i.pid for i in all_procs() if i.ppid == me and i.state == "Z"]
    else:
        zombies = [pid for pid in children if (i := read_proc(pid)) is not None and i.state == "Z"]
    for pid in zombies:
        if pid in skip:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def signal_proc(info: ProcInfo, sig: int) -> None:
    if alive(info):
        try:
            os.kill(info.pid, sig)
        except ProcessLookupError:
            pass


def killpg_quietly(pgid: int, sig: int) -> None:
    """Signal a process group; a group that is already empty is fine."""
    if pgid <= 1 or pgid == os.getpgrp():
        return  # never our own group (that would signal `ebb up` and its shell)
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(leftovers: list[ProcInfo], skip: set[int], grace_s: float = 3.0) -> list[ProcInfo]:
    """SIGTERM the still-living `leftovers`, wait up to `grace_s`, SIGKILL the rest; reap.

    Returns the processes that were still alive (and so were stopped here).
    """
    living = [p for p in leftovers if alive(p)]
    for info in living:
        signal_proc(info, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in living):
        reap_zombies(skip)
        time.sleep(0.05)
    stubborn = [p for p in living if alive(p)]
    for info in stubborn:
        signal_proc(info, signal.SIGKILL)
    time.sleep(0.05 if stubborn else 0)
    reap_zombies(skip)
    return living
