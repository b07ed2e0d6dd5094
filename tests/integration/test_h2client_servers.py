"""ebb.common.h2client over real TCP: against a grpcio aio server, the autoscaler's stats
port, and scripted raw HTTP/2 servers that misbehave (reset, close mid-stream, GOAWAY,
stop answering PINGs, grant a tiny window). Then the stats reporter on it, traced.

No test asserts a timing; every wait is a hang guard that ends on its event.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import grpc
import helpers
import hpack
import pytest
from helpers import autoscaler_with_revision, stats_request, until
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.autoscaler import statsport as sp
from ebb.common import h2client as h2
from ebb.common import tracing as tr
from ebb.common.h2client import GrpcStatus, RpcError, StreamCall
from ebb.common.statsreporter import STREAM_STATS_PATH

GUARD_S = 10.0  # hang guard only
_U32 = struct.Struct(">I")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def stat_request(instance: str = "i1", revision: str = "rev-1", n: int = 1) -> bytes:
    return stats_request(*[(instance, 1.0)] * n, revision=revision)


async def answer(call: StreamCall) -> pb.StreamStatsResponse | RpcError:
    try:
        return pb.StreamStatsResponse.FromString(await asyncio.wait_for(call.response(), GUARD_S))
    except RpcError as exc:
        return exc


# -- (a) a grpcio aio server ----------------------------------------------------------


class Recorder(pb_grpc.StatsServiceServicer):
    def __init__(self) -> None:
        self.stats: list[pb.Stat] = []
        self.metadata: list[tuple[str, str]] = []

    async def StreamStats(self, request_iterator, context):  # noqa: N802 - gRPC's naming
        self.metadata = list(context.invocation_metadata())
        count = 0
        async for request in request_iterator:
            if request.stats and request.stats[0].instance == "abort":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refusé: 100% wrong")
            self.stats.extend(request.stats)
            count += len(request.stats)
        return pb.StreamStatsResponse(accepted=count)


@pytest.fixture
async def grpcio_server():
    recorder = Recorder()
    server = grpc.aio.server()
    pb_grpc.add_StatsServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield recorder, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_grpcio_server_takes_the_stream_and_its_metadata(grpcio_server):
    recorder, target = grpcio_server
    call = await StreamCall.open(target, STREAM_STATS_PATH, metadata=[("traceparent", TRACEPARENT)])
    async with call:
        for i in range(5):
            await call.write(stat_request(f"i{i}"))
        await call.done_writing()
        result = await answer(call)
    assert result == pb.StreamStatsResponse(accepted=5)
    assert [s.instance for s in recorder.stats] == ["i0", "i1", "i2", "i3", "i4"]
    metadata = dict(recorder.metadata)
    assert metadata["traceparent"] == TRACEPARENT
    assert metadata["user-agent"].startswith("ebb-h2client")


async def test_messages_larger_than_the_default_windows_flow_to_a_grpcio_server(grpcio_server):
    recorder, target = grpcio_server
    message = stat_request(n=8000)  # ~190 KB each: several windows' worth
    assert len(message) > 3 * h2.DEFAULT_WINDOW
    async with await StreamCall.open(target, STREAM_STATS_PATH) as call:
        for _ in range(3):
            await call.write(message)
        await call.done_writing()
        assert await answer(call) == pb.StreamStatsResponse(accepted=24_000)


async def test_an_unknown_method_on_a_grpcio_server_is_unimplemented(grpcio_server):
    _, target = grpcio_server
    async with await StreamCall.open(target, "/ebb.api.autoscaler.v1.StatsService/Nope") as call:
        await call.done_writing()
        error = await answer(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNIMPLEMENTED


async def test_a_grpcio_handlers_abort_arrives_with_its_status_and_message(grpcio_server):
    _, target = grpcio_server
    async with await StreamCall.open(target, STREAM_STATS_PATH) as call:
        await call.write(stat_request("abort"))
        error = await answer(call)
    assert isinstance(error, RpcError)
    assert (error.status, error.message) == (GrpcStatus.FAILED_PRECONDITION, "refusé: 100% wrong")


async def test_nothing_listening_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(RpcError) as info:
            await StreamCall.open(f"127.0.0.1:{port}", STREAM_STATS_PATH)
    assert info.value.status == GrpcStatus.UNAVAILABLE
    assert info.value.message.startswith(f"cannot connect to 127.0.0.1:{port}")


async def test_a_server_that_never_speaks_http2_times_out_the_open():
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RpcError) as info:
            await StreamCall.open(f"127.0.0.1:{port}", STREAM_STATS_PATH, timeout_s=0.1)
        assert info.value.status == GrpcStatus.UNAVAILABLE
        assert info.value.message == f"no HTTP/2 connection to 127.0.0.1:{port} in 0.1 s"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), GUARD_S)


# -- (b) the autoscaler's stats port ---------------------------------------------------


@pytest.fixture
async def stats_port():
    port = sp.StatsPort(autoscaler_with_revision())
    await port.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await asyncio.wait_for(port.close(), GUARD_S)


async def test_the_stats_port_takes_the_stream_and_answers_its_totals(stats_port):
    async with await StreamCall.open(stats_port.address, STREAM_STATS_PATH) as call:
        for _ in range(3):
            await call.write(stat_request())
        await call.write(stat_request(revision="unknown"))
        await call.done_writing()
        result = await answer(call)
    assert (result.accepted, result.dropped) == (3, 1)
    assert stats_port.owner.scaler.collector.accepted == 3


async def test_the_stats_port_stopping_ends_the_call_with_its_totals(stats_port):
    call = await StreamCall.open(stats_port.address, STREAM_STATS_PATH)
    async with call:
        await call.write(stat_request())
        await until(lambda: stats_port.owner.scaler.collector.accepted == 1, "the stat", GUARD_S)
        await asyncio.wait_for(stats_port.close(), GUARD_S)
        assert (await answer(call)).accepted == 1  # then GOAWAY, then the connection closes
        assert call.done()
        with pytest.raises(asyncio.InvalidStateError):
            await call.write(stat_request())


async def test_an_unknown_method_on_the_stats_port_is_unimplemented(stats_port):
    async with await StreamCall.open(stats_port.address, "/other.Service/Method") as call:
        error = await answer(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNIMPLEMENTED
    assert error.message == "unknown method /other.Service/Method"


# -- (c) scripted servers ----------------------------------------------------------------


class RawServer:
    """An HTTP/2 server played frame by frame by a script: `script(conn)` is awaited for
    each connection, with `conn.read_frame()` and `conn.send(...)`."""

    def __init__(self, script) -> None:
        self.script = script
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()
        self.received: list[tuple[int, int, int, bytes]] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        conn = RawConnection(reader, writer, self.received)
        try:
            assert await reader.readexactly(len(h2.PREFACE)) == h2.PREFACE
            await self.script(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class RawConnection:
    def __init__(self, reader, writer, received) -> None:
        self.reader, self.writer, self.received = reader, writer, received
        self.decoder = hpack.Decoder()
        self.encoder = hpack.Encoder()

    async def read_frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        size = int.from_bytes(head[:3], "big")
        payload = await self.reader.readexactly(size)
        kind, flags = head[3], head[4]
        stream_id = _U32.unpack_from(head, 5)[0] & 0x7FFFFFFF
        self.received.append((kind, flags, stream_id, payload))
        return kind, flags, stream_id, payload

    async def read_until(self, kind: int) -> tuple[int, int, int, bytes]:
        while True:
            f = await self.read_frame()
            if f[0] == kind:
                return f

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def settings(self, *pairs: tuple[int, int]) -> None:
        payload = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
        self.send(h2.frame(h2.SETTINGS, 0, 0, payload))

    async def handshake(self, *pairs: tuple[int, int]) -> None:
        """Our SETTINGS, then read up to the request's HEADERS."""
        self.settings(*pairs)
        await self.read_until(h2.HEADERS)

    def answer_ok(self, message: bytes) -> None:
        self.send(
            h2.frame(
                h2.HEADERS,
                h2.END_HEADERS,
                1,
                self.encoder.encode([(":status", "200"), ("content-type", "application/grpc")]),
            ),
            h2.frame(h2.DATA, 0, 1, h2.grpc_frame(message)),
            h2.frame(
                h2.HEADERS,
                h2.END_HEADERS | h2.END_STREAM,
                1,
                self.encoder.encode([("grpc-status", "0")]),
            ),
        )


