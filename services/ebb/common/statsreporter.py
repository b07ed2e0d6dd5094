"""Streams per-second `Stat`s to the autoscaler over one long-lived gRPC client stream.

Used by the queue (one revision) and the activator (every revision it carries traffic
for). Two tasks: a ticker closes a stats period every second and queues one
`StreamStatsRequest` with a `Stat` per revision (bounded; the oldest is dropped when the
autoscaler cannot keep up), and a sender keeps one `StatsService.StreamStats` stream open,
reconnecting with exponential backoff (capped) when it breaks. `send_now` queues a batch
outside the tick (the activator's poke). The request path never waits on either.

The stream is `ebb.common.h2client.StreamCall`, not grpcio: a queue that never imports
`grpc` is ~12 MB smaller (issue #8). With tracing on, each stream is one CLIENT span named
after the method (as grpcio's instrumentation names it), whose `traceparent` goes in the
call's metadata; it ends with the stream's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ebb.api.autoscaler.v1 import autoscaler_pb2
from ebb.common.grpcstream import INITIAL_BACKOFF_S, MAX_BACKOFF_S, reconnect_forever
from ebb.common.h2client import GrpcStatus, RpcError, StreamCall
from ebb.common.stats import Report

if TYPE_CHECKING:
    from ebb.common.tracing import Tracing

log = logging.getLogger(__name__)

PERIOD_S = 1.0
MAX_PENDING = 60  # a minute of stats survives an autoscaler restart
WRITE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
SERVICE = "ebb.api.autoscaler.v1.StatsService"
METHOD = "StreamStats"
STREAM_STATS_PATH = f"/{SERVICE}/{METHOD}"

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
        tracing: Tracing | None = None,
        **call_options: float,
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
        self._tracing = tracing if tracing is not None and tracing.enabled else None
        # StreamCall's options (keepalive_s, keepalive_timeout_s, ...), for tests.
        self._call_options = {"write_timeout_s": WRITE_TIMEOUT_S, **call_options}
        self._call: StreamCall | None = None
        self.sent = 0  # requests written to a stream
        self.connects = 0  # streams tried (a connection that fails counts)
        self.dropped = 0  # requests dropped because the queue was full

    def start(self) -> None:
        """Start the ticker and the sender (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._send())]

    def build(
        self, reports: Iterable[RevisionReport], now: float
    ) -> autoscaler_pb2.StreamStatsRequest:
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
        self.connects += 1  # an attempt, as grpcio counted its calls
        span = self._start_span()
        call = None
        error: BaseException | None = None
        try:
            call = await StreamCall.open(
                self._target,
                STREAM_STATS_PATH,
                metadata=self._tracing.trace_headers(span) if span is not None else (),
                timeout_s=CONNECT_TIMEOUT_S,
                **self._call_options,
            )
            self._call = call
            await self._write_pending(call, progress)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:  # before cancel(): a stream that ended OK stays OK
                _end_span(span, _outcome(call, error))
            if call is not None:
                call.cancel()  # closes the connection, if the stream is not over already

    async def _write_pending(self, call: StreamCall, progress: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        first_write_at: float | None = None
        while True:
            if call.done():
                await call.response()  # raises the stream's error, if it failed
                raise ConnectionError("the autoscaler closed the stats stream")
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await call.write(self._pending[0].SerializeToString())
            self._pending.popleft()
            self.sent += 1
            if not self._pending:
                self._emptied.set()
            # A write only reached the socket. A server that refuses every stream (a wrong
            # port, an unknown method) answers within milliseconds, so the stream counts
            # as restored (the backoff starts over) only once it has outlived a period.
            now = loop.time()
            if first_write_at is None:
                first_write_at = now
            elif now - first_write_at >= self._period_s:
                progress()

    def _start_span(self):
        """The stream's CLIENT span (tracing on), else None."""
        if self._tracing is None:
            return None
        from opentelemetry.trace import SpanKind

        return self._tracing.tracer(__name__).start_span(
            STREAM_STATS_PATH,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": METHOD},
        )

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
                await asyncio.wait_for(call.response(), 0.5)
        sender.cancel()
        await asyncio.gather(ticker, sender, return_exceptions=True)
        self._tasks = []
        if call is not None:
            await call.aclose()  # the socket is gone before stop() returns


def _outcome(call: StreamCall | None, error: BaseException | None) -> tuple[GrpcStatus, str]:
    """How a stream ended, as a gRPC status: the call's own when it is over, else what
    interrupted it (the reporter stopping, a write that timed out, no connection)."""
    if call is not None and call.done():
        failure = call.error()
        return (GrpcStatus.OK, "") if failure is None else (failure.status, failure.message)
    if isinstance(error, RpcError):
        return error.status, error.message
    if error is None or isinstance(error, asyncio.CancelledError):
        return GrpcStatus.CANCELLED, "the reporter stopped"
    status = GrpcStatus.DEADLINE_EXCEEDED if isinstance(error, TimeoutError) else GrpcStatus.UNKNOWN
    return status, f"{type(error).__name__}: {error}"


def _end_span(span, outcome: tuple[GrpcStatus, str]) -> None:
    status, message = outcome
    span.set_attribute("rpc.grpc.status_code", int(status))
    if status != GrpcStatus.OK:
        from opentelemetry.trace.status import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"{status.name}: {message}"))
    span.end()
