"""Streams per-second `Stat`s to the autoscaler over one long-lived gRPC client stream.

Used by the queue (one revision) and the activator (every revision it carries traffic
for). Two tasks: a ticker closes a stats period every second and queues one
`StreamStatsRequest` with a `Stat` per revision (bounded; the oldest is dropped when the
autoscaler cannot keep up), and a sender keeps one `StatsService.StreamStats` stream open,
reconnecting with exponential backoff (capped) when it breaks. `send_now` queues a batch
outside the tick (the activator's poke). The request path never waits on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import grpc

from ebb.api.autoscaler.v1 import autoscaler_pb2, autoscaler_pb2_grpc
from ebb.common.grpcstream import (
    CHANNEL_OPTIONS,
    INITIAL_BACKOFF_S,
    MAX_BACKOFF_S,
    reconnect_forever,
)
from ebb.common.stats import Report

log = logging.getLogger(__name__)

PERIOD_S = 1.0
MAX_PENDING = 60  # a minute of stats survives an autoscaler restart
WRITE_TIMEOUT_S = 5.0

# One revision's figures for one period: (namespace, name, report).
RevisionReport = tuple[str, str, Report]
Collect = Callable[[float], Iterable[RevisionReport]]


class StatsReporter:
    """Every `period_s`, streams what `collect(now)` returns to `target` (HOST:PORT).

    `collect` closes the period of each revision it reports; a period with nothing to
    report (an idle activator) sends nothing.
    """

    def __init__(
        self,
        target: str,
        *,
        instance: str,
        collect: Collect,
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
        self._collect = collect
        self._started_at = started_at
        self._period_s = period_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock  # the clock `collect` and `started_at` are in
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
        self._channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._send())]

    def build(self, reports: Iterable[RevisionReport], now: float) -> autoscaler_pb2.StreamStatsRequest:
        """The request carrying one period's figures, one `Stat` per revision."""
        request = autoscaler_pb2.StreamStatsRequest()
        uptime_s = max(now - self._started_at, 0.0)
        timestamp_ns = int(self._wall_clock() * 1e9)
        for namespace, name, report in reports:
            stat = request.stats.add(
                instance=self._instance,
                revision=autoscaler_pb2.RevisionKey(namespace=namespace, name=name),
                average_concurrency=report.average_concurrency,
                average_proxied_concurrency=report.average_proxied_concurrency,
                request_count=report.request_count,
                proxied_request_count=report.proxied_request_count,
                process_uptime_seconds=uptime_s,
                period_seconds=report.period_s,
            )
            stat.timestamp.FromNanoseconds(timestamp_ns)
        return request

    def send_now(self, reports: Iterable[RevisionReport]) -> None:
        """Queue a batch at once, outside the tick (the activator's poke)."""
        self._push(self.build(reports, self._clock()))

    def _push(self, request: autoscaler_pb2.StreamStatsRequest) -> None:
        if not request.stats:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest
        self._pending.append(request)
        self._wakeup.set()

    def _enqueue(self, now: float) -> None:
        self._push(self.build(self._collect(now), now))

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._period_s
        while True:
            await asyncio.sleep(max(next_at - loop.time(), 0.0))
            now = loop.time()
            try:
                self._enqueue(self._clock())
            except Exception:  # one bad period must not end the reporting
                log.exception("cannot build a stats period")
            next_at += self._period_s
            if next_at < now:  # the loop was stalled for whole periods: do not burst
                next_at = now + self._period_s

    async def _send(self) -> None:
        await reconnect_forever(
            self._stream,
            what="stats stream",
            target=self._target,
            log=log,
            initial_backoff_s=self._initial_backoff_s,
            max_backoff_s=self._max_backoff_s,
        )

    async def _stream(self, progress: Callable[[], None]) -> None:
        """One stats stream, written to until it fails."""
        call = autoscaler_pb2_grpc.StatsServiceStub(self._channel).StreamStats()
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
                progress()
        finally:
            call.cancel()

    async def stop(self, flush_timeout_s: float = 1.0) -> None:
        """Queue the last (partial) period, try to send what is pending, close the stream."""
        if not self._tasks:
            return
        ticker, sender = self._tasks
        ticker.cancel()
        self._emptied.clear()
        self._enqueue(self._clock())
        if self._pending:
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