async def test_a_server_that_resets_the_stream():
    async def script(conn: RawConnection) -> None:
        await conn.handshake()
        await conn.read_until(h2.DATA)
        conn.send(h2.frame(h2.RST_STREAM, 0, 1, _U32.pack(h2.REFUSED_STREAM)))
        await conn.read_frame()  # until we close

    async with (
        RawServer(script) as server,
        await StreamCall.open(server.target, STREAM_STATS_PATH) as call,
    ):
        await call.write(b"x")
        error = await answer(call)
    assert isinstance(error, RpcError)
    assert (error.status, error.message) == (
        GrpcStatus.UNAVAILABLE,
        "stream reset by the server (code 7)",
    )


async def test_a_server_that_closes_mid_stream():
    async def script(conn: RawConnection) -> None:
        await conn.handshake()
        await conn.read_until(h2.DATA)
        conn.writer.transport.abort()  # a reset, mid-stream

    async with (
        RawServer(script) as server,
        await StreamCall.open(server.target, STREAM_STATS_PATH) as call,
    ):
        await call.write(b"x")
        error = await answer(call)
    assert isinstance(error, RpcError) and error.status == GrpcStatus.UNAVAILABLE
    with pytest.raises(RpcError):
        await call.write(b"y")


@pytest.mark.parametrize("last_stream", [0, 1])
async def test_goaway_from_the_server(last_stream):
    async def script(conn: RawConnection) -> None:
        await conn.handshake()
        await conn.read_until(h2.DATA)
        conn.send(h2.frame(h2.GOAWAY, 0, 0, _U32.pack(last_stream) + _U32.pack(h2.NO_ERROR)))
        if last_stream:  # our stream is taken: it is answered before the server goes
            await conn.read_until(h2.DATA)  # END_STREAM
            conn.answer_ok(pb.StreamStatsResponse(accepted=1).SerializeToString())
        await conn.read_frame()

    async with (
        RawServer(script) as server,
        await StreamCall.open(server.target, STREAM_STATS_PATH) as call,
    ):
        await call.write(b"x")
        if last_stream:
            await until(
                lambda: server.received and server.received[-1][0] == h2.DATA, "the write", GUARD_S
            )
            await asyncio.sleep(0.01)  # let the GOAWAY arrive before we finish writing
            await call.done_writing()
        result = await answer(call)
    if last_stream:
        assert result == pb.StreamStatsResponse(accepted=1)
    else:
        assert isinstance(result, RpcError) and result.status == GrpcStatus.UNAVAILABLE
        assert "GOAWAY" in result.message


