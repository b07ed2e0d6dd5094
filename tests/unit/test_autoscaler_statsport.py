"""The stats port's HTTP/2 and gRPC framing, driven byte by byte through a fake transport.

No sockets: each test feeds what a client would send to `StatsConnection.data_received`
and decodes what the connection wrote back (frames, HPACK with an independent decoder).
The real clients (grpcio, grpc-js, grpcurl) are in tests/integration.
"""

from __future__ import annotations

import struct

import hpack
import pytest
from helpers import FakeTransport, H2Peer, autoscaler_with_revision, grpc_frame, stats_request

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.autoscaler import statsport as sp
from ebb.autoscaler.server import AutoscalerServer
from ebb.autoscaler.settings import AutoscalerSettings
from ebb.common import h2frames as fr
from ebb.common import h2server

PATH = b"/ebb.api.autoscaler.v1.StatsService/StreamStats"


class Peer(H2Peer):
    """A client's side: builds frames, reads the connection's answers."""

    def headers(self, stream_id: int, path: bytes = PATH, *, end_stream: bool = False, **extra):
        fields = [
            (b":method", extra.pop("method", b"POST")),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"autoscaler"),
            (b"content-type", extra.pop("content_type", b"application/grpc")),
            (b"te", b"trailers"),
            *((k.replace("_", "-").encode(), v) for k, v in extra.items()),
        ]
        flags = fr.END_HEADERS | (fr.END_STREAM if end_stream else 0)
        return fr.frame(fr.HEADERS, flags, stream_id, self.encoder.encode(fields))


def stat_message(*stats: tuple[str, float], revision: str = "rev-1") -> bytes:
    return grpc_frame(stats_request(*stats, revision=revision))


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return fr.frame(fr.DATA, fr.END_STREAM if end_stream else 0, stream_id, payload)


@pytest.fixture
async def peer() -> Peer:
    port = sp.StatsPort(autoscaler_with_revision())
    conn = sp.StatsConnection(port)
    transport = FakeTransport()
    conn.connection_made(transport)
    client = Peer(conn, transport)
    opening = client.frames()
    assert [f[0] for f in opening] == [fr.SETTINGS, fr.WINDOW_UPDATE]
    settings = dict(struct.iter_unpack(">HI", opening[0][3]))
    assert settings[fr.S_INITIAL_WINDOW_SIZE] == h2server.WINDOW
    assert struct.unpack(">I", opening[1][3])[0] == h2server.WINDOW - fr.DEFAULT_WINDOW
    client.send(fr.PREFACE + fr.frame(fr.SETTINGS, 0, 0))
    assert client.frames() == [(fr.SETTINGS, fr.ACK, 0, b"")]
    yield client
    conn.connection_lost(None)


def accepted(owner: AutoscalerServer) -> int:
    return owner.scaler.collector.accepted


def answer(client: Peer, frames) -> tuple[dict, pb.StreamStatsResponse | None, dict]:
    """(response headers, response message, trailers) of one answered stream."""
    kinds = [f[0] for f in frames]
    assert kinds == [fr.HEADERS, fr.DATA, fr.HEADERS], frames
    head, body, tail = frames
    assert tail[1] & fr.END_STREAM
    assert body[3][0] == 0 and struct.unpack(">I", body[3][1:5])[0] == len(body[3]) - 5
    return (
        client.decode(head[3]),
        pb.StreamStatsResponse.FromString(body[3][5:]),
        client.decode(tail[3]),
    )


async def test_a_stream_is_read_and_answered_with_its_totals(peer):
    owner = peer.conn._owner
    two = stat_message(("a", 1.0)) + stat_message(("b", 2.0))  # two messages, one frame
    split = stat_message(("c", 3.0), ("d", 4.0))  # one message over three frames
    peer.send(peer.headers(1) + data(1, two))
    peer.send(data(1, split[:3]) + data(1, split[3:20]))
    assert accepted(owner) == 2  # the split message is not whole yet
    padded = b"\x04" + stat_message(("e", 5.0), revision="unknown") + b"\0" * 4
    peer.send(data(1, split[20:]) + fr.frame(fr.DATA, fr.PADDED, 1, padded))
    assert accepted(owner) == 4
    peer.send(data(1, b"", end_stream=True))
    head, response, trailers = answer(peer, peer.frames())
    assert head[b":status"] == b"200" and head[b"content-type"] == b"application/grpc"
    assert (response.accepted, response.dropped) == (4, 1)  # "unknown" is not registered
    assert trailers == {b"grpc-status": b"0"}
    assert not peer.conn.streams


