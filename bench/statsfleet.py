"""`python -m bench.autoscaler _h2fleet`: the ingest target's fleet, one HTTP/2 connection
per simulated queue, spoken directly with asyncio instead of through grpcio.

Why not grpcio (`_fleet`): a grpcio channel and call cost the generator more CPU per
message than the autoscaler spends taking it, so a few processes on the machine's other
cores could not hold 10,000 connections at 20,000 messages a second. Here a connection is
a protocol object and a message one pre-built DATA frame written to its socket.

The client side of RFC 9113 it speaks, one StreamStats stream (id 1) per connection: the
preface and an empty SETTINGS; HEADERS (hpack.Encoder: POST, http, the method's path,
`content-type: application/grpc`, `te: trailers`); one DATA frame per period carrying a
gRPC-framed 1-stat `StreamStatsRequest`; SETTINGS acknowledged, PING answered,
WINDOW_UPDATE and INITIAL_WINDOW_SIZE counted (a message the window does not allow is not
sent, and counted as blocked); at the end an empty DATA with END_STREAM, and the answer
read: HEADERS, DATA with the `StreamStatsResponse` totals, trailers with `grpc-status`.
Any gRPC server takes it: the autoscaler's stats port and its grpcio port alike.

The run: connect in bursts (the server's listen backlog is finite), print `connected N in
S s`, wait for `--go-file` to appear (so that K generators start together and the
autoscaler's memory can be read with the fleet connected and idle), send for `--duration`
seconds at the phases `fleet_schedule` gives, end every stream, sum the answers, print one
JSON line. Every wait is bounded and the whole run has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hpack

from bench.autoscaler import (
    MAX_DURATION_S,
    MAX_FLEET_STREAMS,
    MAX_REVISIONS,
    NAMESPACE,
    STREAM_METHOD,
    due_streams,
    fleet_schedule,
    stream_messages,
)
from ebb.common.h2frames import (
    ACK,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    grpc_frame,
    grpc_messages,
)

STREAM_ID = 1  # the one stream of each connection
CONNECT_TIMEOUT_S = 60.0  # to open every connection
GO_TIMEOUT_S = 120.0  # to wait for the go file once connected
FINISH_TIMEOUT_S = 60.0  # from the end of sending to the last answer
STEP_S = 0.01  # the send loop's step: a message goes out at most this late, plus the loop's lag
SPARE_FILES = 64  # open files beside the connections (the interpreter's own, a log)


def request_headers(authority: str, encoder: hpack.Encoder | None = None) -> bytes:
    """The StreamStats request's header block (HPACK)."""
    return (encoder or hpack.Encoder()).encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", STREAM_METHOD),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


def parse_frames(buf: bytes | bytearray) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """The whole frames at the start of `buf` as (type, flags, stream id, payload), and how
    many bytes they took (a trailing partial frame is left for the next read)."""
    frames, offset = [], 0
    while len(buf) - offset >= 9:
        size = int.from_bytes(buf[offset : offset + 3], "big")
        if len(buf) - offset < 9 + size:
            break
        kind, flags = buf[offset + 3], buf[offset + 4]
        stream_id = U32.unpack_from(buf, offset + 5)[0] & 0x7FFFFFFF
        frames.append((kind, flags, stream_id, bytes(buf[offset + 9 : offset + 9 + size])))
        offset += 9 + size
    return frames, offset


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED and payload:
        return payload[1 : len(payload) - payload[0]]
    return payload


