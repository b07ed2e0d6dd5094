"""A gRPC server over HTTP/2 (RFC 9113) in the event loop, without grpcio: the connection's
state machine, HPACK, flow control, limits and shutdown, with a method table; what a
method does is a `Handler`. The frame layer (constants, frames and their checks) is
`ebb.common.h2frames`, shared with the client.

Why: grpcio hands every received message from its I/O threads to a poller thread and
then, through a socketpair, to the event loop (about 90 µs of CPU a message), and it costs
a process about 12 MB of resident memory. Here a message is a frame parsed where it is
read, in the loop's `data_received`, with no thread in between. The autoscaler's stats
port (`ebb.autoscaler.statsport`) and the admin servers (`ebb.common.h2admin`: health and
reflection) are built on it.

The server speaks just enough HTTP/2 for any gRPC client (grpcio, grpc-js, grpc-go,
grpcurl):
- the connection preface, SETTINGS (acknowledged), PING (answered), WINDOW_UPDATE,
  RST_STREAM, GOAWAY, PRIORITY (ignored), unknown frame types (ignored);
- HEADERS and CONTINUATION, decoded with `hpack` (the dynamic table stays in step even for
  a stream that is refused); answers are literals that never index;
- DATA, with padding; gRPC's length-prefixed messages split across frames or packed
  several to a frame;
- flow control: each stream and the connection get a 16 MiB window, given back as the
  bytes are read (they are consumed at once, so the window only bounds a burst); what a
  handler sends goes out as the peer's windows allow, split to its MAX_FRAME_SIZE;
- a trailers-only error for a call no handler takes: UNIMPLEMENTED for an unknown method
  or a compression other than identity, RESOURCE_EXHAUSTED for a message over 4 MiB,
  INTERNAL for a compressed message or a stream that ends inside a message; HTTP 405/415
  for a request that is not gRPC.
A connection-level protocol error answers GOAWAY with the RFC's code and closes. Not here:
server push (a server never needs it), compression.

Handlers (one per call, made by the method table's factory from the new `Stream`) run in
the loop and never await: `decode(raw)` then `on_message(decoded)` for each request
message, `on_end()` when the client ends its side, `on_shutdown()` when the server stops,
`on_close(error)` once when the stream is over for any reason. They answer through the
stream at any time: `send_message(bytes)`, `finish(status, message)`, `reply(bytes)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import hpack

# The wire (RFC 9113's constants, frames and their checks) is shared with the client; its
# names are re-exported here for the stats port, the admin server and their tests.
from ebb.common.h2frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    ERROR_NAMES,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ConnectionError_,
    check_ping,
    encode_headers,
    frame,
    grown_window,
    grpc_message,
    header_fragment,
    read_goaway,
    read_rst_stream,
    read_settings,
    unpad,
    window_increment,
)

if TYPE_CHECKING:
    from ebb.common.tracing import Tracing

log = logging.getLogger("ebb.common.h2server")

# gRPC status codes used here.
GRPC_OK, GRPC_NOT_FOUND, GRPC_RESOURCE_EXHAUSTED = 0, 5, 8
GRPC_UNIMPLEMENTED, GRPC_INTERNAL, GRPC_UNAVAILABLE = 12, 13, 14

WINDOW = 1 << 24  # granted to each stream and to the connection
MAX_STREAMS = 1_000  # per connection (advertised); a queue opens one, grpc-js a few
# Streams whose output waits for the peer's flow-control window. A client with the RFC's
# 64 KiB default windows can have dozens wait behind one large answer (reflection) and
# still read everything; past this many, the next stream is reset (ENHANCE_YOUR_CALM),
# not the connection. The bound keeps each WINDOW_UPDATE's pass short.
MAX_WAITING = 100
# Bytes of output a connection may hold for a peer that does not grant window. Reading
# less from it would not help: its WINDOW_UPDATEs arrive on the read side. A stream that
# would hold more is reset (ENHANCE_YOUR_CALM); a reflection answer is ~100 KB.
MAX_PENDING_BYTES = 4 * 1024 * 1024
CLOSE_GRACE_S = 2.0  # after GOAWAY, a peer that does not read what is left is cut off
MAX_ECHO_CHARS = 200  # of a request's text echoed in grpc-message (frames stay small)
MAX_STATUS_CHARS = 1_000  # of a handler's status message: x12 percent-encoded < a frame
# Bytes a connection may hold in messages not yet whole, over all its streams. The windows
# are given back as bytes are read, so without this a client could park 4 MiB on each of
# thousands of streams. A queue's message is ~100 bytes, an activator's batch ~10 KB.
MAX_HELD_BYTES = 16 * 1024 * 1024
PREFACE_TIMEOUT_S = 10.0  # a connection that never speaks HTTP/2 is closed


def echo(text: str) -> str:
    """A request's own text (its path, an encoding) as quoted in an error: cut short, so
    that the answer stays one small frame whatever the request carried."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


_GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]
RESPONSE_HEADERS = encode_headers([*_GRPC_HEAD, (b"grpc-accept-encoding", b"identity")])
OK_TRAILERS = encode_headers([(b"grpc-status", b"0")])


def _status_fields(status: int, message: str) -> list[tuple[bytes, bytes]]:
    fields = [(b"grpc-status", str(status).encode())]
    if message:
        if len(message) > MAX_STATUS_CHARS:
            message = message[:MAX_STATUS_CHARS] + "..."
        fields.append((b"grpc-message", grpc_message(message)))
    return fields


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


def trailers(status: int, message: str = "") -> bytes:
    """The trailers ending a response that sent its headers."""
    if status == GRPC_OK and not message:
        return OK_TRAILERS
    return encode_headers(_status_fields(status, message))


def _as_is(data: bytes) -> bytes:
    return data


class Handler:
    """One call of a method: what it does with its stream. Every method runs in the loop
    and must not block; the defaults suit a handler that answers from `on_end`.

    Per request message the connection calls `on_message(decode(raw))`: one call each
    (the stats port's hot path), so `on_message` may be another class's method taken in
    by inheritance (`StreamStatsCall` is a `StatsTally`). `decode` is read once, when the
    stream opens. Subclasses declare the `stream` slot (`__slots__` is empty here so that
    a handler can also inherit a class with slots of its own).
    """

    __slots__ = ()
    stream: Stream
    decode: Callable[[bytes], Any] = staticmethod(_as_is)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def on_message(self, message: Any) -> None:
        """One request message, as `decode` returned it."""

    def on_end(self) -> None:
        """The client ended its side (every message before it was taken)."""
        self.stream.finish()

    def on_shutdown(self) -> None:
        """The server stops: end the call now. What is not finished is reset."""
        self.stream.finish(GRPC_UNAVAILABLE, "the server is shutting down")

    def on_close(self, error: str | None) -> None:
        """The stream is over (finished, reset, cancelled, connection lost): let go of it.
        `error` is None when it ended well."""


class Stream:
    """One call's HTTP/2 stream: the request side's reading state and the response side's
    pending output. Handlers answer through `send_message`, `finish` and `reply`."""

    __slots__ = (
        "id",
        "conn",
        "handler",
        "decode",
        "pending",
        "need",
        "unacked",
        "window_delta",
        "remote_done",
        "done",
        "head_sent",
        "out",
        "out_offset",
        "out_bytes",
        "end",
        "error",
        "span",
    )

    def __init__(self, stream_id: int, conn: H2Connection) -> None:
        self.id = stream_id
        self.conn = conn
        self.handler: Handler | None = None
        self.decode: Callable[[bytes], Any] = _as_is
        self.pending = bytearray()  # the start of a message split across frames
        self.need = 0  # bytes `pending` must reach before the message can be read
        self.unacked = 0  # bytes read since the last WINDOW_UPDATE for this stream
        # The stream's send window less the peer's INITIAL_WINDOW_SIZE (RFC 9113 §6.9.2):
        # a new initial size then moves every stream's window without visiting each.
        self.window_delta = 0
        self.remote_done = False  # the client ended its side (END_STREAM)
        self.done = False  # the handler finished: trailers sent or waiting behind `out`
        self.head_sent = False  # the response's HEADERS went out
        self.out: deque[bytes] | None = None  # gRPC-framed messages waiting for window
        self.out_offset = 0  # bytes of out[0] already sent
        self.out_bytes = 0  # bytes waiting in `out`
        self.end: bytes | None = None  # the trailers' block, sent once `out` is empty
        self.error: str | None = None  # the status message of a call that failed
        self.span = None

    @property
    def open(self) -> bool:
        """The handler may still send (not finished, not reset, connection up)."""
        return not self.done and self.conn.streams.get(self.id) is self

    @property
    def peer(self) -> str:
        return self.conn.peer_name()

    def send_message(self, message: bytes) -> bool:
        """Queue one response message; False when the stream is over (or was reset now
        because the peer has left too much unread)."""
        return self.conn.send(self, message, None)

    def finish(self, status: int = GRPC_OK, message: str = "") -> None:
        """End the call: trailers after what was sent, or trailers-only if nothing was."""
        self.conn.finish(self, status, message)

    def reply(self, message: bytes) -> None:
        """One message and an OK status, in one write when the windows allow."""
        self.conn.send(self, message, OK_TRAILERS)


