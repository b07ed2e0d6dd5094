"""The queue's request log: one JSON line per request on stdout, written off the event loop.

A line looks like (one line; wrapped here):

    {"ts":"2025-06-01T12:00:00.123Z","level":"info","component":"queue",
     "logger":"ebb.queue.request","msg":"request","namespace":"default",
     "revision":"hello-00001","instance":"hello-00001-3fa2c1","method":"GET","path":"/",
     "status":200,"latency_ms":1.234,"bytes_in":0,"bytes_out":14,
     "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}

`ts`, `level`, `component`, `logger` and `msg` are what the queue's own log lines carry
(ebb.common.logs), so one reader handles both; request lines go to stdout, the queue's
own lines to stderr. `path` is the request path without its query string (a query can
carry secrets, and logs are kept longer than requests); `trace_id` is the request's trace
(ours when tracing is on, else the caller's valid `traceparent`), or "" for none;
`status` 499 means the client left before any answer.

Cost on the loop: per request, its fields are copied into a flat list (its end time is on
the proxy's monotonic clock, turned into wall time once per batch). Every `flush_s`, or
every `max_batch` requests, the batch is formatted in one tight loop (bytes `%`, about a
microsecond a line) and handed to a writer thread: a slow or blocked stdout (a full pipe)
holds up that thread, never the loop. If
the writer falls `max_pending` batches behind, further batches are dropped and counted
(`dropped`, exported as `ebb_queue_request_logs_dropped_total`) rather than buffered
without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ebb.common.http1 import CLIENT_CLOSED, Exchange
from ebb.common.tracing import Tracing, UnsampledSpan, trace_id_bytes

log = logging.getLogger(__name__)

FLUSH_S = 1.0
MAX_BATCH = 1024  # lines handed to the writer at once, at most
MAX_PENDING = 64  # batches the writer may be behind before new ones are dropped
MAX_PATH = 2048  # bytes of the path logged
_FIELDS = 8  # values `record` keeps per request

# Bytes a path may carry straight into a JSON string: printable ASCII but `"` and `\`.
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x21\x23-\x5b\x5d-\x7e]')
# latency_ms is written from whole microseconds as %d.%03d: formatting a float with %.3f
# costs more than the rest of the line.
_LINE = (
    b'{"ts":"%s.%03dZ",%s"method":"%s","path":"%s","status":%d,"latency_ms":%d.%03d,'
    b'"bytes_in":%d,"bytes_out":%d,"trace_id":"%s"}\n'
)


def _json_text(value: str) -> bytes:
    """`value` as the inside of a JSON string."""
    return json.dumps(value)[1:-1].encode()


class RequestLog:
    """Formats request lines on the loop and writes them from a thread."""

    def __init__(
        self,
        *,
        namespace: str,
        revision: str,
        instance: str,
        stream: BinaryIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        flush_s: float = FLUSH_S,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._clock = clock  # the proxy's: exchanges' t_begin and t_end are on it
        self._wall_clock = wall_clock
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        # Everything between "ts" and "method" is the same on every line.
        self._fixed = (
            b'"level":"info","component":"queue","logger":"ebb.queue.request","msg":"request",'
            + b'"namespace":%s,"revision":%s,"instance":%s,'
            % tuple(json.dumps(v).encode() for v in (namespace, revision, instance))
        )
        self._flat: list = []  # _FIELDS values per request, see `record`
        self._max_flat = max_batch * _FIELDS
        self._second = -1
        self._second_text = b""
        self._pending: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.lines = 0  # lines formatted and handed to the writer
        self.dropped = 0  # lines dropped because the writer was too far behind
        self.write_errors = 0  # batches the stream refused (closed stdout, EPIPE)

    # -- the hot path

    def record(self, ex: Exchange) -> None:
        """`ex` has ended (its `status`, `t_begin` and `t_end` are set): log it. Its fields
        are copied into one flat list of immutable values (nothing the garbage collector
        has to walk; keeping the exchanges themselves until the batch is formatted cost
        more than formatting); lines are formatted with their batch (`flush`)."""
        span = ex.span
        if span is None:
            trace = ex.traceparent  # bytes as received, or None
        elif span.__class__ is UnsampledSpan:
            trace = span.trace_id
        else:
            trace = Tracing.trace_id_of(span)
        flat = self._flat
        flat.extend((ex.t_end, ex.t_begin, ex.method, ex.url, ex.status, ex.bytes_in, ex.bytes_out, trace))
        if len(flat) >= self._max_flat:
            self.flush()

    # -- handing off

    def flush(self) -> None:
        """Format what is buffered and hand it to the writer thread (never blocks)."""
        flat = self._flat
        if not flat:
            return
        self._flat = []
        count = len(flat) // _FIELDS
        if self._pending.qsize() >= self._max_pending:
            self.dropped += count
            return
        self.lines += count
        self._ensure_thread()
        self._pending.put(self._format(flat))

    def _format(self, flat: list) -> bytes:
        lines = []
        append = lines.append
        line, fixed, needs_escape = _LINE, self._fixed, _NEEDS_ESCAPE.search
        to_wall = self._wall_clock() - self._clock()  # one offset per batch
        fields = iter(flat)
        for t_end, t_begin, method, path, status, bytes_in, bytes_out, trace in zip(
            *(fields,) * _FIELDS, strict=True
        ):
            now = t_end + to_wall
            second = int(now)
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            query = path.find(b"?")
            if query >= 0:
                path = path[:query]
            if len(path) > MAX_PATH:
                path = path[:MAX_PATH]
            if needs_escape(path) is not None:
                path = _json_text(path.decode("utf-8", "backslashreplace"))
            if trace is None:
                trace_id = b""
            elif trace.__class__ is str:
                trace_id = trace.encode()
            else:
                trace_id = trace_id_bytes(trace)
            latency_us = max(int((t_end - t_begin) * 1_000_000.0 + 0.5), 0)
            append(
                line
                % (
                    self._second_text,
                    int((now - second) * 1000),
                    fixed,
                    method,
                    path,
                    status or CLIENT_CLOSED,
                    latency_us // 1000,
                    latency_us % 1000,
                    bytes_in,
                    bytes_out,
                    trace_id,
                )
            )
        return b"".join(lines)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Flush every `flush_s` on `loop` (the running loop by default)."""
        self._loop = loop or asyncio.get_running_loop()
        self._ensure_thread()
        self._timer = self._loop.call_later(self._flush_s, self._tick)

    def _tick(self) -> None:
        self.flush()
        if not self._closed:
            self._timer = self._loop.call_later(self._flush_s, self._tick)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name="request-log", daemon=True)
            self._thread.start()

    def _write_forever(self) -> None:
        stream = self._stream
        while True:
            blob = self._pending.get()
            if blob is None:
                return
            try:
                stream.write(blob)
                stream.flush()
            except (OSError, ValueError):  # stdout closed or gone: count it, keep draining
                self.write_errors += 1

    # -- shutdown

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush, write what is pending and stop the writer (waits at most `timeout_s`);
        idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        thread = self._thread
        if thread is not None:
            self._pending.put(None)
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("request log: stdout is not taking lines; the rest is dropped")

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """close() with the waiting off the loop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()  # on the loop, where the buffer lives
        await asyncio.to_thread(self.close, timeout_s)
