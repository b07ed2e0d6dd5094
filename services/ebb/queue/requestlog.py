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

Cost on the loop. Per request, `record` puts the line's final values (bytes and ints,
nothing the garbage collector walks) into a flat list. Every `flush_s`, or every
`max_batch` requests, the whole batch becomes bytes in one C call, the line template
repeated once per request `%` the list, and goes to a writer thread: a slow or blocked
stdout (a full pipe) holds up that thread, never the loop. Formatting each line as its
request ended, or keeping the exchanges until the batch, cost twice as much (profiled
under load: 11 % of the queue's CPU, against 5 to 6 % now). If the writer falls
`max_pending` batches behind, further batches are dropped and counted (`dropped`,
exported as `ebb_queue_request_logs_dropped_total`) rather than buffered without bound.
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
_FIELDS = 10  # values `record` keeps per request: the %-fields of _LINE
_PATH = 3  # where the path is among them

# Bytes a path may carry straight into a JSON string: printable ASCII but `"` and `\`.
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x21\x23-\x5b\x5d-\x7e]')
# latency_ms is written from whole microseconds as %d.%03d: formatting a float with %.3f
# costs more than the rest of the line. FIXED (the same on every line) is filled in once.
_LINE = (
    b'{"ts":"%s.%03dZ",FIXED"method":"%s","path":"%s","status":%d,"latency_ms":%d.%03d,'
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
        fixed = (
            b'"level":"info","component":"queue","logger":"ebb.queue.request","msg":"request",'
            + b'"namespace":%s,"revision":%s,"instance":%s,'
            % tuple(json.dumps(v).encode() for v in (namespace, revision, instance))
        )
        self._line = _LINE.replace(b"FIXED", fixed.replace(b"%", b"%%"))
        self._flat: list = []  # _FIELDS values per request, see `record`
        self._max_flat = max_batch * _FIELDS
        self._to_wall = wall_clock() - clock()  # monotonic -> wall; renewed at each flush
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
        """`ex` has ended (its `status`, `t_begin` and `t_end` are set): log it."""
        t_end = ex.t_end
        now = t_end + self._to_wall
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        path = ex.url  # checked for JSON, a batch at a time (`_clean_paths`)
        query = path.find(b"?")
        if query >= 0:
            path = path[:query]
        span = ex.span
        if span is not None:
            trace_id = (
                span.trace_id if span.__class__ is UnsampledSpan else Tracing.trace_id_of(span)
            ).encode()
        elif ex.traceparent is not None:
            trace_id = trace_id_bytes(ex.traceparent)
        else:
            trace_id = b""
        latency_us = int((t_end - ex.t_begin) * 1_000_000.0 + 0.5)
        if latency_us < 0:
            latency_us = 0
        flat = self._flat
        flat.extend(
            (
                self._second_text,
                int((now - second) * 1000),
                ex.method,
                path,
                ex.status or CLIENT_CLOSED,
                latency_us // 1000,
                latency_us % 1000,
                ex.bytes_in,
                ex.bytes_out,
                trace_id,
            )
        )
        if len(flat) >= self._max_flat:
            self.flush()

    # -- handing off

    def flush(self) -> None:
        """Format what is buffered and hand it to the writer thread (never blocks)."""
        self._to_wall = self._wall_clock() - self._clock()  # follows steps of the wall clock
        flat = self._flat
        if not flat:
            return
        self._flat = []
        count = len(flat) // _FIELDS
        if self._pending.qsize() >= self._max_pending:
            self.dropped += count
            return
        self.lines += count
        self._clean_paths(flat)
        self._ensure_thread()
        self._pending.put((self._line * count) % tuple(flat))

    @staticmethod
    def _clean_paths(flat: list) -> None:
        """Make every path in the batch fit in a JSON string and MAX_PATH: one regex search
        over all of them (C speed); only a batch that has an odd one is walked."""
        paths = flat[_PATH :: _FIELDS]
        if max(map(len, paths)) <= MAX_PATH and _NEEDS_ESCAPE.search(b" ".join(paths)) is None:
            return
        for i in range(_PATH, len(flat), _FIELDS):
            path = flat[i]
            if len(path) > MAX_PATH or _NEEDS_ESCAPE.search(path) is not None:
                flat[i] = _json_text(path[:MAX_PATH].decode("utf-8", "backslashreplace"))

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
