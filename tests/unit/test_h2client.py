"""ebb.common.h2client's frame handling, driven through a fake transport (no sockets).

The "server" here is the test: it feeds frames to `data_received` and reads back what the
client wrote. No test asserts a timing; waits are hang guards that end on their event.
"""

from __future__ import annotations

import asyncio
import struct

import hpack
import pytest
from helpers import FakeTransport, h2_frames, until

from ebb.common import grpcstream
from ebb.common import h2client as h2
from ebb.common import h2frames as wire
from ebb.common.h2client import GrpcStatus, RpcError, StreamCall

PATH = "/ebb.api.autoscaler.v1.StatsService/StreamStats"
GUARD_S = 5.0  # hang guard only
_U32 = struct.Struct(">I")


class Transport(FakeTransport):
    """Records what the client writes; `close`/`abort` end the connection as asyncio's
    transports do (connection_lost on the next loop turn)."""

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Every frame written so far (after the preface), as (type, flags, stream, payload)."""
        data = bytes(self.out)
        assert data.startswith(h2.PREFACE)
        return h2_frames(data[len(h2.PREFACE) :])

    def of(self, kind: int) -> list[tuple[int, int, int, bytes]]:
        return [f for f in self.frames() if f[0] == kind]


def settings(*pairs: tuple[int, int]) -> bytes:
    return h2.frame(h2.SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def headers_frame(encoder: hpack.Encoder, headers, *, end_stream=False, stream_id=1) -> bytes:
    flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
    return h2.frame(h2.HEADERS, flags, stream_id, encoder.encode(headers))


RESPONSE_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


def trailers(encoder: hpack.Encoder, status: int = 0, message: str | None = None) -> bytes:
    fields = [("grpc-status", str(status))]
    if message is not None:
        fields.append(("grpc-message", message))
    return headers_frame(encoder, fields, end_stream=True)


async def started(*server_settings: tuple[int, int], **options) -> tuple[StreamCall, Transport]:
    """A call on a fake transport, past the server's SETTINGS and our HEADERS."""
    call = StreamCall(PATH, authority="autoscaler:8091", **{"keepalive_s": 0, **options})
    transport = Transport(call)
    call.connection_made(transport)
    call.data_received(settings(*server_settings))
    call.start()
    return call, transport


async def outcome(call: StreamCall) -> bytes | RpcError:
    try:
        return await asyncio.wait_for(call.response(), GUARD_S)
    except RpcError as exc:
        return exc


# -- the opening ----------------------------------------------------------------------


async def test_opens_with_the_preface_our_settings_and_then_the_request_headers():
    call = StreamCall(PATH, authority="autoscaler:8091", metadata=[("TraceParent", "00-abc")])
    transport = Transport(call)
    call.connection_made(transport)
    (kind, flags, stream_id, payload), *_ = transport.frames()
    assert (kind, flags, stream_id) == (h2.SETTINGS, 0, 0)
    ours = dict(struct.iter_unpack(">HI", payload))
    assert ours == {h2.S_ENABLE_PUSH: 0, h2.S_MAX_HEADER_LIST_SIZE: h2.MAX_HEADER_LIST_BYTES}
    call.data_received(settings())
    call.start()
    ack, head = transport.frames()[1:]
    assert ack[:3] == (h2.SETTINGS, h2.ACK, 0)
    assert head[:3] == (h2.HEADERS, h2.END_HEADERS, 1)
    assert hpack.Decoder().decode(head[3]) == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", "autoscaler:8091"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "identity"),
        ("user-agent", "ebb-h2client"),
        ("traceparent", "00-abc"),
    ]
    call.close()


async def test_a_header_block_larger_than_a_frame_goes_on_in_continuation_frames():
    big = "x" * 40_000
    call = StreamCall(PATH, authority="a:1", metadata=[("big", big)], keepalive_s=0)
    transport = Transport(call)
    call.connection_made(transport)
    call.data_received(settings())
    call.start()
    blocks = [f for f in transport.frames() if f[0] in (h2.HEADERS, h2.CONTINUATION)]
    assert [f[0] for f in blocks] == [h2.HEADERS, h2.CONTINUATION, h2.CONTINUATION]
    assert [bool(f[1] & h2.END_HEADERS) for f in blocks] == [False, False, True]
    assert all(len(f[3]) <= h2.MAX_FRAME_SIZE for f in blocks)
    decoded = dict(hpack.Decoder().decode(b"".join(f[3] for f in blocks)))
    assert decoded["big"] == big
    call.close()


