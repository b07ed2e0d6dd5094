"""A small asyncio HTTP/2 client for one gRPC client-streaming call per connection.

Why not grpcio: the queue runs once per app instance and its only gRPC call is the stats
stream to the autoscaler; grpcio costs a queue ~12 MB of resident memory (issue #8). This
speaks just enough of RFC 9113 and gRPC's wire protocol for that call, on any asyncio
loop (uvloop included), with no threads:

- the connection preface and SETTINGS (ours; theirs acknowledged), PING answered, and a
  keepalive PING every `keepalive_s` that must be acknowledged within
  `keepalive_timeout_s` (as grpcio's keepalive in `ebb.common.grpcstream.CHANNEL_OPTIONS`);
- one request stream (id 1): HEADERS (hpack, split into CONTINUATION when the peer's frame
  size needs it), then each message gRPC-framed in DATA frames that respect the peer's
  windows and frame size (a write waits for WINDOW_UPDATE, bounded), then END_STREAM;
- the answer: headers (decoded with hpack: servers use Huffman and the dynamic table,
  CONTINUATION and padding included), DATA (bounded, windows given back), trailers or a
  trailers-only answer, `grpc-status` and the percent-decoded `grpc-message`; an HTTP
  status other than 200, RST_STREAM, GOAWAY, a reset or EOF each end the call with the
  gRPC status grpc-core gives the same event.

    call = await StreamCall.open("127.0.0.1:8091", "/pkg.Service/Method", metadata=...)
    async with call:                       # cancels and closes whatever happened
        await call.write(message_bytes)    # as often as needed
        await call.done_writing()
        answer = await call.response()     # bytes, or raises RpcError(status, message)

A connection carries exactly one call: the call's end closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Iterable

import hpack

# The wire (RFC 9113's constants, frames and their checks) is the server's too.
from ebb.common.h2frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INADEQUATE_SECURITY,
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
    S_ENABLE_PUSH,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    ConnectionError_,
    check_ping,
    frame,
    grown_window,
    grpc_frame,
    grpc_message_text,
    grpc_messages,
    header_fragment,
    read_goaway,
    read_rst_stream,
    read_settings,
    unpad,
    window_increment,
)

STREAM_ID = 1  # the connection's one stream
CLOSE_GRACE_S = 2.0  # a closing socket the server does not read is dropped after this
MAX_HEADER_BLOCK_BYTES = 65_536  # a header block's encoded bytes over CONTINUATION frames
MAX_RESPONSE_BYTES = MAX_MESSAGE_BYTES  # gRPC's default receive limit
CONNECT_TIMEOUT_S = 5.0  # TCP connect and the server's first SETTINGS
WRITE_TIMEOUT_S = 5.0  # a write that waits this long for window or the socket fails
KEEPALIVE_S = 10.0  # grpc.keepalive_time_ms
KEEPALIVE_TIMEOUT_S = 5.0  # grpc.keepalive_timeout_ms
# grpc-core's grpc.http2.max_pings_without_data: after this many PINGs with no DATA or
# HEADERS sent in between, keepalive waits for the next message. A grpcio server allows a
# client one PING per 5 minutes while it receives nothing, and closes the connection with
# GOAWAY "too_many_pings" after the third early one; an idle activator sends nothing.
MAX_PINGS_WITHOUT_DATA = 2
USER_AGENT = "ebb-h2client"


class GrpcStatus(enum.IntEnum):
    """gRPC's status codes (an int, with the name grpcio's `StatusCode` gives it)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call that did not end OK: its gRPC status and message. `code()` and `details()`
    are named as on grpcio's `AioRpcError`, so code written for either reads both."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = _status(status)
        self.message = message
        super().__init__(f"{self.status.name}: {message}")

    def code(self) -> GrpcStatus:
        return self.status

    def details(self) -> str:
        return self.message


def _status(value: int) -> GrpcStatus:
    try:
        return GrpcStatus(value)
    except ValueError:  # outside the spec's range: UNKNOWN, as gRPC's spec says
        return GrpcStatus.UNKNOWN