async def test_fed_one_byte_at_a_time_the_same_happens(peer):
    owner = peer.conn._owner
    wire = peer.headers(3) + data(3, stat_message(("a", 1.0)) * 3, end_stream=True)
    for i in range(len(wire)):
        peer.send(wire[i : i + 1])
    _, response, trailers = answer(peer, peer.frames())
    assert response.accepted == 3 and accepted(owner) == 3
    assert trailers[b"grpc-status"] == b"0"


async def test_undecodable_message_is_counted_and_the_stream_goes_on(peer):
    owner = peer.conn._owner
    peer.send(peer.headers(1) + data(1, grpc_frame(b"\xff\xff\xff") + stat_message(("a", 1.0))))
    peer.send(data(1, b"", end_stream=True))
    _, response, _ = answer(peer, peer.frames())
    assert (response.accepted, response.dropped) == (1, 1)
    assert owner.scaler.collector.dropped["undecodable"] == 1


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        (
            {"path": b"/ebb.api.autoscaler.v1.ScalingService/WatchDecisions"},
            b"12",
            b"unknown method",
        ),
        ({"grpc_encoding": b"gzip"}, b"12", b"grpc-encoding gzip"),
    ],
)
async def test_other_calls_get_a_grpc_error_and_the_header_table_stays_in_step(
    peer, headers, status, message
):
    path = headers.pop("path", PATH)
    peer.send(peer.headers(1, path, **headers))
    (head, reset) = peer.frames()
    assert head[0] == fr.HEADERS and head[1] & fr.END_STREAM  # trailers-only
    fields = peer.decode(head[3])
    assert fields[b"grpc-status"] == status and message in fields[b"grpc-message"]
    assert reset[:3] == (fr.RST_STREAM, 0, 1) and reset[3] == struct.pack(">I", fr.NO_ERROR)
    # The refused block's headers went into both dynamic tables; the next stream's block
    # refers to them by index and must still decode.
    peer.send(peer.headers(3) + data(3, stat_message(("a", 1.0)), end_stream=True))
    _, response, _ = answer(peer, peer.frames())
    assert response.accepted == 1


@pytest.mark.parametrize(
    ("extra", "status"),
    [({"method": b"GET"}, b"405"), ({"content_type": b"application/json"}, b"415")],
)
async def test_requests_that_are_not_grpc_get_an_http_status(peer, extra, status):
    peer.send(peer.headers(1, end_stream=True, **extra))
    (head,) = peer.frames()
    assert head[1] & fr.END_STREAM and peer.decode(head[3]) == {b":status": status}
    assert peer.conn._port.counters[f"http_{status.decode()}"] == 1


async def test_compressed_and_oversized_messages_end_the_stream(peer):
    peer.send(peer.headers(1) + data(1, grpc_frame(b"xx", compressed=1)))
    head, reset = peer.frames()
    assert peer.decode(head[3])[b"grpc-status"] == str(h2server.GRPC_INTERNAL).encode()
    assert reset[0] == fr.RST_STREAM
    # Late DATA for that stream is ignored, the connection stays.
    peer.send(data(1, stat_message(("a", 1.0))))
    assert peer.frames() == [] and not peer.transport.closed
    too_big = b"\0" + struct.pack(">I", fr.MAX_MESSAGE_BYTES + 1)
    peer.send(peer.headers(3) + data(3, too_big))
    head, _ = peer.frames()
    assert peer.decode(head[3])[b"grpc-status"] == str(h2server.GRPC_RESOURCE_EXHAUSTED).encode()
    assert not peer.conn.streams and accepted(peer.conn._owner) == 0


