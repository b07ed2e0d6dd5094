"""Streams the queue's per-second `Stat`s to the autoscaler over one long-lived gRPC stream.

Two tasks: a ticker closes a stats period every second and queues a `StreamStatsRequest`
(bounded; the oldest is dropped when the autoscaler cannot keep up), and a sender keeps
one `StatsService.StreamStats` client stream open, reconnecting with exponential backoff
(capped) when it breaks. The request path never waits on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import grpc

from ebb.api.autoscaler.v1 import autoscaler_pb2, autoscaler_pb2_grpc
from ebb.queue.stats import Report

log = logging.getLogger(__name__)

PERIOD_S = 1.0
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
MAX_PENDING = 60  # a minute of stats survives an autoscaler restart
WRITE_TIMEOUT_S = 5.0

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


class Reporter:
    """Closes a stats period every `period_s` and streams it to `target` (HOST:PORT)."""

    def __init__(
        self,
        target: str,
        *,
        instance: str,
        namespace: str,
        revision: str,
        snapshot: Callable[[float], Report],
        started_at: float,
        period_s: float = PERIOD_S,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._target = target
        self._instance = instance
        self._key = autoscaler_pb2.RevisionKey(namespace=namespace, name=revision)
        self._snapshot = snapshot
        self._started_at = started_at
        self._period_s = period_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock  # the clock `snapshot` and `started_at` are in
        self._wall_clock = wall_clock  # only for the Stat's timestamp
        self._pending: deque[autoscaler_pb2.StreamStatsRequest] = deque(maxlen=max_pending)
        self._wakeup = asyncio.Event()  # something to send
        self._emptied = asyncio.Event()  # everything pending was sent
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamUnaryCall | None = None
        self.sent = 0  # requests written to a stream
        self.connects = 0  # streams opened
        self.dropped = 0  # requests dropped because the queue was full

    def start(self) -> None:
        """Start the ticker and the sender (on the running loop)."""
        self._channel = grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._send())]

    def build(self, report: Report, now: float) -> autoscaler_pb2.StreamStatsRequest:
        """The request carrying one period's figures."""
        stat = autoscaler_pb2.Stat(
            instance=self._instance,
            revision=self._key,
            average_concurrency=report.average_concurrency,
            average_proxied_concurrency=report.average_proxied_concurrency,
            request_count=report.request_count,
            proxied_request_count=report.proxied_request_count,
            process_uptime_seconds=max(now - self._started_at, 0.0),
            period_seconds=report.period_s,
        )
        stat.timestamp.FromNanoseconds(int(self._wall_clock() * 1e9))
        return autoscaler_pb2.StreamStatsRequest(stats=[stat])

    def _enqueue(self, now: float) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest
        self._pending.append(self.build(self._snapshot(now), now))
        self._wakeup.set()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._period_s
        while True:
            await asyncio.sleep(max(next_at - loop.time(), 0.0))
            now = loop.time()
            self._enqueue(self._clock())
            next_at += self._period_s
            if next_at < now:  # the loop was stalled for whole periods: do not burst
                next_at = now + self._period_s

    async def _send(self) -> None:
        stub = autoscaler_pb2_grpc.StatsServiceStub(self._channel)
        backoff = self._initial_backoff_s
        failing = False
        while True:
            call = stub.StreamStats()
            self._call = call
            self.connects += 1
            try:
                while True:
                    if call.done():
                        raise ConnectionError("the autoscaler closed the stats stream")
                    if not self._pending:
                        self._wakeup.clear()
                        await self._wakeup.wait()
                        continue
                    await asyncio.wait_for(call.write(self._pending[0]), WRITE_TIMEOUT_S)
                    self._pending.popleft()
                    self.sent += 1
                    if not self._pending:
                        self._emptied.set()
                    backoff = self._initial_backoff_s
                    if failing:
                        failing = False
                        log.info("stats stream restored", extra={"autoscaler": self._target})
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as exc:  # any failure of the stream: reconnect after a pause
                call.cancel()
                if not failing:
                    failing = True
                    log.warning(
                        "stats stream failed; reconnecting",
                        extra={"autoscaler": self._target, "error": _describe(exc)},
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    async def stop(self, flush_timeout_s: float = 1.0) -> None:
        """Queue the last (partial) period, try to send what is pending, close the stream."""
        if not self._tasks:
            return
        ticker, sender = self._tasks
        ticker.cancel()
        self._emptied.clear()
        self._enqueue(self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._emptied.wait(), flush_timeout_s)
        call = self._call
        if call is not None and not call.done() and not self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.done_writing(), 0.5)
                await asyncio.wait_for(call, 0.5)
        sender.cancel()
        await asyncio.gather(ticker, sender, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
