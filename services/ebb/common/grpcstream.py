"""Long-lived gRPC streams that survive restarts of the other side (client helpers).

The queue and the activator stream stats to the autoscaler; the activator follows the
controller's endpoints. Each keeps one stream open and, when it breaks, opens it again
after an exponential backoff (capped), logging the outage once and the recovery once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

# No `import grpc` here: the queue imports this module and must not import grpcio
# (ebb.common.h2client is its stats stream). These are for grpcio's channels:
# keepalives notice a silently dead peer; reconnect backoff of the channel itself.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]

INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
# Each pause is spread by up to ±20 %, as in gRPC's connection-backoff spec: the queues
# of a fleet all lose the autoscaler at the same instant when it restarts, and without
# it they would all come back at the same instants too.
JITTER = 0.2

# One attempt: open the stream and use it until it breaks (by raising); calls `progress()`
# whenever the stream did useful work, which resets the backoff.
Attempt = Callable[[Callable[[], None]], Awaitable[None]]


def describe_error(exc: BaseException) -> str:
    """A one-line account of why a stream failed.

    gRPC errors are told by their `code()` and `details()` methods, which grpcio's
    `AioRpcError` and `ebb.common.h2client.RpcError` both have (duck-typed, so that
    neither is imported here): "UNAVAILABLE: connection lost"."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        status = code()
        return f"{getattr(status, 'name', status)}: {details()}"
    return f"{type(exc).__name__}: {exc}"


async def reconnect_forever(
    attempt: Attempt,
    *,
    what: str,
    target: str,
    log: logging.Logger,
    initial_backoff_s: float = INITIAL_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
    rand: Callable[[], float] = random.random,
) -> None:
    """Run `attempt` again and again until cancelled, pausing between failed ones
    (`initial_backoff_s`, doubling up to `max_backoff_s`, each pause ± `JITTER`)."""
    backoff = initial_backoff_s
    failing = False

    def progress() -> None:
        nonlocal backoff, failing
        backoff = initial_backoff_s
        if failing:
            failing = False
            log.info(f"{what} restored", extra={"target": target})

    while True:
        try:
            await attempt(progress)
            raise ConnectionError(f"the {what} ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the stream: reconnect after a pause
            if not failing:
                failing = True
                log.warning(
                    f"{what} failed; reconnecting",
                    extra={"target": target, "error": describe_error(exc)},
                )
        await asyncio.sleep(backoff * (1.0 + JITTER * (2.0 * rand() - 1.0)))
        backoff = min(backoff * 2, max_backoff_s)