async def test_a_stream_ended_inside_a_message_is_an_error(peer):
    peer.send(peer.headers(1) + data(1, stat_message(("a", 1.0))[:7], end_stream=True))
    (head,) = peer.frames()  # the client is done sending: no reset needed
    assert peer.decode(head[3])[b"grpc-status"] == str(h2server.GRPC_INTERNAL).encode()


async def test_ping_is_answered_and_unknown_frames_and_priority_are_ignored(peer):
    peer.send(fr.frame(fr.PING, 0, 0, b"12345678") + fr.frame(fr.PING, fr.ACK, 0, b"abcdefgh"))
    peer.send(fr.frame(0x42, 0, 0, b"whatever") + fr.frame(fr.PRIORITY, 0, 1, b"\0" * 5))
    assert peer.frames() == [(fr.PING, fr.ACK, 0, b"12345678")]
    assert not peer.transport.closed


async def test_headers_split_over_continuation_frames(peer):
    block = peer.headers(1)[9:]
    peer.send(fr.frame(fr.HEADERS, 0, 1, block[:5]) + fr.frame(fr.CONTINUATION, 0, 1, block[5:9]))
    peer.send(fr.frame(fr.CONTINUATION, fr.END_HEADERS, 1, block[9:]))
    peer.send(data(1, stat_message(("a", 1.0)), end_stream=True))
    _, response, _ = answer(peer, peer.frames())
    assert response.accepted == 1


def goaway(peer: Peer) -> tuple[int, int]:
    frames = peer.frames()
    assert frames[-1][0] == fr.GOAWAY and peer.transport.closed, frames
    last_stream, code = struct.unpack_from(">II", frames[-1][3])
    return last_stream, code


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (fr.frame(fr.DATA, 0, 0, b"x"), fr.PROTOCOL_ERROR),  # DATA on stream 0
        (fr.frame(fr.DATA, 0, 7, b"x"), fr.PROTOCOL_ERROR),  # a stream never opened
        (fr.frame(fr.HEADERS, fr.END_HEADERS, 2, b"\x82"), fr.PROTOCOL_ERROR),  # even id
        (fr.frame(fr.HEADERS, fr.END_HEADERS, 1, b"\xff\xff\xff\xff"), fr.COMPRESSION_ERROR),
        (
            fr.frame(fr.HEADERS, 0, 1, b"\x82") + fr.frame(fr.PING, 0, 0, b"12345678"),
            fr.PROTOCOL_ERROR,
        ),
        (fr.frame(fr.CONTINUATION, fr.END_HEADERS, 1, b"\x82"), fr.PROTOCOL_ERROR),
        (fr.frame(fr.PUSH_PROMISE, fr.END_HEADERS, 1, b"\0\0\0\2"), fr.PROTOCOL_ERROR),
        (fr.frame(fr.PING, 0, 0, b"short"), fr.FRAME_SIZE_ERROR),
        (fr.frame(fr.SETTINGS, 0, 0, b"\0\4\x80\0\0\0"), fr.FLOW_CONTROL_ERROR),  # window 2^31
        (fr.frame(fr.SETTINGS, 0, 0, b"\0\5\0\0\0\1"), fr.PROTOCOL_ERROR),  # MAX_FRAME_SIZE 1
        (fr.frame(fr.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), fr.PROTOCOL_ERROR),
        (fr.frame(fr.RST_STREAM, 0, 9, b"\0\0\0\0"), fr.PROTOCOL_ERROR),  # idle stream
        (struct.pack(">BHBBI", 0, fr.MAX_FRAME_SIZE + 1, fr.DATA, 0, 1), fr.FRAME_SIZE_ERROR),
    ],
)
async def test_connection_errors_say_goaway_and_close(peer, wire, code):
    peer.send(wire)
    assert goaway(peer) == (0, code)
    assert peer.conn._port.counters[f"goaway_{fr.ERROR_NAMES[code]}"] == 1


