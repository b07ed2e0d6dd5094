"""A tiny, fast HTTP/1.1 upstream for the benchmarks (uvloop + httptools, no framework).

Runnable as a plain script (the Ebb controller starts it by path, with PORT set) or as
`python -m bench.app`:

    python bench/app.py --port 8000 [--delay-ms 100]

Every request is answered 200 with a 14-byte body after --delay-ms (0: at once, from the
data_received callback, so the app is never the bottleneck of a Python proxy in front of
it). Keep-alive, HTTP/1.0 and `Connection: close` are honoured; pipelined requests are
answered in order. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import httptools

BODY = b"Hello from ebb\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
RESPONSE_KEEP = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY


class _Conn(asyncio.Protocol):
    __slots__ = ("loop", "delay_s", "transport", "parser", "pending", "closing")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self.loop = loop
        self.delay_s = delay_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending = 0  # delayed answers not sent yet (pipelining keeps order: same delay)
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()

    def on_message_complete(self) -> None:
        close = not self.parser.should_keep_alive()
        if self.delay_s > 0:
            self.pending += 1
            self.loop.call_later(self.delay_s, self._answer, close)
        else:
            self._answer(close)

    def _answer(self, close: bool) -> None:
        if self.delay_s > 0:
            self.pending -= 1
        transport = self.transport
        if transport is None or self.closing:
            return
        if close:
            self.closing = True
            transport.write(RESPONSE_CLOSE)
            transport.close()
        else:
            transport.write(RESPONSE_KEEP)


async def serve(host: str, port: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(loop, delay_s), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench app listening on {host}:{port} (delay {delay_s * 1000:g} ms)",
          file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--delay-ms", type=float,
                        default=float(os.environ.get("BENCH_DELAY_MS", "0")))
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # still works, slower
        asyncio.run(serve(args.host, args.port, args.delay_ms / 1000))
    else:
        uvloop.run(serve(args.host, args.port, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