async def test_settings_and_pings_from_the_server_are_acknowledged():
    call, transport = await started()
    call.data_received(h2.frame(h2.PING, 0, 0, b"12345678"))
    assert transport.of(h2.PING) == [(h2.PING, h2.ACK, 0, b"12345678")]
    assert [f[1] for f in transport.of(h2.SETTINGS)] == [0, h2.ACK]
    call.close()


# -- writing: windows and frame sizes ------------------------------------------------


def sent_data(transport: Transport) -> bytes:
    return b"".join(f[3] for f in transport.of(h2.DATA))


async def test_a_write_waits_for_the_streams_window_and_goes_on_after_window_update():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 10))
    message = bytes(range(20))
    write = asyncio.create_task(call.write(message))
    await until(lambda: len(sent_data(transport)) == 10, "the first 10 bytes")
    assert not write.done()  # waits: the stream's window is spent
    call.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 1, _U32.pack(10)))
    await until(lambda: len(sent_data(transport)) == 20, "10 more")
    call.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 1, _U32.pack(100)))
    await asyncio.wait_for(write, GUARD_S)
    assert sent_data(transport) == h2.grpc_frame(message)
    assert [len(f[3]) for f in transport.of(h2.DATA)] == [10, 10, 5]
    call.close()


async def test_a_write_waits_for_the_connections_window_too():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 1 << 20))
    message = b"m" * (h2.DEFAULT_WINDOW + 100)  # more than the connection's 65,535 bytes
    write = asyncio.create_task(call.write(message))
    await until(lambda: len(sent_data(transport)) == h2.DEFAULT_WINDOW, "the connection's window")
    assert not write.done()
    call.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 0, _U32.pack(1000)))
    await asyncio.wait_for(write, GUARD_S)
    assert sent_data(transport) == h2.grpc_frame(message)
    call.close()


async def test_a_new_initial_window_moves_the_streams_window_both_ways():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 10))
    await asyncio.wait_for(call.write(b"12345"), GUARD_S)  # 10 bytes framed: window 0
    call.data_received(settings((h2.S_INITIAL_WINDOW_SIZE, 5)))  # window now -5
    write = asyncio.create_task(call.write(b"abc"))
    call.data_received(settings((h2.S_INITIAL_WINDOW_SIZE, 12)))  # -5 + 7 = 2
    await until(lambda: len(sent_data(transport)) == 12, "two bytes")
    assert not write.done()
    call.data_received(settings((h2.S_INITIAL_WINDOW_SIZE, 100)))
    await asyncio.wait_for(write, GUARD_S)
    assert sent_data(transport) == h2.grpc_frame(b"12345") + h2.grpc_frame(b"abc")
    call.close()


async def test_data_frames_respect_the_peers_max_frame_size():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 1 << 20))
    call.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 0, _U32.pack(1 << 20)))
    message = b"z" * 40_000
    await asyncio.wait_for(call.write(message), GUARD_S)
    assert [len(f[3]) for f in transport.of(h2.DATA)] == [16_384, 16_384, 40_005 - 32_768]
    call.data_received(settings((h2.S_MAX_FRAME_SIZE, 32_768)))
    await asyncio.wait_for(call.write(message), GUARD_S)
    assert [len(f[3]) for f in transport.of(h2.DATA)][3:] == [32_768, 40_005 - 32_768]
    call.close()


async def test_a_write_that_finds_no_window_times_out_and_cancels_a_cut_message():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 3), write_timeout_s=0.01)
    with pytest.raises(TimeoutError, match="flow-control window"):
        await asyncio.wait_for(call.write(b"hello"), GUARD_S)
    # three bytes of the message went out: the stream cannot go on
    assert transport.of(h2.RST_STREAM) == [(h2.RST_STREAM, 0, 1, _U32.pack(h2.CANCEL))]
    result = await outcome(call)
    assert isinstance(result, RpcError) and result.status == GrpcStatus.CANCELLED


