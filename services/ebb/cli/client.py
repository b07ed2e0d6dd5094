"""A blocking gRPC client for the controller's ServingService, with errors mapped to one line."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from ebb.api.serving.v1 import resources_pb2, serving_pb2, serving_pb2_grpc
from ebb.cli.errors import CliError

DEFAULT_TIMEOUT_S = 15.0

KIND_NAMES = {
    resources_pb2.KIND_SERVICE: "service",
    resources_pb2.KIND_CONFIGURATION: "configuration",
    resources_pb2.KIND_REVISION: "revision",
    resources_pb2.KIND_ROUTE: "route",
}


def rpc_error(exc: grpc.RpcError, address: str, what: str = "") -> CliError:
    """A CliError that says what went wrong in words a user can act on."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach the controller at {address} (is `ebb up` running?)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"the controller at {address} did not answer in time{f' ({what})' if what else ''}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CliError(f"the server at {address} does not implement {what or 'this call'} (is it an Ebb controller?)")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
        return CliError(details or (what or code.name.lower()))
    name = code.name if code is not None else "UNKNOWN"
    return CliError(f"{what + ': ' if what else ''}{name}: {details}".rstrip(": "))


class ServingClient:
    """ServingService over one insecure channel; every method raises CliError on failure."""

    def __init__(self, address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = serving_pb2_grpc.ServingServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def apply(self, resource: resources_pb2.Resource, dry_run: bool = False) -> serving_pb2.ApplyResponse:
        request = serving_pb2.ApplyRequest(resource=resource, dry_run=dry_run)
        return self._call(self._stub.Apply, request, "Apply")

    def get(self, kind: int, name: str, namespace: str = "default") -> resources_pb2.Resource:
        request = serving_pb2.GetRequest(kind=kind, namespace=namespace, name=name)
        return self._call(self._stub.Get, request, "Get").resource

    def find(self, kind: int, name: str, namespace: str = "default") -> resources_pb2.Resource | None:
        """Like get(), but None when the resource does not exist."""
        try:
            return self._stub.Get(
                serving_pb2.GetRequest(kind=kind, namespace=namespace, name=name), timeout=self.timeout_s
            ).resource
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise rpc_error(exc, self.address, "Get") from None

    def list(
        self, kind: int, namespace: str = "", labels: Mapping[str, str] | None = None
    ) -> list[resources_pb2.Resource]:
        request = serving_pb2.ListRequest(kind=kind, namespace=namespace, label_selector=dict(labels or {}))
        return list(self._call(self._stub.List, request, "List").resources)

    def delete(self, kind: int, name: str, namespace: str = "default") -> None:
        request = serving_pb2.DeleteRequest(kind=kind, namespace=namespace, name=name)
        try:
            self._stub.Delete(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise CliError(f'{KIND_NAMES.get(kind, "resource")} "{name}" not found in namespace {namespace}') from None
            raise rpc_error(exc, self.address, "Delete") from None

    def _call(self, method, request, what: str):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, what) from None