class StreamStatsClient:
    """One connection's client side, without I/O: `opening()` and `data()` give the bytes to
    write, `receive()` takes what the server sent and gives what to write back."""

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self._buf = bytearray()
        self._decoder = hpack.Decoder()
        self.window = DEFAULT_WINDOW  # the connection's send window
        self.stream_window = DEFAULT_WINDOW
        self._initial_window = DEFAULT_WINDOW
        self.response = bytearray()  # the answer's DATA payloads (gRPC-framed)
        self.http_status: bytes | None = None
        self.grpc_status: int | None = None
        self.grpc_message = ""
        self.ended = False  # the server ended stream 1 (trailers, RST_STREAM) or the connection
        self.error: str | None = None

    def opening(self) -> bytes:
        return (
            PREFACE
            + frame(SETTINGS, 0, 0)
            + frame(HEADERS, END_HEADERS, STREAM_ID, request_headers(self.authority))
        )

    def data(self, payload_size: int) -> bool:
        """Spend the windows on a DATA frame of this payload size; False: not allowed now."""
        if payload_size > min(self.window, self.stream_window):
            return False
        self.window -= payload_size
        self.stream_window -= payload_size
        return True

    def receive(self, data: bytes) -> bytes:
        self._buf += data
        frames, used = parse_frames(self._buf)
        del self._buf[:used]
        return b"".join(self._frame(*f) for f in frames)

    def accepted_dropped(self) -> tuple[int, int]:
        """The answer's totals; ValueError when it did not come whole and OK."""
        from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb

        if self.error or self.grpc_status != 0:
            raise ValueError(self.error or f"grpc-status {self.grpc_status}: {self.grpc_message}")
        messages = grpc_messages(self.response)
        if len(messages) != 1:
            raise ValueError(f"{len(messages)} messages in the answer, not 1")
        answer = pb.StreamStatsResponse.FromString(messages[0])
        return answer.accepted, answer.dropped

    def fail(self, reason: str) -> None:
        """End the stream with an error (the first one is kept)."""
        self.error = self.error or reason
        self.ended = True

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
        if kind == SETTINGS and not flags & ACK:
            for offset in range(0, len(payload) - len(payload) % 6, 6):
                ident, value = SETTING.unpack_from(payload, offset)
                if ident == S_INITIAL_WINDOW_SIZE:
                    self.stream_window += value - self._initial_window
                    self._initial_window = value
            return frame(SETTINGS, ACK, 0)
        if kind == PING and not flags & ACK:
            return frame(PING, ACK, 0, payload)
        if kind == WINDOW_UPDATE and len(payload) == 4:
            increment = U32.unpack(payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self.window += increment
            else:
                self.stream_window += increment
        elif kind == HEADERS and stream_id == STREAM_ID:
            self._headers(flags, payload)
        elif kind == DATA and stream_id == STREAM_ID:
            self.response += _unpad(flags, payload)
        elif kind == RST_STREAM and stream_id == STREAM_ID and not self.ended:
            self.fail(f"stream reset by the server (code {U32.unpack(payload)[0]})")
        elif kind == GOAWAY and len(payload) >= 8:
            code = U32.unpack_from(payload, 4)[0]
            if code:  # NO_ERROR: the server stops after answering; anything else is a failure
                self.fail(f"GOAWAY code {code}: {payload[8:].decode('utf-8', 'replace')}")
        return b""

    def _headers(self, flags: int, payload: bytes) -> None:
        if not flags & END_HEADERS:
            self.fail("a header block in CONTINUATION frames (not supported here)")
            return
        block = _unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        try:
            headers = dict(self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            self.fail(f"a header block that does not decode: {exc}")
            return
        self.http_status = headers.get(b":status", self.http_status)
        if self.http_status not in (None, b"200"):
            self.fail(f"HTTP status {self.http_status.decode('latin-1')}")
            return
        if flags & END_STREAM:  # trailers (or a trailers-only error)
            status = headers.get(b"grpc-status", b"")
            self.grpc_status = int(status) if status.isdigit() else -1
            self.grpc_message = headers.get(b"grpc-message", b"").decode("utf-8", "replace")
            self.ended = True


class _Connection(asyncio.Protocol):
    """A StreamStatsClient on a socket."""

    def __init__(self, client: StreamStatsClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.answered = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.client.opening())

    def data_received(self, data: bytes) -> None:
        reply = self.client.receive(data)
        if reply and self.transport is not None:
            self.transport.write(reply)
        if self.client.ended and not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.client.ended:
            self.client.fail(f"connection lost: {exc!r}")
        if not self.answered.done():
            self.answered.set_result(None)


async def _connect(
    host: str, port: int, count: int, burst: int, timeout_s: float
) -> tuple[list[_Connection], list[str]]:
    """`count` connections, `burst` at a time; (the open ones, the errors)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    opened: list[_Connection] = []
    errors: list[str] = []
    authority = f"{host}:{port}"
    while len(opened) < count and not errors:
        tries = [
            loop.create_connection(lambda: _Connection(StreamStatsClient(authority)), host, port)
            for _ in range(min(burst, count - len(opened)))
        ]
        left = max(0.1, deadline - loop.time())
        try:
            results = await asyncio.wait_for(asyncio.gather(*tries, return_exceptions=True), left)
        except TimeoutError:
            errors.append(f"not all connected in {timeout_s:g} s")
            break
        for r in results:
            if isinstance(r, BaseException):
                errors.append(repr(r))
            else:
                opened.append(r[1])
    return opened, errors


async def run(args: argparse.Namespace) -> dict:
    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb

    loop = asyncio.get_running_loop()
    started = loop.time()
    result: dict = {"streams": args.streams, "sent_messages": 0}
    messages = stream_messages(
        pb,
        namespace=args.namespace,
        revisions=args.revisions,
        instances=args.streams,
        instance_offset=args.instance_offset,
        batch=1,
        concurrency=1.0,
        varied=True,
    )
    bodies = [grpc_frame(m) for m in messages]
    frames = [frame(DATA, 0, STREAM_ID, b) for b in bodies]
    host, port = args.target.rsplit(":", 1)
    conns: list[_Connection] = []
    cpu0 = time.process_time()
    try:
        conns, errors = await _connect(host, int(port), args.streams, args.burst, CONNECT_TIMEOUT_S)
        result["connect_s"] = loop.time() - started
        if errors:
            raise RuntimeError(f"{len(errors)} connections failed, the first: {errors[0]}")
        print(f"connected {len(conns)} in {result['connect_s']:.2f} s", flush=True)
        if args.go_file is not None:
            go_by = loop.time() + GO_TIMEOUT_S
            while not args.go_file.exists():
                if loop.time() > go_by:
                    raise TimeoutError(f"no {args.go_file} after {GO_TIMEOUT_S:g} s")
                await asyncio.sleep(0.02)
        result.update(
            await _send(conns, frames, [len(b) for b in bodies], args.period, args.duration)
        )
        for conn in conns:
            if conn.transport is not None:
                conn.transport.write(frame(DATA, END_STREAM, STREAM_ID))
        await asyncio.wait_for(asyncio.gather(*(c.answered for c in conns)), FINISH_TIMEOUT_S)
        result.update(_totals(conns))
    except (OSError, TimeoutError, RuntimeError) as exc:
        result["error"] = repr(exc)[:300]
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    result.update(elapsed_s=loop.time() - started, cpu_s=time.process_time() - cpu0)
    return result


async def _send(
    conns: Sequence[_Connection],
    frames: Sequence[bytes],
    sizes: Sequence[int],
    period_s: float,
    duration_s: float,
) -> dict:
    """Each connection's message once per period at its phase, for `duration_s`. Lag: the
    longest from a message's due instant to its write (at least the step)."""
    loop = asyncio.get_running_loop()
    offsets = fleet_schedule(len(conns), period_s)
    started = loop.time()
    deadline = started + duration_s
    done_until = started
    sent = blocked = 0
    lag = 0.0
    while done_until < deadline:
        end = min(loop.time(), deadline)
        for i in due_streams(offsets, period_s, done_until - started, end - started):
            conn = conns[i]
            if conn.transport is None or conn.client.ended:
                raise RuntimeError(f"stream {i} ended early: {conn.client.error or 'answered'}")
            if conn.client.data(sizes[i]):
                conn.transport.write(frames[i])
                sent += 1
            else:
                blocked += 1
        lag = max(lag, loop.time() - done_until)
        done_until = end
        await asyncio.sleep(STEP_S)
    out = {"sent_messages": sent, "sent_stats": sent, "max_lag_s": lag}
    if blocked:
        out["blocked_messages"] = blocked
    return out


def _totals(conns: Sequence[_Connection]) -> dict:
    accepted = dropped = 0
    errors = []
    for conn in conns:
        try:
            a, d = conn.client.accepted_dropped()
        except ValueError as exc:
            errors.append(str(exc))
            continue
        accepted += a
        dropped += d
    out: dict = {"accepted": accepted, "dropped": dropped}
    if errors:
        out["error"] = f"{len(errors)} streams without an OK answer, the first: {errors[0]}"
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler _h2fleet")
    parser.add_argument("--target", required=True, help="host:port of a StreamStats server")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--revisions", type=int, required=True)
    parser.add_argument("--streams", type=int, required=True, help="connections, one stream each")
    parser.add_argument("--instance-offset", type=int, default=0)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between messages")
    parser.add_argument("--duration", type=float, required=True, help="seconds of sending")
    parser.add_argument("--burst", type=int, default=250, help="connections opened at once")
    parser.add_argument("--go-file", type=Path, help="start sending once this file exists")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 0.01 <= args.period <= 60:
        parser.error(f"duration must be in (0, {MAX_DURATION_S:g}] s, period in [0.01, 60] s")
    if not 1 <= args.streams <= MAX_FLEET_STREAMS or not 1 <= args.revisions <= MAX_REVISIONS:
        parser.error(f"streams must be in 1..{MAX_FLEET_STREAMS}, revisions in 1..{MAX_REVISIONS}")
    if not 1 <= args.burst <= 4096:
        parser.error("burst must be in 1..4096")
    if ":" not in args.target:
        parser.error("target must be host:port")
    return args


def main(argv: Sequence[str]) -> int:
    from ebb.common.procs import raise_open_files_limit

    args = parse_args(argv)
    limit = raise_open_files_limit()
    if args.streams + SPARE_FILES > limit:
        result = {"streams": args.streams, "error": f"open-files limit {limit} is too low"}
    else:
        try:
            import uvloop
        except ImportError:  # a dependency, but the plain loop works too
            result = asyncio.run(_bounded(args))
        else:
            result = uvloop.run(_bounded(args))
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


async def _bounded(args: argparse.Namespace) -> dict:
    """`run` under an overall deadline: the sum of its steps' own bounds, and a margin."""
    limit_s = CONNECT_TIMEOUT_S + GO_TIMEOUT_S + args.duration + FINISH_TIMEOUT_S + 10.0
    try:
        return await asyncio.wait_for(run(args), limit_s)
    except TimeoutError:
        return {"streams": args.streams, "error": f"no result in {limit_s:g} s"}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