MethodTable = Mapping[bytes, Callable[[Stream], Handler]]


class H2Port:
    """The listener: owns the connections, counts what happens on them, dispatches each
    new stream by its `:path` to the method table's factory."""

    protocol: type[H2Connection]  # set below, once the class exists
    name = "h2"  # in log records

    def __init__(self, methods: MethodTable, tracing: Tracing | None = None) -> None:
        self.methods = methods
        self.tracing = tracing if tracing is not None and tracing.enabled else None
        self.connections: set[H2Connection] = set()
        self.counters: Counter[str] = Counter()  # streams, goaway_<code>, reset_<code>, ...
        self._server: asyncio.base_events.Server | None = None
        self.address = ""

    @property
    def open_streams(self) -> int:
        return sum(len(conn.streams) for conn in list(self.connections))

    async def start(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        protocol = self.protocol
        self._server = await loop.create_server(
            lambda: protocol(self), host, port, reuse_address=True, backlog=4096
        )
        bound = self._server.sockets[0].getsockname()
        self.address = f"{host}:{bound[1]}"
        return self.address

    async def close(self) -> None:
        """End every open call (`Handler.on_shutdown`), say GOAWAY, close; idempotent."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shut_down()
        if self._server is not None:
            server, self._server = self._server, None
            await server.wait_closed()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection. Everything runs in `data_received`; nothing awaits."""

    def __init__(self, port: H2Port) -> None:
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._preface_timer: asyncio.TimerHandle | None = None
        self.streams: dict[int, Stream] = {}
        self._last_stream = 0  # highest stream id the client opened
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._block: tuple[int, int, bytearray] | None = None  # HEADERS awaiting CONTINUATION
        self._unacked = 0  # bytes read since the last connection WINDOW_UPDATE
        self._held = 0  # bytes of unfinished messages, over every stream (MAX_HELD_BYTES)
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = MAX_FRAME_SIZE  # the largest DATA frame the peer takes
        self._waiting: dict[int, Stream] = {}  # output waiting for window, oldest first
        self._pending_bytes = 0  # in every waiting stream's `out` (MAX_PENDING_BYTES)
        self._abort_timer: asyncio.TimerHandle | None = None
        self._going_away = False
        self._closing = False  # shut_down: a stream that cannot wait is reset
        self._peer = "?"
        self._write_paused = False  # the peer does not read: its frames wait (pause_writing)

    # -- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = f"{peer[0]}:{peer[1]}"
        self._port.connections.add(self)
        settings = b"".join(
            SETTING.pack(ident, value)
            for ident, value in (
                (S_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (S_INITIAL_WINDOW_SIZE, WINDOW),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(WINDOW - DEFAULT_WINDOW))
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
        except Exception:  # a bug: this connection goes, the server stays
            log.exception(f"{self._port.name} connection failed", extra={"peer": self._peer})
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if used < len(data) and self._transport is not None:
            self._buf += memoryview(data)[used:]

    def pause_writing(self) -> None:
        """The peer is not reading what we write (PING ACKs, SETTINGS ACKs, answers): stop
        handling its frames, from the next one on, until it does, so our write buffer
        cannot grow without bound (one read may hold thousands of small requests)."""
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            if self._buf:  # frames left unhandled when writing paused
                self.data_received(b"")

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
        unpack = FRAME_HEAD.unpack_from
        while end - offset >= 9 and self._transport is not None and not self._write_paused:
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
            self._write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._unacked)))
            self._unacked = 0
        if flags & PADDED:
            payload = unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_done:
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if stream is not None:
                self._reset(stream, STREAM_CLOSED)
            return  # a stream already answered or reset: its late frames are ignored
        stream.unacked += size
        if stream.unacked >= WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(stream.unacked)))
            stream.unacked = 0
        if payload and not self._messages(stream, payload):
            return
        if flags & END_STREAM:
            self._request_done(stream)

    def _messages(self, stream: Stream, payload: bytes) -> bool:
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
        take, decode = stream.handler.on_message, stream.decode  # type: ignore[union-attr]
        while end - offset >= 5:
            compressed = payload[offset]
            (length,) = U32.unpack_from(payload, offset + 1)
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
            take(decode(payload[offset + 5 : stop]))
            offset = stop
        if offset < end:
            if self.streams.get(stream.id) is not stream:  # its handler ended it (a reset)
                return False
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
        payload = header_fragment(flags, payload)
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
            self._write(frame(RST_STREAM, 0, stream_id, U32.pack(REFUSED_STREAM)))
            return
        self._open(stream_id, flags, dict(headers))

    def _open(self, stream_id: int, flags: int, headers: dict[bytes, bytes]) -> None:
        """A new request: refused with an error, or given to its method's handler."""
        remote_done = bool(flags & END_STREAM)
        if headers.get(b":method") != b"POST":
            self._answer_http(stream_id, b"405", remote_done)
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._answer_http(stream_id, b"415", remote_done)
            return
        path = headers.get(b":path", b"")
        factory = self._port.methods.get(path)
        if factory is None:
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
        stream = Stream(stream_id, self)
        self.streams[stream_id] = stream
        tracing = self._port.tracing
        if tracing is not None:
            name = path.decode()  # as grpcio's instrumentation names it
            service, _, method = name[1:].rpartition("/")
            stream.span = tracing.start_http_span(
                name,
                traceparent=headers.get(b"traceparent"),
                tracestate=headers.get(b"tracestate"),
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )
        handler = factory(stream)
        stream.handler = handler
        stream.decode = handler.decode
        if remote_done:
            self._request_done(stream)

    def _rst_stream(self, stream_id: int, flags: int, payload: bytes) -> None:
        read_rst_stream(stream_id, payload)
        if stream_id > self._last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.get(stream_id)
        if stream is not None:  # the client cancelled: what it sent is already taken
            self._forget(stream, "cancelled by the client")

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        settings = read_settings(stream_id, flags, payload)
        if settings is None:  # an ACK
            return
        for ident, value in settings:
            if ident == S_INITIAL_WINDOW_SIZE:
                self._peer_initial_window = value  # every stream's window moves with it
            elif ident == S_MAX_FRAME_SIZE:
                self._peer_max_frame = value
            # HEADER_TABLE_SIZE: our answers never index; the rest limit the peer's side
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_waiting()

    def _push_promise(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        check_ping(stream_id, payload)
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))

    def _goaway(self, stream_id: int, flags: int, payload: bytes) -> None:
        read_goaway(stream_id, payload)
        self._going_away = True  # the client opens no more streams; it closes when done

    def _window_update(self, stream_id: int, flags: int, payload: bytes) -> None:
        increment = window_increment(stream_id, payload)
        if stream_id == 0:
            self._send_window = grown_window(self._send_window, increment)
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
            if stream.out is not None:
                self._drain(stream)

    def _ignore(self, stream_id: int, flags: int, payload: bytes) -> None:
        """PRIORITY (deprecated by RFC 9113; a server may ignore it)."""
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ConnectionError_(FRAME_SIZE_ERROR, "PRIORITY of the wrong size")

    # -- answers -----------------------------------------------------------------------

    def _request_done(self, stream: Stream) -> None:
        """The client ended its side: the handler is told, if the last message was whole."""
        stream.remote_done = True
        if stream.pending:
            self._refuse(stream, GRPC_INTERNAL, "stream ended inside a message")
            return
        if not stream.done:
            stream.handler.on_end()  # type: ignore[union-attr]

    def send(self, stream: Stream, message: bytes, end: bytes | None) -> bool:
        """Queue one gRPC message (and, with `end`, the trailers after it) and send what the
        windows allow now; the rest goes on WINDOW_UPDATE or SETTINGS."""
        if stream.done or self.streams.get(stream.id) is not stream:
            return False
        body = b"\0" + U32.pack(len(message)) + message
        if end is not None:
            stream.done = True
            stream.end = end
        if stream.out is None:
            stream.out = deque((body,))
        else:
            stream.out.append(body)
        stream.out_bytes += len(body)
        self._pending_bytes += len(body)
        if not self._drain(stream):
            return False
        if stream.out is not None and self._pending_bytes > MAX_PENDING_BYTES:
            self._reset(stream, ENHANCE_YOUR_CALM)  # the peer leaves too much unread
            return False
        return True

    def finish(self, stream: Stream, status: int, message: str) -> None:
        if stream.done or self.streams.get(stream.id) is not stream:
            return
        stream.done = True
        if status != GRPC_OK:
            self._port.counters[f"grpc_status_{status}"] += 1
            stream.error = message or f"grpc-status {status}"
        if not stream.head_sent and stream.out is None:  # nothing sent: trailers-only
            self._forget(stream, stream.error)
            block = encode_headers([*_GRPC_HEAD, *_status_fields(status, message)])
            out = frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block)
            if not stream.remote_done:
                out += frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR))
            self._write(out)
            return
        stream.end = trailers(status, message)
        if stream.out is None:
            self._drain(stream)

    def _drain(self, stream: Stream) -> bool:
        """Send what the windows allow of the stream's waiting output, then its trailers
        once nothing is left; True while the stream stays open. Frames are at most the
        peer's MAX_FRAME_SIZE, and each byte is copied once (into the write)."""
        out = stream.out
        parts: list[bytes | memoryview] = []
        if out:
            window = min(self._peer_initial_window + stream.window_delta, self._send_window)
            if window <= 0:
                return self._park(stream)
            if not stream.head_sent:
                stream.head_sent = True
                parts.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
            max_frame, offset, sent = self._peer_max_frame, stream.out_offset, 0
            head = FRAME_HEAD.pack
            while out and window > 0:
                chunk = out[0]
                size = min(len(chunk) - offset, window, max_frame)
                parts.append(head(size >> 16, size & 0xFFFF, DATA, 0, stream.id))
                parts.append(memoryview(chunk)[offset : offset + size])
                offset += size
                window -= size
                sent += size
                if offset == len(chunk):
                    out.popleft()
                    offset = 0
            stream.out_offset = offset
            stream.out_bytes -= sent
            self._pending_bytes -= sent
            self._send_window -= sent
            stream.window_delta -= sent
        if out:  # what is left waits for window
            self._write(b"".join(parts))
            return self._park(stream)
        if stream.out is not None:
            stream.out = None
            stream.out_offset = 0
            self._waiting.pop(stream.id, None)
        if stream.end is not None:
            if not stream.head_sent:
                parts.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
                stream.head_sent = True
            parts.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.end))
            if not stream.remote_done:  # answered early: the client may stop sending
                parts.append(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
            self._write(b"".join(parts))
            self._forget(stream, stream.error)
            return False
        if parts:
            self._write(b"".join(parts))
        return True

    def _park(self, stream: Stream) -> bool:
        """The stream's output waits for window: counted against the connection's bounds
        (MAX_WAITING streams, MAX_PENDING_BYTES); True while the stream stays open."""
        if stream.id not in self._waiting:
            if len(self._waiting) >= MAX_WAITING:
                if self._closing:  # shutting down: this one is reset with the rest
                    return False
                self._reset(stream, ENHANCE_YOUR_CALM)
                return False
            self._waiting[stream.id] = stream
        return True

    def _flush_waiting(self) -> None:
        """The connection's window or the initial window grew: send the waiting output that
        now fits, oldest first (at most MAX_WAITING streams, and only while the connection
        has window)."""
        for stream in list(self._waiting.values()):
            if self._send_window <= 0 or self._transport is None:
                break
            self._drain(stream)

    def _refuse(self, stream: Stream, status: int, message: str) -> None:
        """End a stream with a gRPC error and reset it if the client is still sending, so
        that it stops: trailers-only, or trailers alone once the answer's headers are out
        (no pseudo-headers in trailers, RFC 9113 §8.1)."""
        self._forget(stream, message)
        if not stream.head_sent:
            self._answer_error(stream.id, status, message, stream.remote_done)
            return
        self._port.counters[f"grpc_status_{status}"] += 1
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers(status, message)))
        if not stream.remote_done:
            self._write(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))

    def _answer_error(self, stream_id: int, status: int, message: str, remote_done: bool) -> None:
        self._port.counters[f"grpc_status_{status}"] += 1
        self._write(
            frame(HEADERS, END_HEADERS | END_STREAM, stream_id, error_headers(status, message))
        )
        if not remote_done:
            self._write(frame(RST_STREAM, 0, stream_id, U32.pack(NO_ERROR)))

    def _answer_http(self, stream_id: int, status: bytes, remote_done: bool) -> None:
        self._port.counters[f"http_{status.decode()}"] += 1
        block = encode_headers([(b":status", status)])
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        if not remote_done:
            self._write(frame(RST_STREAM, 0, stream_id, U32.pack(NO_ERROR)))

    def _reset(self, stream: Stream, code: int) -> None:
        self._forget(stream, f"reset: {ERROR_NAMES.get(code, code)}")
        self._port.counters[f"reset_{ERROR_NAMES.get(code, code)}"] += 1
        self._write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))

    def _fail(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY naming the last stream taken, then close."""
        self._port.counters[f"goaway_{ERROR_NAMES.get(code, code)}"] += 1
        log.warning(
            f"{self._port.name} connection closed on a protocol error",
            extra={"peer": self._peer, "error": ERROR_NAMES.get(code, code), "reason": reason},
        )
        self._close_with(code, reason.encode("utf-8", "replace")[:256])

    def _close_with(self, code: int, debug: bytes = b"") -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(frame(GOAWAY, 0, 0, U32.pack(self._last_stream) + U32.pack(code) + debug))
        self._transport = None  # before the handlers hear of it: they cannot write now
        for stream in list(self.streams.values()):
            self._forget(stream, "connection closed")
        self._buf.clear()
        transport.close()  # flushes what is written, then connection_lost
        # A peer that does not read would hold the connection (and a server's wait_closed)
        # for ever: what it has not read after the grace is dropped.
        self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)

    def shut_down(self) -> None:
        """The server stops: every open call ends as its handler decides (`on_shutdown`);
        what cannot end now (no window, mid-message) is reset; then GOAWAY(NO_ERROR)."""
        self._closing = True
        for stream in list(self.streams.values()):
            if not stream.done and self.streams.get(stream.id) is stream:
                stream.handler.on_shutdown()  # type: ignore[union-attr]
        for stream in list(self.streams.values()):
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

    def peer_name(self) -> str:
        return self._peer

    def _forget(self, stream: Stream, error: str | None) -> None:
        """The stream is over (answered, refused, reset or cut off): drop it, its
        unfinished message, its waiting output and its span (`error` None = it ended
        well), and tell its handler."""
        if self.streams.pop(stream.id, None) is None:
            return
        self._waiting.pop(stream.id, None)
        self._pending_bytes -= stream.out_bytes
        stream.out = None
        stream.out_bytes = 0
        self._held -= len(stream.pending)
        stream.pending.clear()
        if stream.span is not None:
            span, stream.span = stream.span, None
            self._port.tracing.end_http_span(span, error=error)  # type: ignore[union-attr]
        handler = stream.handler
        if handler is not None:
            try:
                handler.on_close(error)
            except Exception:  # a handler's bug costs its own stream, not the connection
                log.exception(f"{self._port.name} handler failed on close")


H2Port.protocol = H2Connection

# Frame handlers by type, DATA (the hot one) excepted: it is called directly.
_HANDLERS: tuple[Callable[[H2Connection, int, int, bytes], None], ...] = (
    H2Connection._data,
    H2Connection._headers,
    H2Connection._ignore,
    H2Connection._rst_stream,
    H2Connection._settings,
    H2Connection._push_promise,
    H2Connection._ping,
    H2Connection._goaway,
    H2Connection._window_update,
    H2Connection._continuation,
)