async def test_keepalive_notices_a_server_that_stops_answering_pings():
    async def script(conn: RawConnection) -> None:
        await conn.handshake()
        while True:
            await conn.read_frame()  # reads everything, acknowledges no PING

    async with RawServer(script) as server:
        call = await StreamCall.open(
            server.target, STREAM_STATS_PATH, keepalive_s=0.02, keepalive_timeout_s=0.05
        )
        async with call:
            error = await answer(call)
        assert isinstance(error, RpcError) and error.status == GrpcStatus.UNAVAILABLE
        assert error.message.startswith("keepalive")
        assert any(f[0] == h2.PING for f in server.received)


async def test_keepalive_is_content_with_a_server_that_answers():
    acked = 0

    async def script(conn: RawConnection) -> None:
        nonlocal acked
        await conn.handshake()
        while True:
            kind, flags, _, payload = await conn.read_frame()
            if kind == h2.PING and not flags & h2.ACK:
                conn.send(h2.frame(h2.PING, h2.ACK, 0, payload))
                acked += 1

    async with RawServer(script) as server:
        call = await StreamCall.open(
            server.target, STREAM_STATS_PATH, keepalive_s=0.01, keepalive_timeout_s=GUARD_S
        )
        async with call:
            for _ in range(3):
                await call.write(b"x")  # data lets keepalive ping on
                before = acked
                await until(lambda b=before: acked > b, "an answered PING", GUARD_S)
            assert not call.done()


