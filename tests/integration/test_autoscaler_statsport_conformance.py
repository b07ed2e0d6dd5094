"""The stats port (`ebb.autoscaler.statsport`) over real TCP: RFC 9113's rules, as h2spec
checks them, and gRPC's, with `h2` as a strict client and raw frames where `h2` refuses to
send something invalid; then grpcio and the queue's reporter.

The last tests are for defects a review found, each fixed: answers waiting for window
without bound, SETTINGS and large messages that cost the loop in proportion to the streams
or the message, oversized error frames, a reused stream id, a peer that never reads. No
test asserts a timing; every wait is a hang guard that ends as soon as its event happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from helpers import autoscaler_with_revision, grpc_frame, stats_request, until

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.autoscaler import statsport as sp
from ebb.autoscaler.server import AutoscalerServer
from ebb.common import h2frames as fr
from ebb.common import h2server as h2s
from ebb.queue.reporter import Reporter
from ebb.queue.stats import ConcurrencyStats

PATH = b"/ebb.api.autoscaler.v1.StatsService/StreamStats"
WAIT_S = 10.0  # hang guard only
FENCE = b"fence!!!"  # a PING's payload: its ACK means every frame before it was handled


class Stats:
    def __init__(self, owner: AutoscalerServer, port: sp.StatsPort) -> None:
        self.owner = owner
        self.port = port

    @property
    def address(self) -> str:
        return self.port.address

    @property
    def accepted(self) -> int:
        return self.owner.scaler.collector.accepted


@pytest.fixture
async def stats():
    port = sp.StatsPort(autoscaler_with_revision())
    await port.start("127.0.0.1", 0)
    try:
        yield Stats(port.owner, port)
    finally:
        await asyncio.wait_for(port.close(), WAIT_S)


def stat_message(*instances: str, revision: str = "rev-1") -> bytes:
    stats = [(instance, 1.0) for instance in instances]
    return grpc_frame(stats_request(*stats, revision=revision))


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return fr.frame(kind, flags, stream_id, payload)


def ping(payload: bytes = FENCE) -> bytes:
    return frame(fr.PING, 0, 0, payload)


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(fr.SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def request_fields(path: bytes = PATH) -> list[tuple[bytes, bytes]]:
    """A gRPC request's headers, as grpcio sends them."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"autoscaler"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


