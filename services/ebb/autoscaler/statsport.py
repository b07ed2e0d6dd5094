"""`StatsService.StreamStats` on a port of its own: gRPC's wire protocol over HTTP/2,
read in the event loop.

Why a second listener: every queue holds one StreamStats stream and sends one message a
second, so a fleet of N instances is N connections each delivering one small message at
a time. grpcio's AsyncIO server hands every received message from its I/O threads to a
poller thread and then, through a socketpair, to the event loop: about 90 µs of CPU per
message, so one core took only 8-10k of a fleet's stats a second
(docs/benchmarks-control-plane.md). Here a message is a frame parsed where it is read,
in the loop's `data_received`, with no thread in between.

The port speaks just enough HTTP/2 (RFC 9113) for any gRPC client (grpcio, grpc-js,
grpc-go, grpcurl with `-proto`) to call this one method:
- the connection preface, SETTINGS (acknowledged), PING (answered), WINDOW_UPDATE,
  RST_STREAM, GOAWAY, PRIORITY (ignored), unknown frame types (ignored);
- HEADERS and CONTINUATION, decoded with `hpack` (the dynamic table stays in step even for
  a stream that is refused);
- DATA, with padding; gRPC's length-prefixed messages split across frames or packed
  several to a frame;
- flow control: each stream and the connection get a 16 MiB window, given back as the
  bytes are read (they are consumed at once, so the window only bounds a burst);
- answers: `StreamStatsResponse` with the totals and `grpc-status: 0` when the client ends
  its stream (or the autoscaler stops); a trailers-only error for anything else:
  UNIMPLEMENTED for another method or a compression other than identity,
  RESOURCE_EXHAUSTED for a message over 4 MiB, INTERNAL for a compressed message; HTTP
  405/415 for a request that is not gRPC.
A connection-level protocol error answers GOAWAY with the RFC's code and closes. What is
not here: server push (a server never needs it), compression, reflection and health (the
autoscaler's gRPC port serves those, and StreamStats too).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import hpack

from ebb.autoscaler.server import STATS_SERVICE, StatsTally, decode_stats_request

if TYPE_CHECKING:
    from ebb.autoscaler.server import AutoscalerServer
    from ebb.common.tracing import Tracing

log = logging.getLogger("ebb.autoscaler.statsport")

STREAM_STATS_PATH = f"/{STATS_SERVICE}/StreamStats".encode()
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x9
ENHANCE_YOUR_CALM = 0xB
ERROR_NAMES = {
    NO_ERROR: "no_error",
    PROTOCOL_ERROR: "protocol_error",
    INTERNAL_ERROR: "internal_error",
    FLOW_CONTROL_ERROR: "flow_control_error",
    STREAM_CLOSED: "stream_closed",
    FRAME_SIZE_ERROR: "frame_size_error",
    REFUSED_STREAM: "refused_stream",
    COMPRESSION_ERROR: "compression_error",
    ENHANCE_YOUR_CALM: "enhance_your_calm",
}

# Settings (RFC 9113 §6.5.2).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

# gRPC status codes used here.
GRPC_OK, GRPC_INTERNAL, GRPC_UNIMPLEMENTED, GRPC_RESOURCE_EXHAUSTED = 0, 13, 12, 8

MAX_FRAME_SIZE = 16_384  # the protocol's default, not raised: stats messages are small
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
WINDOW = 1 << 24  # granted to each stream and to the connection
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit, as on the gRPC port
MAX_HEADER_LIST_BYTES = 16_384
MAX_STREAMS = 1_000  # per connection (advertised); a queue opens one, grpc-js a few
# Answers waiting for the peer's flow-control window. gRPC clients grant 64 KiB or more, so
# none ever waits; a peer that makes many wait is refused rather than re-scanned.
MAX_WAITING = 32
CLOSE_GRACE_S = 2.0  # after GOAWAY, a peer that does not read what is left is cut off
MAX_ECHO_CHARS = 200  # of a request's text echoed in grpc-message (frames stay small)
# Bytes a connection may hold in messages not yet whole, over all its streams. The windows
# are given back as bytes are read, so without this a client could park 4 MiB on each of
# thousands of streams. A queue's message is ~100 bytes, an activator's batch ~10 KB.
MAX_HELD_BYTES = 16 * 1024 * 1024
PREFACE_TIMEOUT_S = 10.0  # a connection that never speaks HTTP/2 is closed

_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's integer (RFC 7541 §5.1) in a `prefix_bits` prefix of a byte starting `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing (RFC 7541 §6.2.2), so the peer's dynamic
    table, and its HEADER_TABLE_SIZE, never matter; `:status: 200` is static index 8."""
    out = bytearray()
    for name, value in headers:
        if name == b":status" and value == b"200":
            out.append(0x88)
            continue
        out.append(0x00)
        out += _hpack_int(len(name), 7) + name
        out += _hpack_int(len(value), 7) + value
    return bytes(out)