async def test_a_write_that_finds_no_window_before_sending_leaves_the_stream_usable():
    call, transport = await started((h2.S_INITIAL_WINDOW_SIZE, 0), write_timeout_s=0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call.write(b"hello"), GUARD_S)
    assert not call.done()
    call.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 1, _U32.pack(100)))
    await asyncio.wait_for(call.write(b"hello"), GUARD_S)
    assert sent_data(transport) == h2.grpc_frame(b"hello")
    call.close()


async def test_done_writing_ends_our_side_once_and_later_writes_are_refused():
    call, transport = await started()
    await call.done_writing()
    await call.done_writing()
    assert transport.of(h2.DATA) == [(h2.DATA, h2.END_STREAM, 1, b"")]
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(b"late")
    call.close()


# -- the answer ------------------------------------------------------------------------


async def test_an_ok_answer_with_padding_and_huffman_headers_is_the_response():
    call, transport = await started()
    enc = hpack.Encoder()  # Huffman and the dynamic table, as real servers use them
    body = h2.grpc_frame(b"answer")
    padded = bytes((4,)) + body + b"\0" * 4
    stream = (
        headers_frame(enc, RESPONSE_HEADERS)
        + h2.frame(h2.DATA, h2.PADDED, 1, padded)
        + trailers(enc)
    )
    for i in range(len(stream)):  # byte by byte: frames cut anywhere
        call.data_received(stream[i : i + 1])
    assert await outcome(call) == b"answer"
    assert call.done() and call.error() is None
    # the call is over: GOAWAY(NO_ERROR), then the connection closes
    (goaway,) = transport.of(h2.GOAWAY)
    assert _U32.unpack_from(goaway[3], 4)[0] == h2.NO_ERROR
    assert transport.closed


async def test_response_headers_continued_in_continuation_frames_are_decoded():
    call, _ = await started()
    enc = hpack.Encoder()
    block = enc.encode([*RESPONSE_HEADERS, ("x-long", "v" * 100)])
    call.data_received(
        h2.frame(h2.HEADERS, 0, 1, block[:10])
        + h2.frame(h2.CONTINUATION, 0, 1, block[10:20])
        + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[20:])
        + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"ok"))
        + trailers(enc)
    )
    assert await outcome(call) == b"ok"


async def test_a_trailers_only_error_carries_the_status_and_the_percent_decoded_message():
    call, _ = await started()
    enc = hpack.Encoder()
    call.data_received(
        headers_frame(
            enc,
            [
                *RESPONSE_HEADERS,
                ("grpc-status", "12"),
                ("grpc-message", "unknown method /x%20%C3%A9%"),
            ],
            end_stream=True,
        )
    )
    error = await outcome(call)
    assert isinstance(error, RpcError)
    assert (error.code(), int(error.code()), error.code().name) == (12, 12, "UNIMPLEMENTED")
    assert error.details() == "unknown method /x é%"  # a bad escape is kept
    assert grpcstream.describe_error(error) == "UNIMPLEMENTED: unknown method /x é%"


@pytest.mark.parametrize(
    ("http_status", "grpc_status"),
    [
        (400, GrpcStatus.INTERNAL),
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.UNIMPLEMENTED),
        (429, GrpcStatus.UNAVAILABLE),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.UNAVAILABLE),
        (500, GrpcStatus.UNKNOWN),
        (302, GrpcStatus.UNKNOWN),
    ],
)
async def test_an_http_status_other_than_200_maps_as_grpc_does(http_status, grpc_status):
    call, transport = await started()
    call.data_received(headers_frame(hpack.Encoder(), [(":status", str(http_status))]))
    error = await outcome(call)
    assert isinstance(error, RpcError)
    assert error.status == grpc_status and error.message == f"HTTP status {http_status}"
    assert transport.of(h2.RST_STREAM)  # the server had not ended its side: we reset it


