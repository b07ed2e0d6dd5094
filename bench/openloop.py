"""A bounded open-loop (constant-rate) HTTP/1.1 load generator, for the 1,000 requests/s
point: wrk is closed-loop (a slow answer delays the next request, hiding latency) and
Debian ships no wrk2.

    python -m bench.openloop --url http://127.0.0.1:8080/ --rate 1000 --duration 10

Request i is due at t0 + i/rate whatever happened before; it goes out on an idle
keep-alive connection or a new one. Its latency is measured from when it was *due*, not
when it was sent, so a stalled generator or proxy cannot hide queueing (no coordinated
omission). Requests due in the first --warmup seconds are sent but not counted. The
result is one JSON object on stdout; `send_lag_ms` shows how late the generator itself
sent (if its p99 is large, the figures measure the generator, not the target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httptools

from bench.stats import latency_summary

MAX_DURATION_S = 600.0
MAX_RATE = 20_000.0


class _Conn(asyncio.Protocol):
    """One keep-alive client connection carrying one request at a time."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.counted = False
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, due: float, counted: bool) -> None:
        self.due = due
        self.counted = counted
        self.busy = True
        self.timer = self.gen.loop.call_later(self.gen.timeout_s, self._timed_out)
        assert self.transport is not None
        self.transport.write(self.gen.request)
        self.gen.lag(due, counted)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("other")

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.busy = False
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        self.gen.done(self.due, now, self.counted, 200 <= status < 400)
        if keep and self.transport is not None and not self.transport.is_closing():
            self.gen.idle.append(self)
        elif self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self.timer = None
        self._fail("timeout")

    def _fail(self, kind: str) -> None:
        if self.busy:
            self.busy = False
            self.gen.failed(kind, self.counted)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("read")
        self.transport = None
        try:
            self.gen.idle.remove(self)
        except ValueError:
            pass


class Generator:
    def __init__(self, url: str, rate: float, duration_s: float, warmup_s: float,
                 timeout_s: float, headers: Sequence[tuple[str, str]], max_connections: int
                 ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url = {url!r}, must be http://HOST:PORT/PATH")
        self.host = parts.hostname
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        names = {name.lower() for name, _ in headers}
        lines = [f"GET {path} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {parts.netloc}")
        lines += [f"{name}: {value}" for name, value in headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.rate = rate
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.connections = 0
        self.outstanding = 0
        self.latencies_ms: list[float] = []
        self.lags_ms: list[float] = []
        self.errors = {"status": 0, "connect": 0, "timeout": 0, "read": 0, "other": 0,
                       "overload": 0}
        self.ok = 0
        self.sent = 0
        self.all_done = asyncio.Event()

    # -- accounting (called by connections) --

    def lag(self, due: float, counted: bool) -> None:
        self.sent += counted
        if counted:
            self.lags_ms.append((time.perf_counter() - due) * 1000)

    def done(self, due: float, now: float, counted: bool, ok: bool) -> None:
        self._finished()
        if not counted:
            return
        if ok:
            self.ok += 1
            self.latencies_ms.append((now - due) * 1000)
        else:
            self.errors["status"] += 1

    def failed(self, kind: str, counted: bool) -> None:
        self._finished()
        if counted:
            self.errors[kind] += 1

    def _finished(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.all_done.set()

    # -- sending --

    def _fire(self, due: float, counted: bool) -> None:
        self.outstanding += 1
        self.all_done.clear()
        if self.idle:
            self.idle.pop().send(due, counted)
        elif self.connections >= self.max_connections:
            self.failed("overload", counted)
        else:
            self.connections += 1
            self.loop.create_task(self._connect_and_send(due, counted))

    async def _connect_and_send(self, due: float, counted: bool) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                _, conn = await self.loop.create_connection(lambda: _Conn(self),
                                                            self.host, self.port)
        except (OSError, TimeoutError):
            self.connections -= 1
            self.failed("connect", counted)
            return
        conn.send(due, counted)

    async def run(self) -> dict:
        total = int((self.warmup_s + self.duration_s) * self.rate)
        warm = int(self.warmup_s * self.rate)
        interval = 1.0 / self.rate
        start = time.perf_counter() + 0.01
        i = 0
        while i < total:
            now = time.perf_counter()
            while i < total and start + i * interval <= now:
                self._fire(start + i * interval, i >= warm)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        if self.outstanding:
            try:
                async with asyncio.timeout(self.timeout_s + 1):
                    await self.all_done.wait()
            except TimeoutError:
                pass
        elapsed = time.perf_counter() - start
        for conn in list(self.idle):
            if conn.transport is not None:
                conn.transport.close()
        counted = total - warm
        return {
            "rate": self.rate, "duration_s": self.duration_s, "warmup_s": self.warmup_s,
            "scheduled": counted, "sent": self.sent, "ok": self.ok, "errors": self.errors,
            "connections": self.connections, "elapsed_s": round(elapsed, 3),
            "latency_ms": latency_summary(self.latencies_ms),
            "send_lag_ms": latency_summary(self.lags_ms),
        }


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header {text!r}, must be NAME: VALUE")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent, not counted")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--max-connections", type=int, default=4000)
    parser.add_argument("-H", "--header", type=_header, action="append", default=[])
    args = parser.parse_args(argv)
    if not 0 < args.rate <= MAX_RATE:
        parser.error(f"rate = {args.rate:g}, must be greater than 0 and at most {MAX_RATE:g}")
    if not 0 < args.duration <= MAX_DURATION_S or not 0 <= args.warmup <= MAX_DURATION_S:
        parser.error(f"duration must be in (0, {MAX_DURATION_S:g}] s, warmup in [0, "
                     f"{MAX_DURATION_S:g}] s")

    async def go() -> dict:
        gen = Generator(args.url, args.rate, args.duration, args.warmup, args.timeout,
                        args.header, args.max_connections)
        return await gen.run()

    try:
        import uvloop
    except ImportError:
        result = asyncio.run(go())
    else:
        result = uvloop.run(go())
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
