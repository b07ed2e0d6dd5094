"""The webhook's transports, in-process on free ports: gRPC AdmissionService and AdmissionReview over HTTPS."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import shutil
import ssl
import subprocess

import grpc
import pytest
from google.protobuf import json_format

from ebb.api.serving.v1 import resources_pb2
from ebb.api.webhook.v1 import admission_pb2, admission_pb2_grpc
from ebb.common.server import ServiceCore
from ebb.webhook import jsonpatch
from ebb.webhook.admission import AdmissionSettings, default
from ebb.webhook.server import (
    SERVICE_NAME,
    AdmissionReviewServer,
    AdmissionServicer,
    make_tls_context,
)


def _service_dict(**spec) -> dict:
    return {
        "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"command": ["python", "app.py"]}]}}, **spec},
    }


def _resource(field: str = "service", body: dict | None = None) -> resources_pb2.Resource:
    resource = resources_pb2.Resource()
    json_format.ParseDict(body if body is not None else _service_dict(), getattr(resource, field))
    return resource


@pytest.fixture
async def stub():
    core = ServiceCore("webhook", "127.0.0.1", 0, grace_s=0.5)
    servicer = AdmissionServicer(AdmissionSettings())
    core.add(
        lambda s: admission_pb2_grpc.add_AdmissionServiceServicer_to_server(servicer, s),
        SERVICE_NAME,
    )
    await core.start()
    channel = grpc.aio.insecure_channel(core.address)
    try:
        yield admission_pb2_grpc.AdmissionServiceStub(channel)
    finally:
        await channel.close()
        await core.shutdown()


async def test_default_over_grpc(stub):
    reply = await stub.Default(admission_pb2.DefaultRequest(resource=_resource()))
    assert reply.resource.WhichOneof("kind") == "service"
    assert json_format.MessageToDict(reply.resource.service) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {
                    "containerConcurrency": "0",
                    "timeoutSeconds": "300",
                    "containers": [
                        {
                            "name": "user-container",
                            "command": ["python", "app.py"],
                            "readinessProbe": {"tcpSocket": {}, "successThreshold": 1},
                        }
                    ],
                }
            },
            "traffic": [{"latestRevision": True, "percent": "100"}],
        },
    }


async def test_validate_good_service_over_grpc(stub):
    defaulted = await stub.Default(admission_pb2.DefaultRequest(resource=_resource()))
    verdict = await stub.Validate(admission_pb2.ValidateRequest(resource=defaulted.resource))
    assert verdict.allowed
    assert list(verdict.errors) == []


async def test_validate_bad_service_over_grpc(stub):
    body = _service_dict(traffic=[{"percent": 90}])
    body["spec"]["template"]["metadata"] = {
        "annotations": {
            "autoscaling.knative.dev/min-scale": "3",
            "autoscaling.knative.dev/max-scale": "2",
        }
    }
    defaulted = await stub.Default(admission_pb2.DefaultRequest(resource=_resource(body=body)))
    verdict = await stub.Validate(
        admission_pb2.ValidateRequest(
            resource=defaulted.resource, operation=admission_pb2.OPERATION_CREATE
        )
    )
    assert not verdict.allowed
    assert [(e.path, e.message) for e in verdict.errors] == [
        (
            "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale",
            "max-scale=2 is less than min-scale=3",
        ),
        ("spec.traffic", "Traffic targets sum to 90, want 100"),
    ]


async def test_revision_spec_immutable_over_grpc(stub):
    body = {"metadata": {"name": "hello-00001"}, "spec": {"containers": [{"image": "a"}]}}
    old = await stub.Default(admission_pb2.DefaultRequest(resource=_resource("revision", body)))
    body["spec"]["containerConcurrency"] = 4
    new = await stub.Default(admission_pb2.DefaultRequest(resource=_resource("revision", body)))
    verdict = await stub.Validate(
        admission_pb2.ValidateRequest(
            resource=new.resource,
            old_resource=old.resource,
            operation=admission_pb2.OPERATION_UPDATE,
        )
    )
    assert not verdict.allowed
    assert [(e.path, e.message) for e in verdict.errors] == [
        ("spec", "Immutable fields changed (-old +new) (spec.containerConcurrency: -0 +4)")
    ]
    same = await stub.Validate(
        admission_pb2.ValidateRequest(
            resource=old.resource,
            old_resource=old.resource,
            operation=admission_pb2.OPERATION_UPDATE,
        )
    )
    assert same.allowed


async def test_delete_allowed_over_grpc(stub):
    verdict = await stub.Validate(
        admission_pb2.ValidateRequest(
            resource=_resource(body={}), operation=admission_pb2.OPERATION_DELETE
        )
    )
    assert verdict.allowed


async def test_kind_mismatch_and_empty_resource(stub):
    body = _service_dict() | {"kind": "Route"}
    verdict = await stub.Validate(admission_pb2.ValidateRequest(resource=_resource(body=body)))
    assert not verdict.allowed
    assert [(e.path, e.message) for e in verdict.errors] == [
        ("kind", "invalid value: Route (the resource was sent as a Service)")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Default(admission_pb2.DefaultRequest(resource=_resource(body=body)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Default(admission_pb2.DefaultRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "resource: missing field(s)"
    verdict = await stub.Validate(admission_pb2.ValidateRequest())
    assert [(e.path, e.message) for e in verdict.errors] == [("kind", "missing field(s)")]


# ---- AdmissionReview over HTTPS ----


@pytest.fixture
def tls_files(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
async def https(tls_files):
    cert, key = tls_files
    server = AdmissionReviewServer(AdmissionSettings())
    port = await server.start("127.0.0.1", 0, make_tls_context(str(cert), str(key)))
    client_tls = ssl.create_default_context(cafile=str(cert))
    try:
        yield port, client_tls
    finally:
        await server.close()


def _exchange(
    port: int, tls: ssl.SSLContext, requests: list[tuple[str, str, bytes | None]]
) -> list[tuple[int, dict]]:
    """Send requests over one HTTPS connection (keep-alive); [(status, json body)]."""
    conn = http.client.HTTPSConnection("localhost", port, context=tls, timeout=10)
    try:
        answers = []
        for method, path, body in requests:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            answers.append((reply.status, json.loads(reply.read())))
        return answers
    finally:
        conn.close()


def _review(obj: dict) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
                "kind": {"group": "serving.knative.dev", "version": "v1", "kind": obj["kind"]},
                "operation": "CREATE",
                "namespace": "default",
                "object": obj,
            },
        }
    ).encode()


async def test_admission_review_validate(https):
    port, tls = https
    bad = default(_service_dict(traffic=[{"percent": 90}]) | {"kind": "Service"})
    good = default(_service_dict() | {"kind": "Service"})
    (status_bad, denied), (status_good, allowed) = await asyncio.to_thread(
        _exchange,
        port,
        tls,
        [("POST", "/validate", _review(bad)), ("POST", "/validate", _review(good))],
    )
    assert status_bad == status_good == 200
    assert denied["apiVersion"] == "admission.k8s.io/v1"
    assert denied["kind"] == "AdmissionReview"
    assert denied["response"]["uid"] == "0df28fbd-5f5f-11e8-bc74-36e6bb280816"
    assert denied["response"]["allowed"] is False
    assert denied["response"]["status"]["message"] == (
        "validation failed: spec.traffic: Traffic targets sum to 90, want 100"
    )
    assert allowed["response"] == {"uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816", "allowed": True}


async def test_admission_review_mutate(https):
    port, tls = https
    obj = _service_dict() | {"kind": "Service", "apiVersion": "serving.knative.dev/v1"}
    [(status, answer)] = await asyncio.to_thread(
        _exchange, port, tls, [("POST", "/mutate", _review(obj))]
    )
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "add", "path": "/metadata/namespace", "value": "default"} in patch
    assert jsonpatch.apply(obj, patch) == default(obj)


async def test_https_errors_and_health(https):
    port, tls = https
    answers = await asyncio.to_thread(
        _exchange,
        port,
        tls,
        [
            ("POST", "/validate", b"{not json"),
            ("POST", "/validate", b'{"kind": "AdmissionReview"}'),
            ("GET", "/validate", None),
            ("POST", "/convert", b"{}"),
            ("GET", "/healthz", None),
        ],
    )
    assert [status for status, _ in answers] == [400, 400, 405, 404, 200]
    assert answers[1][1] == {"error": "not an AdmissionReview request (request.uid missing)"}
    assert answers[4][1] == {"status": "ok"}


async def test_https_refuses_plain_tls_less_clients(https):
    port, _ = https

    def plain() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse()
        finally:
            conn.close()

    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        await asyncio.to_thread(plain)