# HTTP statuses of a non-gRPC answer, mapped as gRPC's spec does (http-grpc-status-mapping).
_HTTP_TO_GRPC = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}

# RST_STREAM codes, mapped as grpc-core does (`grpc_http2_error_to_grpc_status`).
_RESET_TO_GRPC = {
    REFUSED_STREAM: GrpcStatus.UNAVAILABLE,
    CANCEL: GrpcStatus.CANCELLED,
    ENHANCE_YOUR_CALM: GrpcStatus.RESOURCE_EXHAUSTED,
    INADEQUATE_SECURITY: GrpcStatus.PERMISSION_DENIED,
}


def http_status_to_grpc(status: int) -> GrpcStatus:
    return _HTTP_TO_GRPC.get(status, GrpcStatus.UNKNOWN)


def reset_to_grpc(code: int) -> GrpcStatus:
    return _RESET_TO_GRPC.get(code, GrpcStatus.INTERNAL)


def split_target(target: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `[V6]:PORT`; ValueError otherwise."""
    host, _, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {target!r} must be HOST:PORT")
    return host, int(port)


class StreamCall(asyncio.Protocol):
    """One client-streaming gRPC call on a connection of its own (see the module doc).

    Build it with `open()`; the constructor only sets up state (tests drive it with a
    fake transport through `connection_made`/`data_received`).
    """

    def __init__(
        self,
        path: str,
        *,
        authority: str,
        metadata: Iterable[tuple[str, str]] = (),
        write_timeout_s: float = WRITE_TIMEOUT_S,
        keepalive_s: float = KEEPALIVE_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._path = path
        self._authority = authority
        self._metadata = [(name.lower(), value) for name, value in metadata]
        self._write_timeout_s = write_timeout_s
        self._keepalive_s = keepalive_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._max_response_bytes = max_response_bytes
        self._transport: asyncio.Transport | None = None
        self._made = False  # connection_made ran
        self._goaway_sent = False
        self._buf = bytearray()  # at most one partial frame (frame sizes are checked first)
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._encoder = hpack.Encoder()
        self._block: tuple[int, bytearray] | None = None  # (flags, header block) to continue
        # Sending: the peer's limits and our windows at the peer.
        self._peer_frame_size = MAX_FRAME_SIZE
        self._peer_initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW  # the connection's
        self._stream_send_window = DEFAULT_WINDOW
        self._paused = False  # the transport's buffer is over its high-water mark
        self._waiter: asyncio.Future[None] | None = None  # a write waiting for room
        self._write_lock = asyncio.Lock()
        self._headers_sent = False
        self._local_done = False  # END_STREAM sent
        # Receiving: our windows at us, what the answer holds.
        self._recv_window = DEFAULT_WINDOW
        self._stream_recv_window = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._http_status: int | None = None
        self._body = bytearray()
        self._remote_done = False
        self._goaway: str | None = None  # what the peer's GOAWAY said, for a later error
        # Lifecycle.
        self._settings_seen = self._loop.create_future()  # the server's first SETTINGS
        self._result: asyncio.Future[bytes] = self._loop.create_future()
        self._closed = self._loop.create_future()  # connection_lost ran
        self._abort_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Transport | None = None  # closed, maybe not gone yet
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._ping_payload = b""
        self._pings_without_data = 0

    # -- the public surface ------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        target: str,
        path: str,
        *,
        metadata: Iterable[tuple[str, str]] = (),
        timeout_s: float = CONNECT_TIMEOUT_S,
        **options,
    ) -> StreamCall:
        """Connect to `target` (HOST:PORT), exchange the prefaces and start the call.
        Raises RpcError(UNAVAILABLE) when no HTTP/2 server answers within `timeout_s`."""
        host, port = split_target(target)
        call = cls(path, authority=target, metadata=metadata, **options)
        try:
            async with asyncio.timeout(timeout_s):
                await call._loop.create_connection(lambda: call, host, port)
                await asyncio.shield(call._settings_seen)
        except TimeoutError:
            call.close()
            raise RpcError(
                GrpcStatus.UNAVAILABLE, f"no HTTP/2 connection to {target} in {timeout_s:g} s"
            ) from None
        except OSError as exc:
            call.close()
            raise RpcError(GrpcStatus.UNAVAILABLE, f"cannot connect to {target}: {exc}") from exc
        except BaseException:
            call.close()
            raise
        call.start()
        return call

    def start(self) -> None:
        """Send the request's HEADERS (once the server's SETTINGS are known; `open` does)."""
        if self._headers_sent or self._result.done():
            return
        self._headers_sent = True
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", self._path),
            (":authority", self._authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-accept-encoding", "identity"),
            ("user-agent", USER_AGENT),
            *self._metadata,
        ]
        block = self._encoder.encode(headers)
        size = self._peer_frame_size
        chunks = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        out = []
        for i, chunk in enumerate(chunks):
            flags = END_HEADERS if i == len(chunks) - 1 else 0
            out.append(frame(HEADERS if i == 0 else CONTINUATION, flags, STREAM_ID, chunk))
        self._write(b"".join(out))

    async def write(self, message: bytes) -> None:
        """Send one message, as the peer's windows and frame size allow. Waits for room at
        most `write_timeout_s` (TimeoutError); a write cut off mid-message cancels the call
        (the stream could not go on). Raises the call's RpcError once it has failed, and
        InvalidStateError once it is over or done writing."""
        async with self._write_lock:
            data = memoryview(grpc_frame(message))
            offset = 0
            deadline = self._loop.time() + self._write_timeout_s
            try:
                while offset < len(data):
                    self._check_writable()
                    room = min(self._send_window, self._stream_send_window, self._peer_frame_size)
                    if room <= 0 or self._paused:
                        await self._wait_for_room(deadline)
                        continue
                    chunk = data[offset : offset + room]
                    self._send_window -= len(chunk)
                    self._stream_send_window -= len(chunk)
                    self._write(frame(DATA, 0, STREAM_ID, bytes(chunk)))
                    self._pings_without_data = 0
                    offset += len(chunk)
            except BaseException:
                if 0 < offset < len(data):
                    self.cancel()
                raise

    async def done_writing(self) -> None:
        """End our side of the stream (END_STREAM); the server then answers."""
        async with self._write_lock:
            if self._local_done or self._result.done():
                return
            self._local_done = True
            self._write(frame(DATA, END_STREAM, STREAM_ID))

    async def response(self) -> bytes:
        """The answer's message once the call ends OK; else raises its RpcError."""
        return await asyncio.shield(self._result)

    def done(self) -> bool:
        return self._result.done()

    def error(self) -> RpcError | None:
        """Why the call failed; None when it ended OK or is not over yet."""
        if not self._result.done():
            return None
        error = self._result.exception()
        return error if isinstance(error, RpcError) else None

    def cancel(self) -> bool:
        """End the call now: RST_STREAM(CANCEL) and close. False if it was already over."""
        if self._result.done():
            self.close()
            return False
        if self._headers_sent:
            self._write(frame(RST_STREAM, 0, STREAM_ID, U32.pack(CANCEL)))
        self._finish(RpcError(GrpcStatus.CANCELLED, "cancelled by the client"))
        return True

    def close(self) -> None:
        """Close the connection (the call, if not over, fails CANCELLED); idempotent."""
        if not self._result.done():
            self._finish(RpcError(GrpcStatus.CANCELLED, "the connection was closed"))
        self._stop_keepalive()
        self._close_transport()

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """`close`, then wait (bounded) until the socket is gone; a socket the server does
        not read by then is dropped."""
        self.close()
        if not self._made:
            return  # never connected: no socket to wait for
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout_s)
        except TimeoutError:
            if self._closing is not None:
                self._closing.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), timeout_s)

    async def __aenter__(self) -> StreamCall:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.cancel()
        await self.aclose()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._made = True
        ours = SETTING.pack(S_ENABLE_PUSH, 0) + SETTING.pack(
            S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES
        )
        transport.write(PREFACE + frame(SETTINGS, 0, 0, ours))
        self._schedule_ping()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stop_keepalive()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if not self._result.done():
            if self._goaway is not None:
                reason = f"connection closed after {self._goaway}"
            elif exc is not None:
                reason = f"connection lost: {exc}"
            else:
                reason = "the server closed the connection"
            self._finish(RpcError(GrpcStatus.UNAVAILABLE, reason))
        if not self._settings_seen.done():
            self._settings_seen.set_exception(
                ConnectionError("closed before the server's SETTINGS")
            )
            self._settings_seen.exception()  # retrieved: nobody may be waiting
        if not self._closed.done():
            self._closed.set_result(None)

    def eof_received(self) -> bool:
        return False  # the server is done sending: close our side too (connection_lost)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        try:
            used = self._read_frames(data)
        except ConnectionError_ as exc:
            self._connection_error(exc.code, exc.reason)
            return
        if used < len(data) and self._transport is not None:
            self._buf += memoryview(data)[used:]

    # -- frames ------------------------------------------------------------------------

    def _read_frames(self, data: bytes) -> int:
        offset, end = 0, len(data)
        while end - offset >= 9 and self._transport is not None:
            high, low, kind, flags, stream_id = FRAME_HEAD.unpack_from(data, offset)
            size = high << 16 | low
            if size > MAX_FRAME_SIZE:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {size} bytes")
            stop = offset + 9 + size
            if stop > end:
                break
            payload = data[offset + 9 : stop]
            offset = stop
            stream_id &= 0x7FFFFFFF
            if self._block is not None and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "a header block was not continued")
            if kind < len(_HANDLERS):
                _HANDLERS[kind](self, stream_id, flags, payload)
            # unknown frame types are ignored (RFC 9113 §5.5)
        return offset

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_window -= len(payload)
        if self._recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if stream_id != STREAM_ID:
            raise ConnectionError_(PROTOCOL_ERROR, f"DATA on stream {stream_id}")
        self._stream_recv_window -= len(payload)
        if self._stream_recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        if self._result.done() or self._remote_done:
            self._give_back(len(payload))
            return
        if self._http_status is None:
            self._fail_stream(GrpcStatus.INTERNAL, "DATA before the response headers")
            return
        body = unpad(payload) if flags & PADDED else payload
        if len(self._body) + len(body) > self._max_response_bytes:
            self._fail_stream(
                GrpcStatus.RESOURCE_EXHAUSTED,
                f"the response is larger than {self._max_response_bytes} bytes",
            )
            return
        self._body += body
        self._give_back(len(payload))
        if flags & END_STREAM:
            self._remote_done = True
            self._finish(
                RpcError(GrpcStatus.INTERNAL, "the server ended the stream without trailers")
            )

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if stream_id != STREAM_ID:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        payload = header_fragment(flags, payload)
        if flags & END_HEADERS:
            self._header_block(flags, payload)
        else:
            self._block = (flags, bytearray(payload))

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._block is None or stream_id != STREAM_ID:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        first_flags, block = self._block
        block += payload
        if len(block) > MAX_HEADER_BLOCK_BYTES:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & END_HEADERS:
            self._block = None
            self._header_block(first_flags, bytes(block))

    def _header_block(self, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:  # the decoder is out of step: the connection goes
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None
        if self._result.done() or self._remote_done:
            return  # after the call ended (a reset, a cancel): decoded only for the table
        fields: dict[bytes, bytes] = {}
        for name, value in headers:
            fields.setdefault(name, value)
        end_stream = bool(flags & END_STREAM)
        if self._http_status is None:
            status = fields.get(b":status", b"")
            if not status.isdigit():
                self._fail_stream(GrpcStatus.INTERNAL, "response headers without :status")
                return
            code = int(status)
            if 100 <= code < 200 and not end_stream:
                return  # informational: the real headers follow
            self._http_status = code
            if code != 200:  # not a gRPC answer (a proxy's, say): the status says it all
                self._remote_done = end_stream
                self._fail_stream(http_status_to_grpc(code), f"HTTP status {code}")
                return
            content_type = fields.get(b"content-type", b"")
            if not content_type.startswith(b"application/grpc"):
                text = content_type.decode("latin-1") or "none"
                self._fail_stream(GrpcStatus.UNKNOWN, f"content-type {text} is not gRPC")
                return
            if not end_stream:
                return  # the answer's headers; DATA and trailers follow
        elif not end_stream:
            self._fail_stream(GrpcStatus.INTERNAL, "trailers without END_STREAM")
            return
        self._trailers(fields)

    def _trailers(self, fields: dict[bytes, bytes]) -> None:
        self._remote_done = True
        raw_status = fields.get(b"grpc-status")
        message = grpc_message_text(fields.get(b"grpc-message", b""))
        if raw_status is None:
            self._finish(RpcError(GrpcStatus.INTERNAL, "trailers without grpc-status"))
            return
        status = _status(int(raw_status)) if raw_status.isdigit() else GrpcStatus.UNKNOWN
        if status != GrpcStatus.OK:
            self._finish(RpcError(status, message))
            return
        try:
            messages = grpc_messages(self._body)
        except ValueError as exc:
            self._finish(RpcError(GrpcStatus.INTERNAL, str(exc)))
            return
        if len(messages) != 1:
            text = f"{len(messages)} messages in the response of a client-streaming call"
            self._finish(RpcError(GrpcStatus.INTERNAL, text))
            return
        self._finish(messages[0])

    def _rst_stream(self, stream_id: int, flags: int, payload: bytes) -> None:
        code = read_rst_stream(stream_id, payload)
        if stream_id != STREAM_ID or self._result.done():
            return  # e.g. NO_ERROR after the trailers: stop sending, which we have
        self._remote_done = True
        self._finish(RpcError(reset_to_grpc(code), f"stream reset by the server (code {code})"))

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        settings = read_settings(stream_id, flags, payload)
        if settings is None:  # an ACK
            return
        for ident, value in settings:
            if ident == S_INITIAL_WINDOW_SIZE:
                self._stream_send_window += value - self._peer_initial_window
                self._peer_initial_window = value
                if self._stream_send_window > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "stream window overflow")
            elif ident == S_MAX_FRAME_SIZE:
                self._peer_frame_size = value
            elif ident == S_HEADER_TABLE_SIZE:
                self._encoder.header_table_size = min(value, 4096)
        self._write(frame(SETTINGS, ACK, 0))
        if not self._settings_seen.done():
            self._settings_seen.set_result(None)
        self._wake()

    def _push_promise(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE, which we disabled")

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        check_ping(stream_id, payload)
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif payload == self._ping_payload and self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
            self._schedule_ping()

    def _goaway_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        last_stream, code, debug_data = read_goaway(stream_id, payload)
        debug = debug_data[:192].decode("utf-8", "replace")
        self._goaway = f"GOAWAY (code {code}{': ' + debug if debug else ''})"
        if last_stream < STREAM_ID and not self._result.done():
            # Our stream was never taken: safe to try again elsewhere.
            self._finish(RpcError(GrpcStatus.UNAVAILABLE, f"{self._goaway} before the call began"))
            self.close()
        # else the stream may finish; the server closes the connection after it

    def _window_update(self, stream_id: int, flags: int, payload: bytes) -> None:
        increment = window_increment(stream_id, payload)
        if stream_id == 0:
            self._send_window = grown_window(self._send_window, increment)
        elif stream_id == STREAM_ID and not self._result.done():
            if increment == 0:
                self._fail_stream(GrpcStatus.INTERNAL, "WINDOW_UPDATE of 0", PROTOCOL_ERROR)
                return
            self._stream_send_window += increment
            if self._stream_send_window > MAX_WINDOW:
                self._fail_stream(GrpcStatus.INTERNAL, "stream window overflow", FLOW_CONTROL_ERROR)
                return
        self._wake()

    def _ignore(self, stream_id: int, flags: int, payload: bytes) -> None:
        """PRIORITY (deprecated by RFC 9113): ignored."""

    # -- helpers -----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._result.done():
            error = self._result.exception()
            if error is not None:
                raise error
            raise asyncio.InvalidStateError("the call is over")
        if self._local_done:
            raise asyncio.InvalidStateError("done_writing() was called")

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await asyncio.wait_for(waiter, max(deadline - self._loop.time(), 0.0))
        except TimeoutError:
            raise TimeoutError(
                "no room to write: the server's flow-control window stayed closed"
                if not self._paused
                else "no room to write: the server does not read"
            ) from None
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _give_back(self, size: int) -> None:
        """Open our windows again for what was read (the answer is bounded elsewhere)."""
        self._recv_window += size
        self._recv_unacked += size
        if self._recv_unacked < DEFAULT_WINDOW // 2:
            return
        increment, self._recv_unacked = self._recv_unacked, 0
        out = frame(WINDOW_UPDATE, 0, 0, U32.pack(increment))
        if not self._remote_done:
            self._stream_recv_window += increment
            out += frame(WINDOW_UPDATE, 0, STREAM_ID, U32.pack(increment))
        self._write(out)

    def _schedule_ping(self) -> None:
        if self._transport is not None and self._keepalive_s > 0:
            self._ping_timer = self._loop.call_later(self._keepalive_s, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self._transport is None:
            return
        if self._pings_without_data >= MAX_PINGS_WITHOUT_DATA:
            self._schedule_ping()  # idle: try again later (a write resets the count)
            return
        self._pings_without_data += 1
        self._ping_payload = os.urandom(8)
        self._write(frame(PING, 0, 0, self._ping_payload))
        self._ping_deadline = self._loop.call_later(self._keepalive_timeout_s, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._ping_deadline = None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()  # a dead peer: nothing left to flush to it
        text = f"keepalive: no PING ACK within {self._keepalive_timeout_s:g} s"
        self._finish(RpcError(GrpcStatus.UNAVAILABLE, text))

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._ping_deadline = None

    def _fail_stream(self, status: GrpcStatus, message: str, code: int = CANCEL) -> None:
        """The answer is unusable: reset the stream, fail the call (and so close)."""
        if not self._remote_done:
            self._write(frame(RST_STREAM, 0, STREAM_ID, U32.pack(code)))
        self._finish(RpcError(status, message))

    def _connection_error(self, code: int, reason: str) -> None:
        """The peer broke the protocol: GOAWAY(code) and close; the call fails INTERNAL."""
        self._send_goaway(code, reason.encode()[:200])
        self._finish(RpcError(GrpcStatus.INTERNAL, f"HTTP/2 protocol error: {reason}"))

    def _finish(self, outcome: bytes | RpcError) -> None:
        """The call is over (the first outcome counts): settle it and close the connection,
        which carries nothing else."""
        if not self._result.done():
            if isinstance(outcome, RpcError):
                self._result.set_exception(outcome)
                self._result.exception()  # retrieved: a caller may only look at done()
            else:
                self._result.set_result(outcome)
        self._wake()
        self._stop_keepalive()
        self._buf.clear()
        self._send_goaway(NO_ERROR)
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the socket once what is written has gone; a server that no longer reads
        (a stalled or stopped process) would keep it, with its buffer, for ever: after
        CLOSE_GRACE_S it is dropped."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()  # flushes what is written, then connection_lost
            self._closing = transport
            self._abort_timer = self._loop.call_later(CLOSE_GRACE_S, transport.abort)

    def _send_goaway(self, code: int, debug: bytes = b"") -> None:
        """GOAWAY (once): we open no stream after our one (last-stream-id 0: the server
        opens none)."""
        if not self._goaway_sent and self._goaway is None:
            self._goaway_sent = True
            self._write(frame(GOAWAY, 0, 0, U32.pack(0) + U32.pack(code) + debug))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)


# Frame handlers by type (RFC 9113 §6).
_HANDLERS = (
    StreamCall._data,
    StreamCall._headers,
    StreamCall._ignore,
    StreamCall._rst_stream,
    StreamCall._settings,
    StreamCall._push_promise,
    StreamCall._ping,
    StreamCall._goaway_frame,
    StreamCall._window_update,
    StreamCall._continuation,
)
