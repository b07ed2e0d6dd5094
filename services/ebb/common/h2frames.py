"""HTTP/2's frame layer (RFC 9113) and gRPC's message framing, shared by the server
(`ebb.common.h2server`) and the client (`ebb.common.h2client`): the wire's constants,
frame encoding, and the checks every peer makes of a frame it reads.

A check that fails raises `ConnectionError_` with the RFC's error code; what to do about it
is the caller's: a server answers GOAWAY with the code and closes, the client fails its
call. The checks stop at validation: what a frame then changes (windows, settings, a
stream's fate) is each side's own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x9
CANCEL, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY = 0x8, 0xB, 0xC
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

MAX_FRAME_SIZE = 16_384  # what we read: the protocol's default, not raised
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit, as grpcio's
MAX_HEADER_LIST_BYTES = 16_384

FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")


class ConnectionError_(Exception):  # noqa: N801 - not the builtin ConnectionError
    """A connection-level protocol error, with the RFC's code: a server answers it with
    GOAWAY(code) and closes; the client fails its call."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


# -- checks of a frame read (each raises ConnectionError_) -----------------------------


def unpad(payload: bytes) -> bytes:
    """A PADDED frame's payload without its pad length and padding."""
    if not payload:
        raise ConnectionError_(FRAME_SIZE_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


def header_fragment(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's header block fragment: without padding and priority fields."""
    if flags & PADDED:
        payload = unpad(payload)
    if flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS priority fields cut short")
        payload = payload[5:]
    return payload


def read_settings(stream_id: int, flags: int, payload: bytes) -> Iterator[tuple[int, int]] | None:
    """A SETTINGS frame's (identifier, value) pairs; None for an ACK. Each pair is checked
    as it is taken, so that a bad one stops the caller before what follows it applies."""
    if stream_id != 0:
        raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        return None
    if len(payload) % 6:
        raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
    return (_setting(*SETTING.unpack_from(payload, offset)) for offset in range(0, len(payload), 6))


def _setting(ident: int, value: int) -> tuple[int, int]:
    if ident == S_INITIAL_WINDOW_SIZE:
        if value > MAX_WINDOW:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
    elif ident == S_MAX_FRAME_SIZE:
        if not MAX_FRAME_SIZE <= value < 1 << 24:
            raise ConnectionError_(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
    elif ident == S_ENABLE_PUSH and value > 1:
        raise ConnectionError_(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
    return ident, value


def check_ping(stream_id: int, payload: bytes) -> None:
    if stream_id != 0:
        raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
    if len(payload) != 8:
        raise ConnectionError_(FRAME_SIZE_ERROR, "PING of the wrong size")


def read_goaway(stream_id: int, payload: bytes) -> tuple[int, int, bytes]:
    """(last stream id, error code, debug data) of a GOAWAY frame."""
    if stream_id != 0:
        raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
    if len(payload) < 8:
        raise ConnectionError_(FRAME_SIZE_ERROR, "GOAWAY cut short")
    last_stream = U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
    return last_stream, U32.unpack_from(payload, 4)[0], bytes(payload[8:])


def read_rst_stream(stream_id: int, payload: bytes) -> int:
    """The error code of an RST_STREAM frame."""
    if stream_id == 0:
        raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
    if len(payload) != 4:
        raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
    return U32.unpack(payload)[0]


def window_increment(stream_id: int, payload: bytes) -> int:
    """A WINDOW_UPDATE frame's increment. One of 0 is a connection error on stream 0; on a
    stream, a stream error the caller answers."""
    if len(payload) != 4:
        raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
    increment = U32.unpack(payload)[0] & 0x7FFFFFFF
    if stream_id == 0 and increment == 0:
        raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
    return increment


def grown_window(window: int, increment: int) -> int:
    """The connection's send window after a WINDOW_UPDATE; past 2^31-1, an error."""
    window += increment
    if window > MAX_WINDOW:
        raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
    return window


# -- HPACK literals and gRPC's framing ------------------------------------------------


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


def grpc_message_text(value: bytes) -> str:
    """`grpc-message` as sent: percent-encoded UTF-8 (a bad escape is kept as it is)."""
    return unquote_to_bytes(value).decode("utf-8", "replace") if value else ""


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (not compressed), 4-byte length, bytes."""
    return b"\x00" + U32.pack(len(message)) + message


def grpc_messages(body: bytes | bytearray) -> list[bytes]:
    """The messages of gRPC-framed bytes; ValueError on a cut or compressed one."""
    out, offset = [], 0
    while offset < len(body):
        if len(body) - offset < 5:
            raise ValueError("a cut gRPC message in the response")
        if body[offset] != 0:
            raise ValueError("a compressed gRPC message, though we accept only identity")
        (size,) = U32.unpack_from(body, offset + 1)
        if offset + 5 + size > len(body):
            raise ValueError("a cut gRPC message in the response")
        out.append(bytes(body[offset + 5 : offset + 5 + size]))
        offset += 5 + size
    return out
