"""The webhook's transports: gRPC AdmissionService and Kubernetes AdmissionReview over HTTPS.

Both only decode a request into Knative's dict form, call the pure code in admission.py,
and encode the answer (STYLE 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from typing import Any

import grpc
from google.protobuf import json_format

from ebb.api.serving.v1 import resources_pb2
from ebb.api.webhook.v1 import admission_pb2, admission_pb2_grpc
from ebb.webhook.admission import AdmissionSettings, default, review_response, validate
from ebb.webhook.metrics import ALLOWED, DENIED, ERROR, WebhookMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = "ebb.api.webhook.v1.AdmissionService"

# Resource oneof field -> Knative kind.
ONEOF_KIND = {
    "service": "Service",
    "configuration": "Configuration",
    "revision": "Revision",
    "route": "Route",
}
KIND_ONEOF = {kind: field for field, kind in ONEOF_KIND.items()}
OPERATIONS = {
    admission_pb2.OPERATION_UNSPECIFIED: "CREATE",
    admission_pb2.OPERATION_CREATE: "CREATE",
    admission_pb2.OPERATION_UPDATE: "UPDATE",
    admission_pb2.OPERATION_DELETE: "DELETE",
}
# proto3 JSON renders int64 as strings; the Knative dict form (and Kubernetes) has numbers.
_INT64_FIELDS = frozenset(
    {
        "generation",
        "observedGeneration",
        "containerConcurrency",
        "timeoutSeconds",
        "responseStartTimeoutSeconds",
        "idleTimeoutSeconds",
        "percent",
    }
)


_INT_TEXT = re.compile(r"-?[0-9]+")


class KindMismatch(ValueError):
    """The resource's `kind` field names another kind than the oneof it was sent in."""


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: int(v)
            if k in _INT64_FIELDS and isinstance(v, str) and _INT_TEXT.fullmatch(v)
            else _ints(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def resource_to_dict(resource: resources_pb2.Resource) -> dict[str, Any] | None:
    """The Knative dict form of a Resource, `kind` filled from the oneof; None when empty.

    Raises KindMismatch when the message's own `kind` contradicts the oneof.
    """
    field = resource.WhichOneof("kind")
    if field is None:
        return None
    obj = _ints(json_format.MessageToDict(getattr(resource, field)))
    kind = ONEOF_KIND[field]
    if obj.get("kind") and obj["kind"] != kind:
        raise KindMismatch(f"invalid value: {obj['kind']} (the resource was sent as a {kind})")
    obj["kind"] = kind
    return obj


def dict_to_resource(obj: dict[str, Any]) -> resources_pb2.Resource:
    """A Resource from the Knative dict form (its `kind` picks the oneof)."""
    field = KIND_ONEOF[obj["kind"]]
    resource = resources_pb2.Resource()
    json_format.ParseDict(obj, getattr(resource, field))
    return resource


class AdmissionServicer(admission_pb2_grpc.AdmissionServiceServicer):
    """gRPC adapter over default() and validate(); counts each answer when given metrics."""

    def __init__(self, settings: AdmissionSettings, metrics: WebhookMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics

    def _count(self, request, action: str, verdict: str) -> None:
        if self._metrics is not None:
            self._metrics.admission(
                kind=ONEOF_KIND.get(request.resource.WhichOneof("kind") or ""),
                operation=OPERATIONS.get(request.operation, "CREATE"),
                action=action,
                verdict=verdict,
                transport="grpc",
            )

    def _decode(
        self, resource, old_resource
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        obj = resource_to_dict(resource)
        old = resource_to_dict(old_resource) if old_resource.WhichOneof("kind") else None
        return obj, old

    async def Default(self, request, context):
        try:
            obj, old = self._decode(request.resource, request.old_resource)
        except KindMismatch as exc:
            self._count(request, "default", ERROR)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"resource.kind: {exc}")
        if obj is None:
            self._count(request, "default", ERROR)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "resource: missing field(s)")
        defaulted = default(obj, old, settings=self._settings)
        try:
            resource = dict_to_resource(defaulted)
        except (
            json_format.ParseError,
            KeyError,
        ) as exc:  # only if a default does not fit the proto
            log.exception("defaulted resource does not fit the proto")
            self._count(request, "default", ERROR)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"defaulted resource does not fit the proto: {exc}"
            )
        self._count(request, "default", ALLOWED)
        return admission_pb2.DefaultResponse(resource=resource)

    async def Validate(self, request, context):
        try:
            obj, old = self._decode(request.resource, request.old_resource)
        except KindMismatch as exc:
            self._count(request, "validate", DENIED)
            error = admission_pb2.FieldError(path="kind", message=str(exc))
            return admission_pb2.ValidateResponse(allowed=False, errors=[error])
        operation = OPERATIONS.get(request.operation, "CREATE")
        errors = validate(obj if obj is not None else {}, old, operation, settings=self._settings)
        log.debug(
            "validated",
            extra={"kind": (obj or {}).get("kind"), "operation": operation, "errors": len(errors)},
        )
        self._count(request, "validate", DENIED if errors else ALLOWED)
        return admission_pb2.ValidateResponse(
            allowed=not errors,
            errors=[admission_pb2.FieldError(path=e.path, message=e.message) for e in errors],
        )