async def test_an_informational_status_is_skipped():
    call, _ = await started()
    enc = hpack.Encoder()
    call.data_received(
        headers_frame(enc, [(":status", "100")])
        + headers_frame(enc, RESPONSE_HEADERS)
        + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"ok"))
        + trailers(enc)
    )
    assert await outcome(call) == b"ok"


@pytest.mark.parametrize(
    ("frames", "status", "message"),
    [
        (
            lambda enc: headers_frame(enc, [(":status", "200"), ("content-type", "text/html")]),
            GrpcStatus.UNKNOWN,
            "content-type text/html is not gRPC",
        ),
        (
            lambda enc: h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"x")),
            GrpcStatus.INTERNAL,
            "DATA before the response headers",
        ),
        (
            lambda enc: (
                headers_frame(enc, RESPONSE_HEADERS)
                + h2.frame(h2.DATA, h2.END_STREAM, 1, h2.grpc_frame(b"x"))
            ),
            GrpcStatus.INTERNAL,
            "the server ended the stream without trailers",
        ),
        (
            lambda enc: (
                headers_frame(enc, RESPONSE_HEADERS)
                + headers_frame(enc, [("x", "y")], end_stream=True)
            ),
            GrpcStatus.INTERNAL,
            "trailers without grpc-status",
        ),
        (
            lambda enc: headers_frame(enc, RESPONSE_HEADERS) + trailers(enc),
            GrpcStatus.INTERNAL,
            "0 messages in the response of a client-streaming call",
        ),
        (
            lambda enc: (
                headers_frame(enc, RESPONSE_HEADERS)
                + h2.frame(h2.DATA, 0, 1, b"\x01" + _U32.pack(1) + b"x")
                + trailers(enc)
            ),
            GrpcStatus.INTERNAL,
            "a compressed gRPC message, though we accept only identity",
        ),
        (
            lambda enc: (
                headers_frame(enc, RESPONSE_HEADERS)
                + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"abc")[:6])
                + trailers(enc)
            ),
            GrpcStatus.INTERNAL,
            "a cut gRPC message in the response",
        ),
        (
            lambda enc: headers_frame(enc, RESPONSE_HEADERS) + trailers(enc, 99, "odd"),
            GrpcStatus.UNKNOWN,
            "odd",
        ),
    ],
    ids=[
        "not-grpc",
        "data-first",
        "no-trailers",
        "no-grpc-status",
        "no-message",
        "compressed",
        "cut",
        "status-out-of-range",
    ],
)
async def test_answers_that_are_not_well_formed_fail_the_call(frames, status, message):
    call, _ = await started()
    call.data_received(frames(hpack.Encoder()))
    error = await outcome(call)
    assert isinstance(error, RpcError)
    assert (error.status, error.message) == (status, message)


async def test_a_response_over_the_limit_is_refused_and_the_stream_reset():
    call, transport = await started(max_response_bytes=100)
    enc = hpack.Encoder()
    call.data_received(
        headers_frame(enc, RESPONSE_HEADERS) + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"x" * 200))
    )
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.RESOURCE_EXHAUSTED
    assert transport.of(h2.RST_STREAM) == [(h2.RST_STREAM, 0, 1, _U32.pack(h2.CANCEL))]


async def test_our_receive_windows_are_given_back_as_the_answer_is_read():
    call, transport = await started(max_response_bytes=1 << 20)
    enc = hpack.Encoder()
    call.data_received(headers_frame(enc, RESPONSE_HEADERS))
    chunk = b"d" * 16_000
    for _ in range(8):  # 128,000 bytes: twice the default windows
        call.data_received(h2.frame(h2.DATA, 0, 1, chunk))
    assert not call.done()  # no flow-control error: the windows were given back
    updates = transport.of(h2.WINDOW_UPDATE)
    for stream_id in (0, 1):
        given = sum(_U32.unpack(f[3])[0] for f in updates if f[2] == stream_id)
        assert 128_000 - given < h2.DEFAULT_WINDOW
    call.close()


