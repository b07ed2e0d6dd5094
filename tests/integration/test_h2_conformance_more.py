"""A second look at the HTTP/2 gRPC code without grpcio (commit 2ec6184): the server's
answer path (`ebb.common.h2server`: messages sent at any time, split to the peer's frame
size and windows, bounded pending output), the admin server on it (`ebb.common.h2admin`)
and the stats stream's client (`ebb.common.h2client`, `ebb.common.statsreporter`).

Real sockets on 127.0.0.1: `h2` as a strict client, raw frames, grpcio, grpcurl; scripted
raw servers for the client. Five tests are for defects that review found, each fixed: a
peer that grants window but never reads (our output was unbounded), a client with default
windows and many calls waiting (its connection was dropped), an error after the first
answer (trailers carried pseudo-headers), a server that stops reading (the client kept
its socket), a server refusing every stream (logged as restored every period). No test
asserts a timing: every wait is a hang guard that ends on its event.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import struct
import sys
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import helpers
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from helpers import until

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.common.h2admin import CHECK_PATH, REFLECTION_PATH, AdminServer
from ebb.common.h2client import StreamCall
from ebb.common.statsreporter import STREAM_STATS_PATH

GUARD_S = 10.0  # hang guard only
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
# A message whose file and dependencies serialise to ~84 KB (more than the default
# windows): Envoy's Cluster, from the xds-protos the controller uses.
LARGE_SYMBOL = "envoy.config.cluster.v3.Cluster"
_U32 = struct.Struct(">I")
DATA, HEADERS, SETTINGS, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x7, 0x8
END_STREAM, END_HEADERS = 0x1, 0x4


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + _U32.pack(stream_id) + payload


def grpc_message(message) -> bytes:
    body = message.SerializeToString()
    return b"\0" + len(body).to_bytes(4, "big") + body


def request_headers(path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"admin"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


def strict_client(**settings: int) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    if settings:  # a second SETTINGS: h2 applies its own side of it on the server's ACK
        conn.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in settings.items()})
    return conn


@pytest.fixture
async def admin():
    server = AdminServer()
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), GUARD_S)


async def open_h2(admin: AdminServer):
    host, port = admin.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


# -- the server's answer path (admin server) -------------------------------------------


async def test_a_peer_that_grants_window_but_never_reads_cannot_make_us_buffer_much(admin):
    conn = strict_client(INITIAL_WINDOW_SIZE=2**31 - 1)
    conn.increment_flow_control_window(2**31 - 1 - 65_535)
    conn.send_headers(1, request_headers(REFLECTION_PATH))
    ask = grpc_message(
        reflection_pb2.ServerReflectionRequest(file_by_filename="google/protobuf/descriptor.proto")
    )
    body = ask * 3_000  # 117 KB of requests on one stream
    frames = b"".join(
        raw_frame(DATA, 0, 1, body[i : i + 16_384]) for i in range(0, len(body), 16_384)
    )
    host, port = admin.address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)  # and it never reads
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, conn.data_to_send() + frames)
        await until(lambda: admin.port.connections, "the connection", GUARD_S)
        server_conn = next(iter(admin.port.connections))
        transport = server_conn._transport
        await until(lambda: not transport.is_reading(), "reading paused", GUARD_S)
        held = transport.get_write_buffer_size() + server_conn._pending_bytes
        assert held <= 8 * 1024 * 1024, f"{held} bytes held for a peer that does not read"
    finally:
        sock.close()


async def test_a_client_with_default_windows_may_have_many_calls_waiting(admin):
    __import__("envoy.config.cluster.v3.cluster_pb2")
    reader, writer = await open_h2(admin)
    conn = strict_client()
    conn.send_headers(1, request_headers(REFLECTION_PATH))
    ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=LARGE_SYMBOL)
    conn.send_data(1, grpc_message(ask), end_stream=True)
    ids = [1]
    for _ in range(40):
        stream_id = conn.get_next_available_stream_id()
        ids.append(stream_id)
        conn.send_headers(stream_id, request_headers(CHECK_PATH))
        conn.send_data(stream_id, grpc_message(health_pb2.HealthCheckRequest()), end_stream=True)
    writer.write(conn.data_to_send())
    status: dict[int, bytes] = {}
    try:
        async with asyncio.timeout(GUARD_S):
            while len(status) < len(ids):
                data = await reader.read(65_536)
                assert data, f"closed after {len(status)} answers: {dict(admin.port.counters)}"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        fields = dict(event.headers)
                        if b"grpc-status" in fields:
                            status[event.stream_id] = fields[b"grpc-status"]
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise AssertionError(f"GOAWAY {event.error_code}: {event.additional_data}")
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert set(status.values()) == {b"0"}


async def test_an_error_after_the_first_answer_ends_with_proper_trailers(admin):
    reader, writer = await open_h2(admin)
    conn = strict_client()
    conn.send_headers(1, request_headers(REFLECTION_PATH))
    conn.send_data(1, grpc_message(reflection_pb2.ServerReflectionRequest(list_services="")))
    writer.write(conn.data_to_send())
    trailers, sent_bad = None, False
    try:
        async with asyncio.timeout(GUARD_S):
            while trailers is None:
                data = await reader.read(65_536)
                assert data, "the server closed the connection"
                for event in conn.receive_data(data):  # h2 raises ProtocolError on bad trailers
                    if isinstance(event, h2.events.DataReceived) and not sent_bad:
                        sent_bad = True  # the first answer arrived: now a compressed message
                        conn.send_data(1, b"\x01\0\0\0\0")
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = dict(event.headers)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert trailers[b"grpc-status"] == b"13"  # INTERNAL, as a trailers-only answer would say


async def test_answers_wait_for_a_zero_initial_window_then_use_a_large_frame_size(admin):
    # The client grants nothing at first and allows 1 MiB frames: nothing may flow before
    # its WINDOW_UPDATEs (h2 raises on DATA beyond a window or over its frame size), then
    # the ~84 KB answer may go in frames larger than the default 16 KiB.
    __import__("envoy.config.cluster.v3.cluster_pb2")
    reader, writer = await open_h2(admin)
    conn = strict_client(INITIAL_WINDOW_SIZE=0, MAX_FRAME_SIZE=1 << 20)
    conn.send_headers(1, request_headers(REFLECTION_PATH))
    ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=LARGE_SYMBOL)
    conn.send_data(1, grpc_message(ask), end_stream=True)
    writer.write(conn.data_to_send())
    received, sizes, trailers, granted = bytearray(), [], None, False
    try:
        async with asyncio.timeout(GUARD_S):
            while trailers is None:
                data = await reader.read(1 << 20)
                assert data, "the server closed before the trailers"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.SettingsAcknowledged) and not granted:
                        granted = True  # our limits are in force: now the windows
                        conn.increment_flow_control_window(1 << 20)
                        conn.increment_flow_control_window(1 << 20, 1)
                    elif isinstance(event, h2.events.DataReceived):
                        assert granted, "DATA before any window was granted"
                        received += event.data
                        sizes.append(len(event.data))
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream reset: {event.error_code}")
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert trailers[b"grpc-status"] == b"0"
    assert len(received) == 5 + int.from_bytes(received[1:5], "big")
    assert max(sizes) > 16_384  # the peer's MAX_FRAME_SIZE, not the default
    answer = reflection_pb2.ServerReflectionResponse.FromString(bytes(received[5:]))
    assert answer.original_request == ask


async def test_grpcurl_watch_with_a_deadline_then_a_probe_of_a_draining_server(admin):
    code, out, err = await grpcurl("-max-time", "1", admin.address, "grpc.health.v1.Health/Watch")
    assert '"SERVING"' in out and "DeadlineExceeded" in err, (code, out, err)
    await until(lambda: not admin.health._watchers, "the watch forgotten", GUARD_S)
    assert admin.port.open_streams == 0
    admin.set_serving(False)  # what a readiness probe sees while the queue drains
    code, out, err = await grpcurl(
        "-d", '{"service":""}', admin.address, "grpc.health.v1.Health/Check"
    )
    assert code == 0 and '"NOT_SERVING"' in out, (code, out, err)
    code, out, err = await grpcurl(
        "-d", '{"service":"x"}', admin.address, "grpc.health.v1.Health/Check"
    )
    assert code != 0 and "NotFound" in err


async def test_a_watch_on_a_connection_that_drops_is_forgotten(admin):
    reader, writer = await open_h2(admin)
    conn = strict_client()
    conn.send_headers(1, request_headers(b"/grpc.health.v1.Health/Watch"))
    conn.send_data(1, grpc_message(health_pb2.HealthCheckRequest()), end_stream=True)
    writer.write(conn.data_to_send())
    await until(lambda: admin.health._watchers, "the watch", GUARD_S)
    writer.transport.abort()  # no RST_STREAM, no GOAWAY: the socket just goes
    await until(lambda: not admin.health._watchers, "the watch forgotten", GUARD_S)
    await until(lambda: not admin.port.connections, "the connection gone", GUARD_S)
    admin.set_serving(False)  # nothing left to tell


# -- the client (stats stream) ---------------------------------------------------------


class ScriptedServer:
    """A TCP server running `script(reader, writer)` per connection; closed on exit."""

    def __init__(self, script) -> None:
        self.script = script
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        self.tasks.add(asyncio.current_task())
        self.writers.append(writer)
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return raw_frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def reporting(target: str, **options):
    return helpers.stats_reporting(target, flush_timeout_s=0.2, **options)


async def test_aclose_lets_go_of_a_server_that_stopped_reading():
    async def script(reader, writer) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
        writer.write(
            settings_frame((0x4, 2**31 - 1))
            + raw_frame(WINDOW_UPDATE, 0, 0, _U32.pack(2**31 - 1 - 65_535))
        )
        await asyncio.sleep(3_600)  # alive, never reads

    async with ScriptedServer(script) as server:
        call = await StreamCall.open(server.target, STREAM_STATS_PATH, write_timeout_s=0.2)
        transport = call._transport
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(GUARD_S):
                    while True:
                        await call.write(b"x" * 1_000_000)
            await call.aclose(timeout_s=0.5)
            assert call._closed.done(), "the socket is still open after aclose()"
        finally:
            transport.abort()  # what the fix would do; no unclosed transport left behind
            await asyncio.wait_for(asyncio.shield(call._closed), GUARD_S)


async def test_a_server_refusing_every_stream_is_never_logged_as_restored(caplog):
    server = grpc.aio.server()  # no StatsService: every stream UNIMPLEMENTED
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    caplog.set_level(logging.INFO, logger="ebb.common.statsreporter")
    try:
        async with reporting(f"127.0.0.1:{port}") as reporter:
            await until(lambda: reporter.connects >= 4, "attempts", GUARD_S)
    finally:
        await server.stop(0)
    messages = [r.getMessage() for r in caplog.records if r.name == "ebb.common.statsreporter"]
    assert "stats stream restored" not in messages
    assert messages.count("stats stream failed; reconnecting") == 1


async def test_the_reporter_backs_off_from_a_server_that_says_goaway_at_once(caplog):
    async def script(reader, writer) -> None:
        writer.write(settings_frame() + raw_frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(0)))
        while await reader.read(65_536):
            pass

    caplog.set_level(logging.INFO, logger="ebb.common.statsreporter")
    async with ScriptedServer(script) as server:
        async with reporting(server.target) as reporter:
            await until(lambda: reporter.connects >= 4, "attempts", GUARD_S)
    assert reporter.sent == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "ebb.common.statsreporter"]
    assert messages.count("stats stream failed; reconnecting") == 1
    assert "stats stream restored" not in messages
    assert "UNAVAILABLE" in caplog.records[0].error


async def test_a_window_that_never_opens_times_out_the_write_and_keeps_the_stats():
    async def script(reader, writer) -> None:
        writer.write(settings_frame((0x4, 0)))  # INITIAL_WINDOW_SIZE 0, never raised
        while await reader.read(65_536):
            pass

    async with ScriptedServer(script) as server:
        async with reporting(server.target, write_timeout_s=0.05) as reporter:
            await until(lambda: server.connections >= 3, "reconnects", GUARD_S)
            assert reporter.sent == 0 and reporter._pending


class Counter(pb_grpc.StatsServiceServicer):
    async def StreamStats(self, request_iterator, context):  # noqa: N802 - gRPC's naming
        count = 0
        async for _ in request_iterator:
            count += 1
        return pb.StreamStatsResponse(accepted=count)


async def test_keepalive_while_streaming_stays_within_grpcios_ping_policy():
    # grpcio closes a connection with GOAWAY too_many_pings after a few early PINGs; a
    # PING every 20 ms (ten writes a PING here, as one a second per 10 s keepalive) is
    # within what it allows because DATA flows between them.
    server = grpc.aio.server()
    pb_grpc.add_StatsServiceServicer_to_server(Counter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        call = await StreamCall.open(
            f"127.0.0.1:{port}", STREAM_STATS_PATH, keepalive_s=0.02, keepalive_timeout_s=1.0
        )
        async with call:
            for _ in range(100):
                await call.write(pb.StreamStatsRequest().SerializeToString())
                await asyncio.sleep(0.002)
            await call.done_writing()
            answer = await asyncio.wait_for(call.response(), GUARD_S)
        assert pb.StreamStatsResponse.FromString(answer).accepted == 100
        assert call._goaway is None
    finally:
        await server.stop(0)