def grpc_message(text: str) -> bytes:
    """`grpc-message`'s percent-encoding: bytes outside printable ASCII, and `%`."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode()
    ).encode()


def echo(text: str) -> str:
    """A request's own text (its path, an encoding) as quoted in an error: cut short, so
    that the answer stays one small frame whatever the request carried."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


_GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]
RESPONSE_HEADERS = encode_headers([*_GRPC_HEAD, (b"grpc-accept-encoding", b"identity")])
OK_TRAILERS = encode_headers([(b"grpc-status", b"0")])


def error_headers(status: int, message: str) -> bytes:
    """A trailers-only gRPC response (headers and status in one block)."""
    return encode_headers(
        [
            *_GRPC_HEAD,
            (b"grpc-accept-encoding", b"identity"),
            (b"grpc-status", str(status).encode()),
            (b"grpc-message", grpc_message(message)),
        ]
    )


class ConnectionError_(Exception):  # noqa: N801 - not the builtin ConnectionError
    """A connection-level protocol error: answered with GOAWAY(code), then closed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Stream:
    __slots__ = (
        "id",
        "tally",
        "pending",
        "unacked",
        "window_delta",
        "need",
        "remote_done",
        "response",
        "span",
    )

    def __init__(self, stream_id: int, tally: StatsTally) -> None:
        self.id = stream_id
        self.tally = tally
        self.pending = bytearray()  # the start of a message split across frames
        self.need = 0  # bytes `pending` must reach before the message can be read
        self.unacked = 0  # bytes read since the last WINDOW_UPDATE for this stream
        # The stream's send window less the peer's INITIAL_WINDOW_SIZE (RFC 9113 §6.9.2):
        # a new initial size then moves every stream's window without visiting each.
        self.window_delta = 0
        self.remote_done = False  # the client ended its side (END_STREAM)
        self.response: bytes | None = None  # the answer's DATA payload, waiting for window
        self.span = None


class StatsPort:
    """The listener: owns the connections, counts what happens on them."""

    def __init__(self, owner: AutoscalerServer, tracing: Tracing | None = None) -> None:
        self.owner = owner
        self.tracing = tracing if tracing is not None and tracing.enabled else None
        self.connections: set[StatsConnection] = set()
        self.counters: Counter[str] = Counter()  # streams, goaway_<code>, reset_<code>
        self._server: asyncio.base_events.Server | None = None
        self.address = ""

    @property
    def open_streams(self) -> int:
        return sum(len(conn.streams) for conn in list(self.connections))

    async def start(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: StatsConnection(self), host, port, reuse_address=True, backlog=4096
        )
        bound = self._server.sockets[0].getsockname()
        self.address = f"{host}:{bound[1]}"
        return self.address

    async def close(self) -> None:
        """Answer every open stream with its totals, say GOAWAY, close; idempotent."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shut_down()
        if self._server is not None:
            server, self._server = self._server, None
            await server.wait_closed()


