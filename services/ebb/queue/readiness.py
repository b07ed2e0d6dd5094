"""Readiness of the app: an aggressive TCP probe at start, then a periodic one.

`ProbeSchedule` is the pure part (results and `now` in, readiness and next delay out);
`probe_loop` holds the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# Knative's queue-proxy probes the app aggressively (100 ms timeout) for up to 10 s after
# start so an instance is ready the moment its app listens; after that it follows the
# revision's readiness probe (period 1 s, failure threshold 3 by Kubernetes defaults).
# The first second is probed every 5 ms: most apps listen within it, every millisecond
# there is a millisecond of cold start, and a refused local connect costs next to nothing.
EAGER_PERIOD_S = 0.005
EAGER_FOR_S = 1.0
AGGRESSIVE_PERIOD_S = 0.05
AGGRESSIVE_FOR_S = 10.0
PROBE_TIMEOUT_S = 0.1
PERIOD_S = 1.0
FAILURE_THRESHOLD = 3


class ProbeSchedule:
    """Decides readiness from probe results and when to probe next.

    Not ready: probe every 5 ms for 1 s since the app was last seen down, every 50 ms until
    10 s, then every 1 s; one success makes it ready. Ready: probe every 1 s; 3 failures in a row make it
    not ready again (and start a new 10 s of aggressive probing).
    """

    __slots__ = ("ready", "_failures", "_down_since")

    def __init__(self, now: float) -> None:
        self.ready = False
        self._failures = 0
        self._down_since = now

    def observe(self, ok: bool, now: float) -> float:
        """Record one probe result; returns the delay in seconds until the next probe."""
        if ok:
            self._failures = 0
            self.ready = True
            return PERIOD_S
        self._failures += 1
        if self.ready:
            if self._failures < FAILURE_THRESHOLD:
                return PERIOD_S
            self.ready = False
            self._down_since = now
        down_for = now - self._down_since
        if down_for < EAGER_FOR_S:
            return EAGER_PERIOD_S
        if down_for < AGGRESSIVE_FOR_S:
            return AGGRESSIVE_PERIOD_S
        return PERIOD_S


async def tcp_probe(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within timeout_s."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def probe_loop(
    host: str,
    port: int,
    on_change: Callable[[bool], None],
    probe: Callable[[str, int], Awaitable[bool]] | None = None,
) -> None:
    """Probe forever (until cancelled); call on_change(ready) whenever readiness flips."""
    loop = asyncio.get_running_loop()
    schedule = ProbeSchedule(loop.time())
    check = probe or tcp_probe
    ready = False
    while True:
        ok = await check(host, port)
        delay = schedule.observe(ok, loop.time())
        if schedule.ready != ready:
            ready = schedule.ready
            log.info("app %s", "ready" if ready else "not ready", extra={"app": f"{host}:{port}"})
            on_change(ready)
        await asyncio.sleep(delay)