def make_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the AdmissionReview endpoint (HTTP/1.1 only)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
}


class AdmissionReviewServer:
    """HTTPS endpoint for the Kubernetes API server: POST /validate, POST /mutate, GET /healthz.

    A small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies): the
    API server is its only client and sends one AdmissionReview JSON per request.
    """

    def __init__(
        self,
        settings: AdmissionSettings,
        *,
        max_body_bytes: int = 8 * 1024 * 1024,
        idle_timeout_s: float = 120.0,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.bound_port: int | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        """Listen on host:port (TLS unless `tls` is None, which only tests use); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port, ssl=tls)
        self.bound_port = self._server.sockets[0].getsockname()[1]
        log.info(
            "admission review serving",
            extra={"address": f"{host}:{self.bound_port}", "tls": tls is not None},
        )
        return self.bound_port

    async def close(self) -> None:
        """Stop listening and close open connections; idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ssl.SSLError,
        ):
            pass
        except Exception:  # one bad connection must not take the server down
            log.exception("admission review connection failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True when the connection stays open for another."""
        line = await asyncio.wait_for(reader.readline(), self._idle_timeout_s)
        if not line:
            return False
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            await self._respond(writer, 400, {"error": "bad request line"}, keep_alive=False)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            header = await asyncio.wait_for(reader.readline(), self._idle_timeout_s)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await self._respond(
                writer, 411, {"error": "a Content-Length body is required"}, keep_alive=False
            )
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > self._max_body_bytes:
            await self._respond(
                writer,
                413 if length > 0 else 400,
                {"error": "bad Content-Length"},
                keep_alive=False,
            )
            return False
        body = (
            await asyncio.wait_for(reader.readexactly(length), self._idle_timeout_s)
            if length
            else b""
        )
        status, payload = self._route(method, target.split("?", 1)[0], body)
        await self._respond(writer, status, payload, keep_alive=keep_alive)
        return keep_alive

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/healthz":
            return (200, {"status": "ok"}) if method == "GET" else (405, {"error": "use GET"})
        if path not in ("/validate", "/mutate"):
            return 404, {"error": f"no such endpoint {path}"}
        if method != "POST":
            return 405, {"error": "use POST"}
        action = "default" if path == "/mutate" else "validate"
        try:
            review = json.loads(body)
            answer = review_response(review, path[1:], settings=self._settings)
        except ValueError as exc:  # bad JSON or not an AdmissionReview
            self._count(None, None, action, ERROR)
            return 400, {"error": str(exc)}
        response = answer["response"]
        request = review["request"]
        kind = request.get("kind")
        self._count(
            kind.get("kind") if isinstance(kind, dict) else None,
            request.get("operation"),
            action,
            ALLOWED if response["allowed"] else DENIED,
        )
        log.info(
            "admission review",
            extra={
                "action": path[1:],
                "uid": response["uid"],
                "kind": kind.get("kind") if isinstance(kind, dict) else None,
                "operation": request.get("operation"),
                "allowed": response["allowed"],
                "patched": "patch" in response,
            },
        )
        return 200, answer

    def _count(self, kind: object, operation: object, action: str, verdict: str) -> None:
        if self._metrics is not None:
            self._metrics.admission(
                kind=kind, operation=operation, action=action, verdict=verdict, transport="https"
            )

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, payload: Any, *, keep_alive: bool
    ) -> None:
        body = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