async def test_a_server_granting_a_tiny_window_gets_the_message_in_small_frames():
    window = 7

    async def script(conn: RawConnection) -> None:
        await conn.handshake((h2.S_INITIAL_WINDOW_SIZE, window))
        body = bytearray()
        while True:
            kind, flags, _, payload = await conn.read_frame()
            if kind != h2.DATA:
                continue
            assert len(payload) <= window
            body += payload
            if flags & h2.END_STREAM:
                break
            conn.send(h2.frame(h2.WINDOW_UPDATE, 0, 1, _U32.pack(len(payload))))
        (size,) = _U32.unpack_from(body, 1)
        conn.answer_ok(pb.StreamStatsResponse(accepted=size).SerializeToString())
        await conn.read_frame()

    message = stat_request()
    async with (
        RawServer(script) as server,
        await StreamCall.open(server.target, STREAM_STATS_PATH) as call,
    ):
        await call.write(message)
        await call.done_writing()
        result = await answer(call)
        data = [f for f in server.received if f[0] == h2.DATA and f[3]]
    assert result == pb.StreamStatsResponse(accepted=len(message))
    assert len(data) == -(-(len(message) + 5) // window)


# -- the stats reporter on it ------------------------------------------------------------


def reporting(target: str, **options):
    return helpers.stats_reporting(target, flush_timeout_s=0.5, **options)


async def test_the_reporter_reconnects_after_keepalive_finds_the_server_dead():
    async def script(conn: RawConnection) -> None:
        await conn.handshake()
        while True:
            await conn.read_frame()  # never acknowledges a PING

    async with RawServer(script) as server:
        async with reporting(server.target, keepalive_s=0.02, keepalive_timeout_s=0.05) as reporter:
            await until(lambda: reporter.connects >= 2, "a second stream", GUARD_S)
            assert reporter.sent >= 1


async def test_the_reporter_keeps_trying_a_method_the_server_does_not_have(caplog):
    # A grpcio server without StatsService: UNIMPLEMENTED, logged, tried again.
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with reporting(f"127.0.0.1:{port}") as reporter:
            await until(lambda: reporter.connects >= 3, "attempts", GUARD_S)
    finally:
        await server.stop(0)
    failures = [r for r in caplog.records if r.getMessage() == "stats stream failed; reconnecting"]
    assert failures and failures[0].error.startswith("UNIMPLEMENTED: ")


async def test_each_stream_is_one_client_span_continued_by_the_stats_port():
    exporter = InMemorySpanExporter()
    tracing = tr.setup("queue", {"EBB_TRACING": "1"}, exporter=exporter, set_global=False)
    port = sp.StatsPort(autoscaler_with_revision(), tracing=tracing)
    await port.start("127.0.0.1", 0)
    try:
        async with reporting(port.address, tracing=tracing) as reporter:
            await until(lambda: port.owner.scaler.collector.accepted >= 2, "stats", GUARD_S)
        assert reporter.connects == 1
    finally:
        await asyncio.wait_for(port.close(), GUARD_S)
    spans = exporter.get_finished_spans()
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert client.name == server.name == STREAM_STATS_PATH
    assert dict(client.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "ebb.api.autoscaler.v1.StatsService",
        "rpc.method": "StreamStats",
        "rpc.grpc.status_code": 0,  # stop() half-closed and read the answer
    }
    assert client.status.is_ok
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id
    tracing.shutdown()


async def test_a_failed_stream_ends_its_span_with_the_status():
    exporter = InMemorySpanExporter()
    tracing = tr.setup("queue", {"EBB_TRACING": "1"}, exporter=exporter, set_global=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # not listening: refused
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        async with reporting(target, tracing=tracing) as reporter:
            await until(lambda: reporter.connects >= 2, "attempts", GUARD_S)
            await until(lambda: exporter.get_finished_spans(), "a span", GUARD_S)
    span = exporter.get_finished_spans()[0]
    assert span.attributes["rpc.grpc.status_code"] == GrpcStatus.UNAVAILABLE
    assert not span.status.is_ok
    assert span.status.description.startswith("UNAVAILABLE: cannot connect")
    tracing.shutdown()