class StatsConnection(asyncio.Protocol):
    """One HTTP/2 connection. Everything runs in `data_received`; nothing awaits."""

    def __init__(self, port: StatsPort) -> None:
        self._port = port
        self._owner = port.owner
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._preface_timer: asyncio.TimerHandle | None = None
        self.streams: dict[int, _Stream] = {}
        self._last_stream = 0  # highest stream id the client opened
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._block: tuple[int, int, bytearray] | None = None  # HEADERS awaiting CONTINUATION
        self._unacked = 0  # bytes read since the last connection WINDOW_UPDATE
        self._held = 0  # bytes of unfinished messages, over every stream (MAX_HELD_BYTES)
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._waiting: dict[int, _Stream] = {}  # answers waiting for window, oldest first
        self._abort_timer: asyncio.TimerHandle | None = None
        self._going_away = False
        self._peer = "?"

    # -- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = f"{peer[0]}:{peer[1]}"
        self._port.connections.add(self)
        settings = b"".join(
            _SETTING.pack(ident, value)
            for ident, value in (
                (S_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (S_INITIAL_WINDOW_SIZE, WINDOW),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(WINDOW - DEFAULT_WINDOW))
        )
        self._preface_timer = asyncio.get_running_loop().call_later(
            PREFACE_TIMEOUT_S, self._no_preface
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.connections.discard(self)
        for timer in (self._preface_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        for stream in list(self.streams.values()):
            self._forget(stream, "connection lost")
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        try:
            used = self._read_frames(data)
        except ConnectionError_ as exc:
            self._fail(exc.code, exc.reason)
            return
        except Exception:  # a bug: this connection goes, the autoscaler stays
            log.exception("stats connection failed", extra={"peer": self._peer})
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if used < len(data):
            self._buf += memoryview(data)[used:]

    def pause_writing(self) -> None:
        """The peer is not reading what we write (PING ACKs, SETTINGS ACKs, answers): stop
        reading its frames until it does, so our write buffer cannot grow without bound."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close our side too

    # -- frames ------------------------------------------------------------------------

    def _read_frames(self, data: bytes) -> int:
        """Handle every whole frame in `data`; returns how many bytes were used."""
        offset, end = 0, len(data)
        if not self._preface_seen:
            if end < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if not data.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface_seen = True
            if self._preface_timer is not None:
                self._preface_timer.cancel()
                self._preface_timer = None
            offset = len(PREFACE)
        unpack = _FRAME_HEAD.unpack_from
        while end - offset >= 9 and self._transport is not None:
            high, low, kind, flags, stream_id = unpack(data, offset)
            size = high << 16 | low
            if size > MAX_FRAME_SIZE:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {size} bytes")
            stop = offset + 9 + size
            if stop > end:
                break
            stream_id &= 0x7FFFFFFF
            payload = data[offset + 9 : stop]
            offset = stop
            if self._block is not None and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "header block interrupted")
            if kind == DATA:
                self._data(stream_id, flags, payload)
            elif kind < len(_HANDLERS):
                _HANDLERS[kind](self, stream_id, flags, payload)
            # unknown frame types are ignored (RFC 9113 §4.1)
        return offset

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._unacked += size
        if self._unacked >= WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked)))
            self._unacked = 0
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_done:
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if stream is not None:
                self._reset(stream, STREAM_CLOSED)
            return  # a stream already answered or reset: its late frames are ignored
        stream.unacked += size
        if stream.unacked >= WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked)))
            stream.unacked = 0
        if payload and not self._messages(stream, payload):
            return
        if flags & END_STREAM:
            self._request_done(stream)

    def _messages(self, stream: _Stream, payload: bytes) -> bool:
        """Take the gRPC messages `payload` completes; False when the stream was ended."""
        pending = stream.pending
        if pending:
            if len(pending) + len(payload) < stream.need:  # still not whole: just keep it
                pending += payload
                return self._hold(len(payload))
            self._held -= len(pending)
            pending += payload
            payload = bytes(pending)
            pending.clear()
        offset, end = 0, len(payload)
        take = stream.tally.take
        while end - offset >= 5:
            compressed = payload[offset]
            (length,) = _U32.unpack_from(payload, offset + 1)
            if length > MAX_MESSAGE_BYTES:
                self._refuse(
                    stream,
                    GRPC_RESOURCE_EXHAUSTED,
                    f"message of {length} bytes, more than {MAX_MESSAGE_BYTES}",
                )
                return False
            stop = offset + 5 + length
            if stop > end:
                stream.need = 5 + length
                break
            if compressed:
                self._refuse(stream, GRPC_INTERNAL, "compressed message without grpc-encoding")
                return False
            take(decode_stats_request(payload[offset + 5 : stop]))
            offset = stop
        if offset < end:
            if end - offset < 5:
                stream.need = 5
            pending += memoryview(payload)[offset:]
        return self._hold(len(pending))

    def _hold(self, size: int) -> bool:
        """Count `size` more bytes held in unfinished messages; past the bound, fail."""
        self._held += size
        if self._held > MAX_HELD_BYTES:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many bytes held in unfinished messages")
        return True

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS priority fields cut short")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._block = (stream_id, flags, bytearray(payload))

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        block = self._block[2]
        block += payload
        if len(block) > 2 * MAX_HEADER_LIST_BYTES:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            first_flags = self._block[1]
            self._block = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its side
            if not flags & END_STREAM:
                raise ConnectionError_(PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            if not stream.remote_done:
                self._request_done(stream)
            return
        if stream_id % 2 == 0:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on server stream {stream_id}")
        if stream_id <= self._last_stream:
            if any(name == b":method" for name, _ in headers):  # a request, not trailers
                raise ConnectionError_(PROTOCOL_ERROR, f"stream {stream_id} reused")
            return  # a stream that is over (answered or reset): late trailers are ignored
        self._last_stream = stream_id
        if self._going_away or len(self.streams) >= MAX_STREAMS:
            self._port.counters["reset_refused_stream"] += 1
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        self._open(stream_id, flags, dict(headers))

    def _open(self, stream_id: int, flags: int, headers: dict[bytes, bytes]) -> None:
        """A new request: refused with an error, or a StreamStats stream."""
        remote_done = bool(flags & END_STREAM)
        if headers.get(b":method") != b"POST":
            self._answer_http(stream_id, b"405", remote_done)
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._answer_http(stream_id, b"415", remote_done)
            return
        path = headers.get(b":path", b"")
        if path != STREAM_STATS_PATH:
            method = echo(path.decode("utf-8", "replace"))
            self._answer_error(
                stream_id, GRPC_UNIMPLEMENTED, f"unknown method {method}", remote_done
            )
            return
        encoding = headers.get(b"grpc-encoding", b"identity")
        if encoding != b"identity":
            self._answer_error(
                stream_id,
                GRPC_UNIMPLEMENTED,
                f"grpc-encoding {echo(encoding.decode('latin-1'))} is not supported",
                remote_done,
            )
            return
        self._port.counters["streams"] += 1
        stream = _Stream(stream_id, StatsTally(self._owner, self._peer_name))
        self.streams[stream_id] = stream
        tracing = self._port.tracing
        if tracing is not None:
            stream.span = tracing.start_http_span(
                STREAM_STATS_PATH.decode(),  # as grpcio's instrumentation names it
                traceparent=headers.get(b"traceparent"),
                tracestate=headers.get(b"tracestate"),
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": STATS_SERVICE,
                    "rpc.method": "StreamStats",
                },
            )
        if remote_done:
            self._request_done(stream)

    def _rst_stream(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id > self._last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.get(stream_id)
        if stream is not None:  # the client cancelled: what it sent is already taken
            self._forget(stream, "cancelled by the client")

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, offset)
            if ident == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                self._peer_initial_window = value  # every stream's window moves with it
            elif ident == S_MAX_FRAME_SIZE:
                if not MAX_FRAME_SIZE <= value < 1 << 24:
                    raise ConnectionError_(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
            elif ident == S_ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE: our answers never index; the rest limit the peer's side
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_waiting()

    def _push_promise(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))

    def _goaway(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "GOAWAY cut short")
        self._going_away = True  # the client opens no more streams; it closes when done

    def _window_update(self, stream_id: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_waiting()
        else:
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if increment == 0:
                self._reset(stream, PROTOCOL_ERROR)
                return
            stream.window_delta += increment
            if self._peer_initial_window + stream.window_delta > MAX_WINDOW:
                self._reset(stream, FLOW_CONTROL_ERROR)
                return
            if stream.id in self._waiting:
                self._send_answer(stream)

    def _ignore(self, stream_id: int, flags: int, payload: bytes) -> None:
        """PRIORITY (deprecated by RFC 9113; a server may ignore it)."""
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ConnectionError_(FRAME_SIZE_ERROR, "PRIORITY of the wrong size")

    # -- answers -----------------------------------------------------------------------

    def _request_done(self, stream: _Stream) -> None:
        """The client ended its side: answer with the totals."""
        stream.remote_done = True
        if stream.pending:
            self._refuse(stream, GRPC_INTERNAL, "stream ended inside a message")
            return
        self._answer(stream)

    def _answer(self, stream: _Stream) -> None:
        """Send the stream's totals now, or once the peer's windows allow them."""
        message = stream.tally.response().SerializeToString()
        stream.response = b"\x00" + _U32.pack(len(message)) + message
        if not self._send_answer(stream):
            if len(self._waiting) >= MAX_WAITING:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "too many answers waiting for window")
            self._waiting[stream.id] = stream

    def _flush_waiting(self) -> None:
        """The connection's window or the initial window grew: send the waiting answers
        that now fit, oldest first (at most MAX_WAITING of them)."""
        for stream in list(self._waiting.values()):
            self._send_answer(stream)

    def _send_answer(self, stream: _Stream) -> bool:
        """Headers, the totals and trailers, if the windows allow the DATA; else False."""
        body = stream.response
        if body is None:
            return True
        stream_window = self._peer_initial_window + stream.window_delta
        if len(body) > min(stream_window, self._send_window):
            return False
        self._send_window -= len(body)
        stream.window_delta -= len(body)
        out = (
            frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS)
            + frame(DATA, 0, stream.id, body)
            + frame(HEADERS, END_HEADERS | END_STREAM, stream.id, OK_TRAILERS)
        )
        if not stream.remote_done:  # answered early (shut_down): the client may stop
            out += frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR))
        self._write(out)
        self._forget(stream, None)
        return True

    def _refuse(self, stream: _Stream, status: int, message: str) -> None:
        """End a stream with a gRPC error (trailers-only) and reset it if the client is
        still sending, so that it stops."""
        self._forget(stream, message)
        self._answer_error(stream.id, status, message, stream.remote_done)

    def _answer_error(self, stream_id: int, status: int, message: str, remote_done: bool) -> None:
        self._port.counters[f"grpc_status_{status}"] += 1
        self._write(
            frame(HEADERS, END_HEADERS | END_STREAM, stream_id, error_headers(status, message))
        )
        if not remote_done:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(NO_ERROR)))

    def _answer_http(self, stream_id: int, status: bytes, remote_done: bool) -> None:
        self._port.counters[f"http_{status.decode()}"] += 1
        block = encode_headers([(b":status", status)])
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        if not remote_done:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(NO_ERROR)))

    def _reset(self, stream: _Stream, code: int) -> None:
        self._forget(stream, f"reset: {ERROR_NAMES.get(code, code)}")
        self._port.counters[f"reset_{ERROR_NAMES.get(code, code)}"] += 1
        self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))

    def _fail(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY naming the last stream taken, then close."""
        self._port.counters[f"goaway_{ERROR_NAMES.get(code, code)}"] += 1
        log.warning(
            "stats connection closed on a protocol error",
            extra={"peer": self._peer, "error": ERROR_NAMES.get(code, code), "reason": reason},
        )
        self._close_with(code, reason.encode("utf-8", "replace")[:256])

    def _close_with(self, code: int, debug: bytes = b"") -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(frame(GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(code) + debug))
        for stream in list(self.streams.values()):
            self._forget(stream, "connection closed")
        self._buf.clear()
        transport.close()  # flushes what is written, then connection_lost
        self._transport = None
        # A peer that does not read would hold the connection (and a server's wait_closed)
        # for ever: what it has not read after the grace is dropped.
        self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)

    def shut_down(self) -> None:
        """The autoscaler stops: every open stream gets its totals (as on the gRPC port,
        so a reporter sees a clean end and reconnects), then GOAWAY(NO_ERROR)."""
        for stream in list(self.streams.values()):
            if stream.response is None and not stream.pending:
                try:
                    self._answer(stream)
                except ConnectionError_:
                    break  # too many waiting: the rest are reset below
        for stream in list(self.streams.values()):  # no window for the answer, or mid-message
            self._reset(stream, NO_ERROR)
        self._close_with(NO_ERROR)

    def _no_preface(self) -> None:
        self._preface_timer = None
        if not self._preface_seen and self._transport is not None:
            self._port.counters["no_preface"] += 1
            self._transport.close()
            self._transport = None

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _peer_name(self) -> str:
        return self._peer

    def _forget(self, stream: _Stream, error: str | None) -> None:
        """The stream is over (answered, refused, reset or cut off): drop it, its
        unfinished message and its span (`error` None = it ended well)."""
        if self.streams.pop(stream.id, None) is None:
            return
        self._waiting.pop(stream.id, None)
        self._held -= len(stream.pending)
        stream.pending.clear()
        if stream.span is not None:
            span, stream.span = stream.span, None
            self._port.tracing.end_http_span(span, error=error)  # type: ignore[union-attr]


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(FRAME_SIZE_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


# Frame handlers by type, DATA (the hot one) excepted: it is called directly.
_HANDLERS: tuple[Callable[[StatsConnection, int, int, bytes], None], ...] = (
    StatsConnection._data,
    StatsConnection._headers,
    StatsConnection._ignore,
    StatsConnection._rst_stream,
    StatsConnection._settings,
    StatsConnection._push_promise,
    StatsConnection._ping,
    StatsConnection._goaway,
    StatsConnection._window_update,
    StatsConnection._continuation,
)
