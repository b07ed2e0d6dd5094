"""The admin server without grpcio (`ebb.common.h2admin`) against real clients: grpcio's
health stub (Check, Watch), grpcurl (list, describe, Check), and `h2` as a strict client
granting a tiny window, so that a reflection answer larger than the windows goes out in
many frames as they allow. No test asserts a timing; every wait is a hang guard.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from helpers import until

from ebb.common.h2admin import REFLECTION_PATH, AdminServer

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
WAIT_S = 20.0  # hang guard only
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A message whose file and dependencies serialise to more than 64 KiB (the default
# windows): Envoy's Cluster, from the xds-protos the controller uses.
LARGE_SYMBOL = "envoy.config.cluster.v3.Cluster"


@pytest.fixture
async def admin():
    server = AdminServer(["test.v1.Thing"])
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), WAIT_S)


@pytest.fixture
async def health(admin):
    async with grpc.aio.insecure_channel(admin.address) as channel:
        yield health_pb2_grpc.HealthStub(channel)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def request(service: str = "") -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


async def test_check_follows_set_serving(admin, health):
    for service in ("", "test.v1.Thing"):
        response = await health.Check(request(service), timeout=WAIT_S)
        assert response.status == SERVING
    admin.set_serving(False)
    assert (await health.Check(request(), timeout=WAIT_S)).status == NOT_SERVING
    assert (await health.Check(request("test.v1.Thing"), timeout=WAIT_S)).status == NOT_SERVING
    admin.set_serving(True)
    assert (await health.Check(request(), timeout=WAIT_S)).status == SERVING


async def test_check_of_an_unknown_service_is_not_found(health):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(request("no.such.Service"), timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_the_status_then_each_change(admin, health):
    call = health.Watch(request(), timeout=WAIT_S)
    assert (await call.read()).status == SERVING
    admin.set_serving(True)  # not a change: nothing is sent
    admin.set_serving(False)
    assert (await call.read()).status == NOT_SERVING
    admin.set_serving(True)
    assert (await call.read()).status == SERVING
    unknown = health.Watch(request("no.such.Service"), timeout=WAIT_S)
    response = await unknown.read()
    assert response.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()
    call.cancel()
    await until(lambda: not admin.health._watchers, "the watches let go", timeout_s=WAIT_S)
    assert admin.port.open_streams == 0


async def test_a_cancelled_watch_is_forgotten_and_the_connection_serves_on(admin, health):
    call = health.Watch(request("test.v1.Thing"), timeout=WAIT_S)
    assert (await call.read()).status == SERVING
    assert admin.port.open_streams == 1
    call.cancel()
    await until(lambda: admin.port.open_streams == 0, "the cancelled watch closed")
    assert not admin.health._watchers
    admin.set_serving(False)  # no watcher left to write to
    assert (await health.Check(request(), timeout=WAIT_S)).status == NOT_SERVING


async def test_close_with_a_watch_open_says_not_serving_then_ends_the_call():
    admin = AdminServer()
    await admin.start("127.0.0.1", 0)
    async with grpc.aio.insecure_channel(admin.address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(request(), timeout=WAIT_S)
        assert (await call.read()).status == SERVING
        await asyncio.wait_for(admin.close(), WAIT_S)
        assert (await call.read()).status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(admin.close(), WAIT_S)  # idempotent
    admin.set_serving(True)  # ignored after close
    assert admin.health.get("") == NOT_SERVING


async def test_grpcurl_lists_describes_and_checks(admin):
    code, out, err = await grpcurl(admin.address, "list")
    assert code == 0, err
    assert out.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "test.v1.Thing",
    ]
    code, out, err = await grpcurl(admin.address, "describe", "grpc.health.v1.Health")
    assert code == 0, err
    assert "service Health" in out and "rpc Watch" in out
    code, out, err = await grpcurl(admin.address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    code, out, err = await grpcurl(admin.address, "describe", "no.such.Symbol")
    assert code != 0 and "no.such.Symbol" in err


async def test_grpcurl_describes_a_symbol_whose_files_exceed_the_windows(admin):
    __import__("envoy.config.cluster.v3.cluster_pb2")
    code, out, err = await grpcurl(admin.address, "describe", LARGE_SYMBOL)
    assert code == 0, err
    assert f"{LARGE_SYMBOL} is a message" in out


async def test_a_reflection_answer_follows_a_tiny_window(admin):
    # The client grants 1,000 bytes a stream and acknowledges as it reads: the ~84 KB
    # answer goes out in frames no larger than the window, each sent on a WINDOW_UPDATE.
    __import__("envoy.config.cluster.v3.cluster_pb2")
    host, port = admin.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1_000}
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", REFLECTION_PATH),
            (b":authority", b"admin"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=LARGE_SYMBOL)
    body = ask.SerializeToString()
    conn.send_data(stream_id, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
    writer.write(conn.data_to_send())
    received, sizes, trailers = bytearray(), [], None
    try:
        async with asyncio.timeout(WAIT_S):
            while trailers is None:
                data = await reader.read(65_536)
                assert data, "the server closed before the trailers"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        received += event.data
                        sizes.append(len(event.data))
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream reset: {event.error_code}")
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert trailers[b"grpc-status"] == b"0"
    assert max(sizes) <= 1_000 and len(received) > 64 * 1024
    length = int.from_bytes(received[1:5], "big")
    assert len(received) == 5 + length
    answer = reflection_pb2.ServerReflectionResponse.FromString(bytes(received[5:]))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(blob)
        for blob in answer.file_descriptor_response.file_descriptor_proto
    ]
    assert "envoy/config/cluster/v3/cluster.proto" in {f.name for f in files}
    assert answer.original_request == ask


def _reflection_requests() -> list[reflection_pb2.ServerReflectionRequest]:
    ask = reflection_pb2.ServerReflectionRequest
    extension = reflection_pb2.ExtensionRequest
    return [
        ask(list_services=""),
        ask(file_by_filename="grpc_health/v1/health.proto"),
        ask(file_by_filename="no/such.proto"),
        ask(file_containing_symbol="grpc.health.v1.Health.Watch"),
        ask(file_containing_symbol=LARGE_SYMBOL),
        ask(file_containing_symbol="no.such.Symbol"),
        ask(
            file_containing_extension=extension(
                containing_type="google.protobuf.FieldOptions", extension_number=1071
            )
        ),
        ask(
            file_containing_extension=extension(
                containing_type="google.protobuf.FieldOptions", extension_number=99_999
            )
        ),
        ask(all_extension_numbers_of_type="google.protobuf.FieldOptions"),
        ask(all_extension_numbers_of_type="no.such.Message"),
        ask(host="only a host"),  # no request kind: INVALID_ARGUMENT
    ]


@pytest.mark.parametrize("ask", _reflection_requests(), ids=lambda r: str(r).split(":")[0])
def test_reflection_answers_as_grpcios_servicer_does(ask):
    # grpcio's servicer (it imports grpc, which is fine in a test) is the reference.
    from grpc_reflection.v1alpha import reflection

    from ebb.common.h2admin import HEALTH_SERVICE, REFLECTION_SERVICE, Reflection

    __import__("envoy.config.cluster.v3.cluster_pb2")  # validate.rules extends FieldOptions
    names = ["test.v1.Thing", HEALTH_SERVICE, REFLECTION_SERVICE]
    reference = reflection.ReflectionServicer(names)
    expected = next(reference.ServerReflectionInfo(iter([ask]), None))
    got = Reflection(names).answer(ask)
    assert got.WhichOneof("message_response") == expected.WhichOneof("message_response")
    if got.HasField("file_descriptor_response"):  # the same files, in any order
        assert sorted(got.file_descriptor_response.file_descriptor_proto) == sorted(
            expected.file_descriptor_response.file_descriptor_proto
        )
    else:
        assert got == expected


def test_the_admin_server_does_not_import_grpc():
    code = (
        "import sys, ebb.common.h2admin, ebb.common.h2server; "
        "sys.exit('grpc' in sys.modules or any(m.startswith('grpc.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


async def test_list_gives_every_status(admin, health):
    admin.set_serving(False)
    response = await health.List(health_pb2.HealthListRequest(), timeout=WAIT_S)
    statuses = {name: item.status for name, item in response.statuses.items()}
    assert statuses == {"": NOT_SERVING, "test.v1.Thing": NOT_SERVING}