async def test_not_http2_is_refused():
    port = sp.StatsPort(AutoscalerServer(AutoscalerSettings(), clock=lambda: 0.0))
    conn, transport = sp.StatsConnection(port), FakeTransport()
    conn.connection_made(transport)
    client = Peer(conn, transport)
    client.frames()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert goaway(client) == (0, fr.PROTOCOL_ERROR)


async def test_windows_are_given_back_as_data_is_read(peer):
    # Messages of ~16 KB, one a frame; the window comes back once half of it is read.
    request = pb.StreamStatsRequest()
    for i in range(160):
        request.stats.add(instance=f"i{i:03d}" + "x" * 80, period_seconds=1)
    message = grpc_frame(request.SerializeToString())
    assert 15_000 < len(message) <= fr.MAX_FRAME_SIZE
    peer.send(peer.headers(1))
    per_frame = data(1, message)
    frames_to_half = -(-(h2server.WINDOW // 2) // len(message))
    peer.send(per_frame * (frames_to_half - 1))
    assert peer.frames() == []
    peer.send(per_frame)
    updates = peer.frames()
    assert sorted(f[2] for f in updates) == [0, 1] and {f[0] for f in updates} == {fr.WINDOW_UPDATE}
    assert all(struct.unpack(">I", f[3])[0] == frames_to_half * len(message) for f in updates)


async def test_an_answer_waits_for_the_peers_window(peer):
    peer.send(fr.frame(fr.SETTINGS, 0, 0, struct.pack(">HI", fr.S_INITIAL_WINDOW_SIZE, 0)))
    assert peer.frames() == [(fr.SETTINGS, fr.ACK, 0, b"")]
    peer.send(peer.headers(1) + data(1, stat_message(("a", 1.0)), end_stream=True))
    assert peer.frames() == []  # the answer's DATA does not fit a zero window
    peer.send(fr.frame(fr.WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    _, response, _ = answer(peer, peer.frames())
    assert response.accepted == 1


async def test_client_reset_drops_the_stream_without_an_answer(peer):
    peer.send(peer.headers(1) + data(1, stat_message(("a", 1.0))))
    peer.send(fr.frame(fr.RST_STREAM, 0, 1, struct.pack(">I", 8)))  # CANCEL
    assert peer.frames() == [] and not peer.conn.streams
    assert accepted(peer.conn._owner) == 1  # what arrived before the reset counts


async def test_data_after_the_client_ended_its_side_is_stream_closed(peer):
    peer.send(fr.frame(fr.SETTINGS, 0, 0, struct.pack(">HI", fr.S_INITIAL_WINDOW_SIZE, 0)))
    peer.frames()
    peer.send(peer.headers(1) + data(1, b"", end_stream=True))  # answer held: no window
    peer.send(data(1, stat_message(("a", 1.0))))
    (reset,) = peer.frames()
    assert reset[:3] == (fr.RST_STREAM, 0, 1)
    assert struct.unpack(">I", reset[3])[0] == fr.STREAM_CLOSED


async def test_after_the_clients_goaway_new_streams_are_refused(peer):
    peer.send(fr.frame(fr.GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    peer.send(peer.headers(1))
    (reset,) = peer.frames()
    assert reset[0] == fr.RST_STREAM and struct.unpack(">I", reset[3])[0] == fr.REFUSED_STREAM


async def test_shut_down_answers_open_streams_then_says_goaway(peer):
    peer.send(peer.headers(1) + data(1, stat_message(("a", 1.0))))
    peer.send(peer.headers(3) + data(3, stat_message(("b", 1.0))[:4]))  # mid-message
    peer.conn.shut_down()
    frames = peer.frames()
    _, response, trailers = answer(peer, frames[:3])
    assert response.accepted == 1 and trailers[b"grpc-status"] == b"0"
    assert frames[3][:3] == (fr.RST_STREAM, 0, 1)  # the client had not ended its side
    assert frames[4][:3] == (fr.RST_STREAM, 0, 3)  # stream 3 cannot be answered whole
    assert frames[5][0] == fr.GOAWAY and struct.unpack(">II", frames[5][3][:8]) == (3, 0)
    assert peer.transport.closed


async def test_a_connection_that_never_speaks_is_closed(monkeypatch):
    monkeypatch.setattr(h2server, "PREFACE_TIMEOUT_S", 0.01)
    port = sp.StatsPort(AutoscalerServer(AutoscalerSettings(), clock=lambda: 0.0))
    conn, transport = sp.StatsConnection(port), FakeTransport()
    conn.connection_made(transport)
    import asyncio

    for _ in range(100):
        if transport.closed:
            break
        await asyncio.sleep(0.01)
    assert transport.closed and port.counters["no_preface"] == 1


@pytest.mark.parametrize(
    ("text", "encoded"),
    [("plain text", b"plain text"), ("100% é\n", b"100%25 %C3%A9%0A")],
)
def test_grpc_message_is_percent_encoded(text, encoded):
    assert fr.grpc_message(text) == encoded


@pytest.mark.parametrize("size", [0, 126, 127, 128, 300, 16_384])
def test_header_lengths_decode_with_an_independent_hpack(size):
    value = b"v" * size
    block = fr.encode_headers([(b":status", b"200"), (b"x-long", value)])
    assert hpack.Decoder().decode(block, raw=True) == [(b":status", b"200"), (b"x-long", value)]


async def test_bytes_held_in_unfinished_messages_are_bounded(peer, monkeypatch):
    monkeypatch.setattr(h2server, "MAX_HELD_BYTES", 10_000)
    start = b"\0" + struct.pack(">I", 1_000_000)  # a message announced, never finished
    for stream_id in (1, 3):
        peer.send(peer.headers(stream_id) + data(stream_id, start + b"x" * 4_000))
    assert not peer.transport.closed and peer.conn._held == 2 * 4_005
    peer.send(fr.frame(fr.RST_STREAM, 0, 3, struct.pack(">I", 8)))  # its bytes are let go
    assert peer.conn._held == 4_005
    peer.send(data(1, b"x" * 3_000) + peer.headers(5) + data(5, start + b"x" * 3_000))
    assert goaway(peer) == (5, fr.ENHANCE_YOUR_CALM)


async def test_a_peer_that_does_not_read_is_not_read_either(peer):
    # The transport calls pause_writing past its high-water mark: PINGs from a client that
    # never reads the ACKs would otherwise grow the write buffer without bound.
    peer.conn.pause_writing()
    assert not peer.transport.reading
    peer.conn.resume_writing()
    assert peer.transport.reading


class RecordingTracing:
    """Stands in for `ebb.common.tracing.Tracing`: records the spans the port opens."""

    enabled = True

    def __init__(self) -> None:
        self.started: list[tuple[str, bytes | None, dict]] = []
        self.ended: list[tuple[object, str | None]] = []

    def start_http_span(self, name, *, traceparent=None, tracestate=None, attributes=None):
        self.started.append((name, traceparent, dict(attributes or {})))
        return len(self.started)

    def end_http_span(self, span, status_code=None, error=None) -> None:
        self.ended.append((span, error))


async def test_each_stream_is_one_span_continuing_the_callers_trace():
    tracing = RecordingTracing()
    port = sp.StatsPort(autoscaler_with_revision(), tracing)
    conn, transport = sp.StatsConnection(port), FakeTransport()
    conn.connection_made(transport)
    client = Peer(conn, transport)
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.send(fr.PREFACE + fr.frame(fr.SETTINGS, 0, 0))
    client.send(client.headers(1, traceparent=parent) + data(1, stat_message(("a", 1.0))))
    client.send(client.headers(3) + fr.frame(fr.RST_STREAM, 0, 3, struct.pack(">I", 8)))
    client.send(data(1, b"", end_stream=True))
    name, traceparent, attributes = tracing.started[0]
    assert name == "/ebb.api.autoscaler.v1.StatsService/StreamStats" and traceparent == parent
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "ebb.api.autoscaler.v1.StatsService",
        "rpc.method": "StreamStats",
    }
    assert tracing.started[1][1] is None  # no traceparent: a new trace
    assert tracing.ended == [(2, "cancelled by the client"), (1, None)]