# -- the call ending otherwise ----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (h2.REFUSED_STREAM, GrpcStatus.UNAVAILABLE),
        (h2.CANCEL, GrpcStatus.CANCELLED),
        (h2.ENHANCE_YOUR_CALM, GrpcStatus.RESOURCE_EXHAUSTED),
        (h2.INADEQUATE_SECURITY, GrpcStatus.PERMISSION_DENIED),
        (h2.PROTOCOL_ERROR, GrpcStatus.INTERNAL),
        (h2.NO_ERROR, GrpcStatus.INTERNAL),
    ],
)
async def test_a_reset_stream_fails_with_the_status_its_code_maps_to(code, status):
    call, transport = await started()
    call.data_received(h2.frame(h2.RST_STREAM, 0, 1, _U32.pack(code)))
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == status
    assert not transport.of(h2.RST_STREAM)  # not answered with a reset of our own
    assert transport.closed


async def test_a_reset_after_the_trailers_changes_nothing():
    call, _ = await started()
    enc = hpack.Encoder()
    call.data_received(
        headers_frame(enc, RESPONSE_HEADERS)
        + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"ok"))
        + trailers(enc)
        + h2.frame(h2.RST_STREAM, 0, 1, _U32.pack(h2.NO_ERROR))
    )
    assert await outcome(call) == b"ok"


async def test_goaway_below_our_stream_fails_at_once_as_unavailable():
    call, _ = await started()
    call.data_received(h2.frame(h2.GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(h2.NO_ERROR) + b"bye"))
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNAVAILABLE
    assert "GOAWAY (code 0: bye)" in error.message


async def test_goaway_that_includes_our_stream_lets_it_finish():
    call, _ = await started()
    enc = hpack.Encoder()
    call.data_received(h2.frame(h2.GOAWAY, 0, 0, _U32.pack(1) + _U32.pack(h2.NO_ERROR)))
    await call.write(b"last")
    assert not call.done()
    call.data_received(
        headers_frame(enc, RESPONSE_HEADERS)
        + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"ok"))
        + trailers(enc)
    )
    assert await outcome(call) == b"ok"


async def test_the_connection_closing_after_goaway_names_it():
    call, _ = await started()
    call.data_received(
        h2.frame(
            h2.GOAWAY, 0, 0, _U32.pack(1) + _U32.pack(h2.ENHANCE_YOUR_CALM) + b"too_many_pings"
        )
    )
    call.connection_lost(None)
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNAVAILABLE
    assert error.message == "connection closed after GOAWAY (code 11: too_many_pings)"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (None, "the server closed the connection"),
        (ConnectionResetError(104, "reset"), "connection lost: [Errno 104] reset"),
    ],
)
async def test_a_connection_lost_mid_stream_is_unavailable(exc, message):
    call, _ = await started()
    await call.write(b"x")
    call.connection_lost(exc)
    error = await outcome(call)
    assert isinstance(error, RpcError) and (error.status, error.message) == (
        GrpcStatus.UNAVAILABLE,
        message,
    )
    with pytest.raises(RpcError):
        await call.write(b"y")  # the call's own error


async def test_eof_from_the_server_closes_our_side():
    call, _ = await started()
    assert call.eof_received() is False  # asyncio then closes the transport


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (h2.frame(h2.DATA, 0, 1, b"x" * 16_385), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.PING, 0, 0, b"short"), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR),
        (h2.frame(wire.PUSH_PROMISE, h2.END_HEADERS, 1, _U32.pack(2)), h2.PROTOCOL_ERROR),
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 3, b""), h2.PROTOCOL_ERROR),
        (h2.frame(h2.HEADERS, 0, 1, b"") + h2.frame(h2.PING, 0, 0, b"12345678"), h2.PROTOCOL_ERROR),
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff"), h2.COMPRESSION_ERROR),
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, _U32.pack(2**31 - 1)), h2.FLOW_CONTROL_ERROR),
        (settings((h2.S_MAX_FRAME_SIZE, 100)), h2.PROTOCOL_ERROR),
    ],
    ids=[
        "frame-too-large",
        "bad-ping",
        "settings-on-stream",
        "push",
        "other-stream",
        "not-continued",
        "hpack",
        "window-overflow",
        "small-max-frame",
    ],
)
async def test_a_protocol_error_by_the_server_is_goaway_and_internal(data, code):
    call, transport = await started()
    call.data_received(data)
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.INTERNAL
    assert error.message.startswith("HTTP/2 protocol error")
    (goaway,) = transport.of(h2.GOAWAY)
    assert _U32.unpack_from(goaway[3], 4)[0] == code
    assert transport.closed