class _Connected:
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class Wire(_Connected):
    """A client of raw frames: it sends what `h2` would refuse to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    @classmethod
    async def connect(cls, address: str, *, preface: bool = True) -> Wire:
        host, port = address.rsplit(":", 1)
        wire = cls(*await asyncio.open_connection(host, int(port)))
        if preface:
            wire.send(fr.PREFACE + settings())
            # The server's SETTINGS and WINDOW_UPDATE, then the ACK of ours.
            opening = [await wire.frame() for _ in range(3)]
            assert [f[0] for f in opening] == [fr.SETTINGS, fr.WINDOW_UPDATE, fr.SETTINGS]
        return wire

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def block(self, path: bytes = PATH, *extra: tuple[bytes, bytes]) -> bytes:
        return self.encoder.encode([*request_fields(path), *extra])

    def headers(self, stream_id: int, *, end_stream: bool = False) -> bytes:
        flags = fr.END_HEADERS | (fr.END_STREAM if end_stream else 0)
        return frame(fr.HEADERS, flags, stream_id, self.block())

    async def frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None at EOF."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), WAIT_S)
            high, low, kind, flags, stream_id = struct.unpack(">BHBBI", head)
            payload = await asyncio.wait_for(self.reader.readexactly(high << 16 | low), WAIT_S)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        return kind, flags, stream_id, payload

    async def fenced(self, data: bytes = b"") -> list[tuple[int, int, int, bytes]]:
        """Send `data` and a PING; the frames answered before the PING's ACK (or up to a
        GOAWAY and EOF)."""
        self.send(data + ping())
        out = []
        while (got := await self.frame()) is not None:
            if got[:2] == (fr.PING, fr.ACK) and got[3] == FENCE:
                return out
            out.append(got)
        return out

    async def goaway(self, data: bytes = b"") -> tuple[int, int]:
        """Send `data`; the (last stream, error code) of the GOAWAY it earns, then EOF. (No
        PING after it: bytes the server never reads would make its close a TCP reset.)"""
        self.send(data)
        frames = []
        while (got := await self.frame()) is not None:
            frames.append(got)
        assert frames and frames[-1][0] == fr.GOAWAY, frames
        return struct.unpack(">II", frames[-1][3][:8])

    def decode(self, payload: bytes) -> dict[bytes, bytes]:
        return dict(self.decoder.decode(payload, raw=True))


@pytest.fixture
async def wires(stats):
    opened: list[Wire] = []

    async def connect(**kwargs) -> Wire:
        wire = await Wire.connect(stats.address, **kwargs)
        opened.append(wire)
        return wire

    try:
        yield connect
    finally:
        for wire in opened:
            await wire.close()


class H2Client(_Connected):
    """`h2` as a client: it validates every frame and header block the server sends."""

    def __init__(self, reader, writer) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()
        self.events: dict[int, list] = {}

    @classmethod
    async def connect(cls, address: str) -> H2Client:
        host, port = address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def start(self, path: bytes = PATH, *extra: tuple[bytes, bytes], end_stream=False) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = request_fields(path)
        replaced = dict(extra)
        fields = [(k, replaced.pop(k, v)) for k, v in fields] + list(replaced.items())
        self.conn.send_headers(stream_id, fields, end_stream=end_stream)
        self.flush()
        return stream_id

    async def finish(self, stream_id: int) -> tuple[dict, bytes, dict]:
        """(response headers, response body, trailers) once the stream ends or is reset;
        a trailers-only answer has an empty body and its fields in both dicts."""
        async with asyncio.timeout(WAIT_S):
            while not any(
                isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                for e in self.events.get(stream_id, ())
            ):
                data = await self.reader.read(65536)
                assert data, "connection closed"
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    sid = getattr(event, "stream_id", None)
                    if sid:
                        self.events.setdefault(sid, []).append(event)
                self.flush()
        head, body, tail = {}, b"", {}
        for event in self.events[stream_id]:
            if isinstance(event, h2.events.ResponseReceived):
                head = dict(event.headers)
                tail = head if event.stream_ended is not None else tail
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.TrailersReceived):
                tail = dict(event.headers)
        return head, body, tail


@pytest.fixture
async def h2client(stats):
    client = await H2Client.connect(stats.address)
    try:
        yield client
    finally:
        await client.close()


def response_of(body: bytes) -> pb.StreamStatsResponse:
    assert body[0] == 0 and struct.unpack(">I", body[1:5])[0] == len(body) - 5
    return pb.StreamStatsResponse.FromString(body[5:])


# -- conformance that holds -----------------------------------------------------------


async def test_messages_split_at_every_byte_boundary_padded_or_not_with_or_without_trailers(
    stats, h2client
):
    # Three messages: one stat, an empty request (a zero-length message), two stats.
    wire = stat_message("a") + grpc_frame(b"") + stat_message("b", "c")
    for cut in range(1, len(wire)):
        sid = h2client.start()
        h2client.conn.send_data(sid, wire[:cut], pad_length=cut % 7 or None)
        if cut % 2:
            h2client.conn.send_data(sid, wire[cut:])
            h2client.conn.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
        else:
            h2client.conn.send_data(sid, wire[cut:], end_stream=True)
        h2client.flush()
        head, body, tail = await h2client.finish(sid)
        assert head[b":status"] == b"200" and tail == {b"grpc-status": b"0"}
        assert (response_of(body).accepted, response_of(body).dropped) == (3, 0)
    assert stats.accepted == 3 * (len(wire) - 1)


@pytest.mark.parametrize(
    ("extra", "data", "expect"),
    [
        ([(b":path", b"/ebb.api.autoscaler.v1.ScalingService/X")], b"", b"12"),
        ([(b"grpc-encoding", b"gzip")], b"", b"12"),
        ([], grpc_frame(b"\x08\x01", compressed=1), b"13"),  # compressed, no grpc-encoding
        ([], b"\0" + struct.pack(">I", fr.MAX_MESSAGE_BYTES + 1), b"8"),
        ([], stat_message("a")[:7], b"13"),  # the stream ends inside a message
        ([(b":method", b"GET")], b"", b"405"),
        ([(b"content-type", b"application/json")], b"", b"415"),
    ],
)
async def test_refusals_are_answers_a_strict_client_accepts(h2client, extra, data, expect):
    sid = h2client.start(PATH, *extra)
    h2client.conn.send_data(sid, data, end_stream=True)
    h2client.flush()
    head, body, tail = await h2client.finish(sid)
    assert body == b""
    if expect in (b"405", b"415"):
        assert head[b":status"] == expect
    else:
        assert head[b":status"] == b"200" and tail[b"grpc-status"] == expect
    # The connection serves on, its HPACK tables in step.
    sid = h2client.start()
    h2client.conn.send_data(sid, stat_message("z"), end_stream=True)
    h2client.flush()
    assert response_of((await h2client.finish(sid))[1]).accepted == 1


def _bomb(wire: Wire) -> bytes:
    # A 4 KB field in the dynamic table, then a block naming it 5,000 times (~20 MB).
    first = frame(fr.HEADERS, fr.END_HEADERS, 1, hpack.Encoder().encode([(b"x-big", b"v" * 4000)]))
    return first + frame(fr.HEADERS, fr.END_HEADERS, 3, b"\xbe" * 5000)


@pytest.mark.parametrize(
    ("name", "build", "code"),
    [
        (
            "frame over MAX_FRAME_SIZE",
            lambda w: struct.pack(">BHBBI", 0, 16_385, 0x42, 0, 0),
            fr.FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS ACK with a payload",
            lambda w: frame(fr.SETTINGS, fr.ACK, 0, b"\0" * 6),
            fr.FRAME_SIZE_ERROR,
        ),
        ("SETTINGS of 5 bytes", lambda w: frame(fr.SETTINGS, 0, 0, b"\0" * 5), fr.FRAME_SIZE_ERROR),
        ("SETTINGS on a stream", lambda w: frame(fr.SETTINGS, 0, 1), fr.PROTOCOL_ERROR),
        (
            "INITIAL_WINDOW_SIZE 2^31",
            lambda w: settings((fr.S_INITIAL_WINDOW_SIZE, 2**31)),
            fr.FLOW_CONTROL_ERROR,
        ),
        (
            "MAX_FRAME_SIZE 16383",
            lambda w: settings((fr.S_MAX_FRAME_SIZE, 16_383)),
            fr.PROTOCOL_ERROR,
        ),
        ("ENABLE_PUSH 2", lambda w: settings((fr.S_ENABLE_PUSH, 2)), fr.PROTOCOL_ERROR),
        ("PING of 7 bytes", lambda w: frame(fr.PING, 0, 0, b"x" * 7), fr.FRAME_SIZE_ERROR),
        ("PING on a stream", lambda w: frame(fr.PING, 0, 1, b"x" * 8), fr.PROTOCOL_ERROR),
        ("GOAWAY on a stream", lambda w: frame(fr.GOAWAY, 0, 1, b"\0" * 8), fr.PROTOCOL_ERROR),
        ("WINDOW_UPDATE 0", lambda w: frame(fr.WINDOW_UPDATE, 0, 0, b"\0" * 4), fr.PROTOCOL_ERROR),
        (
            "WINDOW_UPDATE of 3 bytes",
            lambda w: frame(fr.WINDOW_UPDATE, 0, 0, b"\0\0\1"),
            fr.FRAME_SIZE_ERROR,
        ),
        (
            "connection window past 2^31-1",
            lambda w: frame(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)),
            fr.FLOW_CONTROL_ERROR,
        ),
        ("DATA on stream 0", lambda w: frame(fr.DATA, 0, 0, b"x"), fr.PROTOCOL_ERROR),
        ("DATA on an idle stream", lambda w: frame(fr.DATA, 0, 5, b"x"), fr.PROTOCOL_ERROR),
        (
            "HEADERS on stream 0",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS, 0, w.block()),
            fr.PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even stream",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS, 2, w.block()),
            fr.PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            lambda w: frame(fr.RST_STREAM, 0, 1, b"\0" * 4),
            fr.PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM of 3 bytes",
            lambda w: w.headers(1) + frame(fr.RST_STREAM, 0, 1, b"\0" * 3),
            fr.FRAME_SIZE_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            lambda w: frame(fr.PUSH_PROMISE, fr.END_HEADERS, 1, b"\0\0\0\2"),
            fr.PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            lambda w: frame(fr.CONTINUATION, fr.END_HEADERS, 1, b"\x82"),
            fr.PROTOCOL_ERROR,
        ),
        (
            "header block cut by a PING",
            lambda w: frame(fr.HEADERS, 0, 1, w.block()[:3]) + ping(b"12345678"),
            fr.PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION on another stream",
            lambda w: (
                frame(fr.HEADERS, 0, 1, w.block()[:3])
                + frame(fr.CONTINUATION, fr.END_HEADERS, 3, b"")
            ),
            fr.PROTOCOL_ERROR,
        ),
        (
            "header block over 32 KiB",
            lambda w: (
                frame(fr.HEADERS, 0, 1, b"\0" * 16_384)
                + frame(fr.CONTINUATION, 0, 1, b"\0" * 16_384) * 2
            ),
            fr.ENHANCE_YOUR_CALM,
        ),
        (
            "HPACK index past the tables",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS, 1, b"\xff\x80\x01"),
            fr.COMPRESSION_ERROR,
        ),
        (
            "HPACK table size over 4096",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS, 1, b"\x3f\xe2\x1f" + w.block()),
            fr.COMPRESSION_ERROR,
        ),
        (
            "HPACK table size update after a field",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS, 1, w.block() + b"\x20"),
            fr.COMPRESSION_ERROR,
        ),
        ("header list over MAX_HEADER_LIST_SIZE", _bomb, fr.COMPRESSION_ERROR),
        (
            "DATA padding as long as the frame",
            lambda w: w.headers(1) + frame(fr.DATA, fr.PADDED, 1, b"\x04abc"),
            fr.PROTOCOL_ERROR,
        ),
        (
            "HEADERS padding as long as the frame",
            lambda w: frame(fr.HEADERS, fr.END_HEADERS | fr.PADDED, 1, b"\x09" + b"\0" * 8),
            fr.PROTOCOL_ERROR,
        ),
    ],
)
async def test_connection_errors_are_goaway_with_the_rfcs_code_then_close(
    stats, wires, name, build, code
):
    wire = await wires()
    _, got = await wire.goaway(build(wire))
    assert got == code, name
    assert stats.port.counters[f"goaway_{fr.ERROR_NAMES[code]}"] == 1
    await until(lambda: not stats.port.connections, "the connection to be dropped")


async def test_a_connection_that_is_not_http2_is_refused(stats, wires):
    wire = await wires(preface=False)
    wire.send(b"GET / HTTP/1.1\r\nHost: autoscaler\r\n\r\n")
    frames = []
    while (got := await wire.frame()) is not None:
        frames.append(got)
    assert frames[-1][0] == fr.GOAWAY
    assert struct.unpack(">II", frames[-1][3][:8]) == (0, fr.PROTOCOL_ERROR)


async def test_stream_errors_reset_the_stream_and_the_connection_serves_on(stats, wires):
    wire = await wires()
    # No window for answers, so stream 5's answer waits and stream 5 stays half-closed.
    assert await wire.fenced(settings((fr.S_INITIAL_WINDOW_SIZE, 0))) == [
        (fr.SETTINGS, fr.ACK, 0, b"")
    ]
    increment = struct.pack(">I", 2**31 - 1)
    frames = await wire.fenced(
        wire.headers(1)
        + frame(fr.WINDOW_UPDATE, 0, 1, b"\0\0\0\0")  # §6.9: 0 on a stream
        + wire.headers(3)
        + frame(fr.WINDOW_UPDATE, 0, 3, increment)
        + frame(fr.WINDOW_UPDATE, 0, 3, increment)  # §6.9.1: the stream window overflows
        + wire.headers(5, end_stream=True)
        + frame(fr.DATA, 0, 5, stat_message("a"))  # §5.1: DATA on half-closed (remote)
    )
    resets = [(f[2], struct.unpack(">I", f[3])[0]) for f in frames if f[0] == fr.RST_STREAM]
    assert resets == [(1, fr.PROTOCOL_ERROR), (3, fr.FLOW_CONTROL_ERROR), (5, fr.STREAM_CLOSED)]
    assert [f[0] for f in frames] == [fr.RST_STREAM] * 3
    # A new stream, given window, is answered.
    frames = await wire.fenced(
        wire.headers(7)
        + frame(fr.WINDOW_UPDATE, 0, 7, struct.pack(">I", 1000))
        + frame(fr.DATA, fr.END_STREAM, 7, stat_message("b"))
    )
    assert [f[0] for f in frames] == [fr.HEADERS, fr.DATA, fr.HEADERS]
    assert response_of(frames[1][3]).accepted == 1


async def test_a_peer_that_never_reads_stops_being_read_and_close_drops_it(stats):
    """A PING's ACK is as big as the PING: a client that writes PINGs and never reads
    must not grow the server's write buffer without bound (pause_writing); and close()
    must not wait for it for ever (transport.close() waits for the buffer to drain, and
    on Python 3.12+ Server.wait_closed() waits for every connection)."""
    host, port = stats.address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        chunk = ping(b"12345678") * 4000

        async def flood() -> None:
            await loop.sock_sendall(sock, fr.PREFACE + settings())
            for _ in range(64 * 1024 * 1024 // len(chunk)):
                await loop.sock_sendall(sock, chunk)

        sender = asyncio.create_task(flood())
        try:
            await until(lambda: len(stats.port.connections) == 1, "the connection")
            (conn,) = stats.port.connections

            def paused() -> bool:
                return conn._transport is not None and not conn._transport.is_reading()

            await until(lambda: paused() or sender.done(), "the server to stop reading")
            assert paused(), "64 MiB of PINGs were all read while nothing was read back"
            assert conn._transport.get_write_buffer_size() < 1024 * 1024
            await asyncio.wait_for(stats.port.close(), WAIT_S)
            await until(lambda: not stats.port.connections, "the connection to be dropped")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender


async def test_a_client_that_half_closes_tcp_still_gets_its_answer(stats, wires):
    wire = await wires()
    wire.send(wire.headers(1) + frame(fr.DATA, fr.END_STREAM, 1, stat_message("a", "b")))
    wire.writer.write_eof()
    frames = []
    while (got := await wire.frame()) is not None:
        frames.append(got)
    assert [f[0] for f in frames] == [fr.HEADERS, fr.DATA, fr.HEADERS]
    assert response_of(frames[1][3]).accepted == 2
    await until(lambda: not stats.port.connections, "the connection to be dropped")


async def test_close_answers_streams_in_every_state_then_says_goaway(stats, wires):
    wire = await wires()
    await wire.fenced(settings((fr.S_INITIAL_WINDOW_SIZE, 0)))
    await wire.fenced(
        wire.headers(1)  # open, between messages: answered, then reset (NO_ERROR)
        + frame(fr.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000))
        + frame(fr.DATA, 0, 1, stat_message("a"))
        + wire.headers(3)  # open, inside a message: reset
        + frame(fr.DATA, 0, 3, stat_message("b")[:6])
        + wire.headers(5, end_stream=True)  # half-closed, its answer waiting for window
    )
    (conn,) = stats.port.connections
    wire.send(frame(fr.HEADERS, 0, 7, wire.block()[:4]))  # a header block not yet whole
    await until(lambda: conn._block is not None, "the partial header block")
    silent = await wires(preface=False)  # connected, no preface yet
    await until(lambda: len(stats.port.connections) == 2, "both connections")
    await asyncio.wait_for(stats.port.close(), WAIT_S)
    frames = []
    while (got := await wire.frame()) is not None:
        frames.append(got)
    assert [f[0] for f in frames[:3]] == [fr.HEADERS, fr.DATA, fr.HEADERS]
    assert all(f[2] == 1 for f in frames[:3]) and frames[2][1] & fr.END_STREAM
    assert response_of(frames[1][3]).accepted == 1
    resets = {(f[2], struct.unpack(">I", f[3])[0]) for f in frames if f[0] == fr.RST_STREAM}
    assert resets == {(1, fr.NO_ERROR), (3, fr.NO_ERROR), (5, fr.NO_ERROR)}
    assert frames[-1][0] == fr.GOAWAY
    assert struct.unpack(">II", frames[-1][3][:8]) == (5, fr.NO_ERROR)
    tail = []
    while (got := await silent.frame()) is not None:
        tail.append(got[0])
    assert tail == [fr.SETTINGS, fr.WINDOW_UPDATE, fr.GOAWAY]
    await until(lambda: not stats.port.connections, "every connection to be dropped")


async def test_grpcio_client_is_answered_and_an_open_call_gets_its_totals_at_close(stats):
    async with grpc.aio.insecure_channel(stats.address) as channel:
        stub = pb_grpc.StatsServiceStub(channel)
        requests = [pb.StreamStatsRequest.FromString(stat_message(f"i{i}")[5:]) for i in range(5)]
        response = await asyncio.wait_for(stub.StreamStats(iter(requests)), WAIT_S)
        assert (response.accepted, response.dropped) == (5, 0)
        call = stub.StreamStats()
        for request in requests[:3]:
            await asyncio.wait_for(call.write(request), WAIT_S)
        await until(lambda: stats.accepted == 8, "the open call's stats")
        await asyncio.wait_for(stats.port.close(), WAIT_S)
        response = await asyncio.wait_for(call, WAIT_S)
        assert (response.accepted, response.dropped) == (3, 0)


async def test_the_queues_reporter_reconnects_to_a_port_started_again(stats):
    address = stats.address
    clock = ConcurrencyStats(time.monotonic())
    reporter = Reporter(
        address,
        instance="i1",
        namespace="ns",
        revision="rev-1",
        snapshot=clock.report,
        started_at=time.monotonic(),
        period_s=0.02,
        initial_backoff_s=0.02,
        max_backoff_s=0.1,
    )
    reporter.start()
    again = None
    try:
        await until(lambda: stats.accepted >= 3, "stats at the first port")
        await asyncio.wait_for(stats.port.close(), WAIT_S)
        await until(lambda: reporter.connects >= 3, "reconnection attempts while down")
        again = sp.StatsPort(stats.owner)
        await again.start("127.0.0.1", int(address.rsplit(":", 1)[1]))
        before = stats.accepted
        await until(lambda: stats.accepted >= before + 3, "stats at the port started again")
        assert again.counters["streams"] >= 1
    finally:
        await reporter.stop(flush_timeout_s=0.5)
        if again is not None:
            await asyncio.wait_for(again.close(), WAIT_S)


# -- found in review, fixed -----------------------------------------------------------


def _request_block() -> bytes:
    """A request's header block from a fresh HPACK encoder (a fresh connection's)."""
    fields = [(b":method", b"POST"), (b":path", PATH), (b"content-type", b"application/grpc")]
    return hpack.Encoder().encode(fields)


def _ended_streams(first_id: int, n: int) -> bytes:
    encoder = hpack.Encoder()
    block = [(b":method", b"POST"), (b":path", PATH), (b"content-type", b"application/grpc")]
    return b"".join(
        frame(fr.HEADERS, fr.END_HEADERS | fr.END_STREAM, first_id + 2 * i, encoder.encode(block))
        for i in range(n)
    )


async def test_answers_waiting_for_window_are_bounded(wires):
    # With INITIAL_WINDOW_SIZE 0 no answer can be sent. Each waiting answer was re-scanned
    # on every request end, WINDOW_UPDATE and SETTINGS (20,000 streams held the loop for
    # 67 s); now at most MAX_WAITING wait, and one more is reset (the connection stays).
    wire = await wires()
    frames = await wire.fenced(settings((fr.S_INITIAL_WINDOW_SIZE, 0)))
    frames = await wire.fenced(_ended_streams(1, h2s.MAX_WAITING))
    assert [f for f in frames if f[0] in (fr.DATA, fr.GOAWAY, fr.RST_STREAM)] == []
    last = 1 + 2 * h2s.MAX_WAITING
    frames = await wire.fenced(_ended_streams(last, 1))
    resets = [(f[2], struct.unpack(">I", f[3])[0]) for f in frames if f[0] == fr.RST_STREAM]
    assert resets == [(last, fr.ENHANCE_YOUR_CALM)], frames
    assert not [f for f in frames if f[0] == fr.GOAWAY]


async def test_a_new_initial_window_moves_every_open_stream_at_once(wires):
    # The initial window is held once per connection and each stream keeps only its own
    # difference from it, so a SETTINGS frame costs the same whatever the streams open.
    wire = await wires()
    await wire.fenced(settings((fr.S_INITIAL_WINDOW_SIZE, 0)))
    frames = await wire.fenced(_ended_streams(1, 3))
    assert not [f for f in frames if f[0] == fr.DATA]  # three answers wait
    frames = await wire.fenced(
        settings(*[(fr.S_INITIAL_WINDOW_SIZE, 1)] * 2000, (fr.S_INITIAL_WINDOW_SIZE, 65_535))
    )
    assert sorted(f[2] for f in frames if f[0] == fr.DATA) == [1, 3, 5]


async def test_a_large_message_split_over_many_frames_is_read_once(stats, wires):
    # A 4 MiB message arrives in 257 frames; it is kept as it comes and decoded once
    # it is whole (it was copied whole again on every frame: quadratic).
    request = pb.StreamStatsRequest()
    stat = request.stats.add(instance="big", period_seconds=1, average_concurrency=1)
    stat.revision.namespace, stat.revision.name = "ns", "rev-1"
    body = request.SerializeToString()
    padding = fr.MAX_MESSAGE_BYTES - 5 - len(body) - 8
    # Field 15 (unknown to Stat's message) as bytes: parsers skip it.
    message = body + b"\x7a" + _varint(padding) + b"\0" * padding
    stream = b"\0" + struct.pack(">I", len(message)) + message
    wire = await wires()
    await wire.fenced(frame(fr.HEADERS, fr.END_HEADERS, 1, _request_block()))
    chunks = [stream[i : i + fr.MAX_FRAME_SIZE] for i in range(0, len(stream), fr.MAX_FRAME_SIZE)]
    await wire.fenced(b"".join(frame(fr.DATA, 0, 1, c) for c in chunks[:-1]))
    (conn,) = stats.port.connections
    assert conn.streams[1].need == len(stream)  # the length, read once from the prefix
    frames = await wire.fenced(frame(fr.DATA, fr.END_STREAM, 1, chunks[-1]))
    data = [f for f in frames if f[0] == fr.DATA]
    assert len(data) == 1 and pb.StreamStatsResponse.FromString(data[0][3][5:]).accepted == 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_an_error_answer_fits_the_peers_max_frame_size(h2client):
    sid = h2client.start(b"/" + b"%" * 5600, end_stream=True)
    try:
        head, _, _ = await h2client.finish(sid)
    except h2.exceptions.FrameTooLargeError as exc:
        raise AssertionError(f"the server sent an oversized frame: {exc}") from None
    assert head[b"grpc-status"] == b"12"


async def test_a_new_stream_with_a_lower_id_is_a_connection_error(wires):
    wire = await wires()
    frames = await wire.fenced(wire.headers(3) + wire.headers(1, end_stream=True))
    goaways = [struct.unpack(">II", f[3][:8]) for f in frames if f[0] == fr.GOAWAY]
    assert goaways == [(3, fr.PROTOCOL_ERROR)], frames