async def test_unknown_frame_types_and_priority_are_ignored():
    call, _ = await started()
    enc = hpack.Encoder()
    call.data_received(
        h2.frame(0xFA, 0, 1, b"whatever")
        + h2.frame(wire.PRIORITY, 0, 1, b"\0" * 5)
        + headers_frame(enc, RESPONSE_HEADERS)
        + h2.frame(h2.DATA, 0, 1, h2.grpc_frame(b"ok"))
        + trailers(enc)
    )
    assert await outcome(call) == b"ok"


async def test_cancel_resets_the_stream_and_closes():
    call, transport = await started()
    assert call.cancel() is True
    assert transport.of(h2.RST_STREAM) == [(h2.RST_STREAM, 0, 1, _U32.pack(h2.CANCEL))]
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.CANCELLED
    assert call.done() and call.error() is error
    assert transport.closed
    assert call.cancel() is False  # over already
    await asyncio.wait_for(call.aclose(), GUARD_S)


async def test_the_context_manager_cancels_and_closes_whatever_happened():
    call, transport = await started()
    with pytest.raises(ValueError):
        async with call:
            raise ValueError("the caller failed")
    assert call.done() and transport.closed


# -- keepalive --------------------------------------------------------------------------


async def test_keepalive_pings_and_a_missing_ack_fails_the_call():
    call, transport = await started(keepalive_s=0.001, keepalive_timeout_s=0.01)
    await until(lambda: transport.of(h2.PING), "a keepalive PING")
    error = await outcome(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNAVAILABLE
    assert error.message == "keepalive: no PING ACK within 0.01 s"
    assert transport.aborted


async def test_keepalive_pings_at_most_twice_without_data_in_between():
    call, transport = await started(keepalive_s=0.001, keepalive_timeout_s=GUARD_S)

    def ack_pings() -> int:
        pings = [f for f in transport.of(h2.PING) if not f[1] & h2.ACK]
        call.data_received(h2.frame(h2.PING, h2.ACK, 0, pings[-1][3]))
        return len(pings)

    await until(lambda: transport.of(h2.PING), "the first PING")
    ack_pings()
    await until(lambda: len(transport.of(h2.PING)) == 2, "the second PING")
    ack_pings()
    await asyncio.sleep(0.05)  # ~50 keepalive periods: a grpcio server would count strikes
    assert len(transport.of(h2.PING)) == 2
    await call.write(b"data")
    await until(lambda: len(transport.of(h2.PING)) == 3, "a PING after data")
    call.close()


# -- errors, described -------------------------------------------------------------------


class _GrpcioLikeError(Exception):
    """Shaped as grpcio's AioRpcError: code() gives an enum member, details() a string."""

    def code(self):
        return GrpcStatus.DEADLINE_EXCEEDED

    def details(self):
        return "Deadline Exceeded"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (RpcError(14, "connection lost"), "UNAVAILABLE: connection lost"),
        (RpcError(77, "odd"), "UNKNOWN: odd"),
        (_GrpcioLikeError(), "DEADLINE_EXCEEDED: Deadline Exceeded"),
        (ConnectionError("the stream ended"), "ConnectionError: the stream ended"),
        (SystemExit(3), "SystemExit: 3"),  # a `code` that is not callable
    ],
)
def test_describe_error_reads_grpc_errors_of_either_client(exc, text):
    assert grpcstream.describe_error(exc) == text


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:8091", ("127.0.0.1", 8091)),
        ("[::1]:80", ("::1", 80)),
        ("svc.ns:1", ("svc.ns", 1)),
    ],
)
def test_split_target(target, expected):
    assert h2.split_target(target) == expected


@pytest.mark.parametrize("target", ["127.0.0.1", ":80", "host:0", "host:65536", "host:x"])
def test_split_target_refuses_what_is_not_host_port(target):
    with pytest.raises(ValueError, match="HOST:PORT"):
        h2.split_target(target)
