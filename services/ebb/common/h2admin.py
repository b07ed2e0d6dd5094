"""A service's admin gRPC server without grpcio: `grpc.health.v1.Health` (Check, Watch)
and server reflection (`grpc.reflection.v1alpha`), on `ebb.common.h2server`.

Why: DESIGN.md wants every service, the queue included, to answer health and reflection
(`grpcurl -plaintext ADDR list`), and a queue runs once per app instance: grpcio costs it
about 12 MB of resident memory (issue #8 wants an idle queue at 40 MB or less). Only the
protobuf modules of grpcio-health-checking and grpcio-reflection are used here
(`health_pb2`, `reflection_pb2`, which do not import grpc); their servicers
(`grpc_health.v1.health`, `grpc_reflection.v1alpha.reflection`) import grpc and are not.

The semantics are those servicers':
- Check: the service's status; NOT_FOUND for a service never set.
- List (newer than grpcio's servicer, which leaves it UNIMPLEMENTED): every status.
- Watch: the current status (SERVICE_UNKNOWN for a service never set), then each change,
  until the client cancels or the server stops.
- ServerReflectionInfo: list_services, file_by_filename, file_containing_symbol,
  file_containing_extension, all_extension_numbers_of_type, each answered from the default
  descriptor pool with the file and its transitive dependencies; what is not found is an
  ErrorResponse NOT_FOUND, a request of no known kind INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from ebb.common.h2server import (
    GRPC_INTERNAL,
    GRPC_NOT_FOUND,
    GRPC_OK,
    H2Port,
    Handler,
    Stream,
)

if TYPE_CHECKING:
    from ebb.common.tracing import Tracing

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
CHECK_PATH = f"/{HEALTH_SERVICE}/Check".encode()
LIST_PATH = f"/{HEALTH_SERVICE}/List".encode()
WATCH_PATH = f"/{HEALTH_SERVICE}/Watch".encode()
REFLECTION_PATH = f"/{REFLECTION_SERVICE}/ServerReflectionInfo".encode()

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# gRPC's codes and names as grpcio's reflection puts them in an ErrorResponse.
_NOT_FOUND = (GRPC_NOT_FOUND, "not found")
_INVALID_ARGUMENT = (3, "invalid argument")


def _decoder(message_type) -> Callable[[bytes], Any]:
    """A request parser that returns None for bytes that do not parse (the call then ends
    with INTERNAL, as grpcio's does when a deserializer fails)."""

    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception:  # DecodeError, or whatever the parser raises on garbage
            return None

    return decode


def _status_message(status: int) -> bytes:
    return health_pb2.HealthCheckResponse(status=status).SerializeToString()


class Health:
    """The statuses by service name ("" is the whole server) and the open Watch calls."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._watchers: dict[str, set[_Watch]] = {}
        self._shutting_down = False

    def get(self, service: str) -> int | None:
        return self._status.get(service)

    def statuses(self) -> dict[str, int]:
        return dict(self._status)

    def set(self, service: str, status: int) -> None:
        """Set a service's status and tell its watchers; ignored once shutting down."""
        if self._shutting_down:
            return
        self._set(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good (later `set`s are ignored)."""
        if self._shutting_down:
            return
        for service in list(self._status):
            self._set(service, NOT_SERVING)
        self._shutting_down = True

    def _set(self, service: str, status: int) -> None:
        self._status[service] = status
        for watcher in list(self._watchers.get(service, ())):
            watcher.send(status)

    def watch(self, watcher: _Watch) -> None:
        self._watchers.setdefault(watcher.service, set()).add(watcher)
        watcher.send(self._status.get(watcher.service, SERVICE_UNKNOWN))

    def unwatch(self, watcher: _Watch) -> None:
        watchers = self._watchers.get(watcher.service)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.service]


class _Unary(Handler):
    """A call with exactly one request message: `answer(request)` once the client has
    ended its side."""

    __slots__ = ("stream", "request")

    def __init__(self, stream: Stream) -> None:
        super().__init__(stream)
        self.request = None

    def on_message(self, message) -> None:
        if self.stream.done:
            return
        if message is None:
            self.stream.finish(GRPC_INTERNAL, "the request message did not decode")
        elif self.request is not None:
            self.stream.finish(GRPC_INTERNAL, "more than one request message")
        else:
            self.request = message

    def on_end(self) -> None:
        if self.request is None:
            self.stream.finish(GRPC_INTERNAL, "no request message")
        else:
            self.answer(self.request)

    def answer(self, request) -> None:
        raise NotImplementedError


class _HealthCall(_Unary):
    __slots__ = ("_health",)
    decode = staticmethod(_decoder(health_pb2.HealthCheckRequest))

    def __init__(self, stream: Stream, health: Health) -> None:
        super().__init__(stream)
        self._health = health


class _Check(_HealthCall):
    __slots__ = ()

    def answer(self, request: health_pb2.HealthCheckRequest) -> None:
        status = self._health.get(request.service)
        if status is None:
            self.stream.finish(GRPC_NOT_FOUND, f"unknown service {request.service[:200]}")
        else:
            self.stream.reply(_status_message(status))


class _List(_HealthCall):
    __slots__ = ()
    decode = staticmethod(_decoder(health_pb2.HealthListRequest))

    def answer(self, request: health_pb2.HealthListRequest) -> None:
        response = health_pb2.HealthListResponse()
        for service, status in self._health.statuses().items():
            response.statuses[service].status = status
        self.stream.reply(response.SerializeToString())


class _Watch(_HealthCall):
    """Server-streaming: the current status, then each change, until the client cancels
    (`on_close`) or the server stops (`on_shutdown`: UNAVAILABLE)."""

    __slots__ = ("service", "_last")

    def __init__(self, stream: Stream, health: Health) -> None:
        super().__init__(stream, health)
        self.service = ""
        self._last: int | None = None

    def answer(self, request: health_pb2.HealthCheckRequest) -> None:
        self.service = request.service
        self._health.watch(self)

    def send(self, status: int) -> None:
        if status != self._last:  # a status set again is not news (as grpcio's aio servicer)
            self._last = status
            self.stream.send_message(_status_message(status))

    def on_close(self, error: str | None) -> None:
        self._health.unwatch(self)


class Reflection:
    """Answers to reflection requests from a descriptor pool (grpcio's `_base`)."""

    def __init__(self, service_names: Iterable[str], pool=None) -> None:
        self.service_names = tuple(sorted(service_names))
        self._pool = pool if pool is not None else descriptor_pool.Default()

    def answer(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        pool = self._pool
        try:
            if kind == "file_by_filename":
                return self._files(request, pool.FindFileByName(request.file_by_filename))
            if kind == "file_containing_symbol":
                symbol = request.file_containing_symbol
                return self._files(request, pool.FindFileContainingSymbol(symbol))
            if kind == "file_containing_extension":
                wanted = request.file_containing_extension
                message = pool.FindMessageTypeByName(wanted.containing_type)
                extension = pool.FindExtensionByNumber(message, wanted.extension_number)
                return self._files(request, pool.FindFileContainingSymbol(extension.full_name))
            if kind == "all_extension_numbers_of_type":
                message = pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(ext.number for ext in pool.FindAllExtensions(message))
                return reflection_pb2.ServerReflectionResponse(
                    all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                    original_request=request,
                )
        except KeyError:
            return self._error(request, _NOT_FOUND)
        if kind == "list_services":
            services = [reflection_pb2.ServiceResponse(name=name) for name in self.service_names]
            return reflection_pb2.ServerReflectionResponse(
                list_services_response=reflection_pb2.ListServiceResponse(service=services),
                original_request=request,
            )
        return self._error(request, _INVALID_ARGUMENT)

    @staticmethod
    def _files(request, descriptor) -> reflection_pb2.ServerReflectionResponse:
        """The file and every file it depends on, transitively, each serialised once."""
        files, todo = {}, [descriptor]
        while todo:
            file = todo.pop()
            if file.name not in files:
                files[file.name] = file
                todo.extend(file.dependencies)
        serialized = []
        for file in files.values():
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            serialized.append(proto.SerializeToString())
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=serialized
            ),
            original_request=request,
        )

    @staticmethod
    def _error(request, error: tuple[int, str]) -> reflection_pb2.ServerReflectionResponse:
        return reflection_pb2.ServerReflectionResponse(
            error_response=reflection_pb2.ErrorResponse(
                error_code=error[0], error_message=error[1]
            ),
            original_request=request,
        )


class _ReflectionCall(Handler):
    """Bidi: each request is answered at once, in order; the client's end ends the call."""

    __slots__ = ("stream", "_reflection")
    decode = staticmethod(_decoder(reflection_pb2.ServerReflectionRequest))

    def __init__(self, stream: Stream, reflection: Reflection) -> None:
        super().__init__(stream)
        self._reflection = reflection

    def on_message(self, request) -> None:
        if self.stream.done:
            return
        if request is None:
            self.stream.finish(GRPC_INTERNAL, "the request message did not decode")
            return
        self.stream.send_message(self._reflection.answer(request).SerializeToString())

    def on_end(self) -> None:
        self.stream.finish(GRPC_OK)


class AdminServer:
    """Health and reflection on one port, as `ebb.common.server.ServiceCore` serves them
    with grpcio: `await start(host, port)`, `set_serving(bool)`, `await close()`.

    `services` are the other service names a process registers (listed by reflection, and
    given a health status of their own); a queue has none.
    """

    def __init__(
        self, services: Iterable[str] = (), *, tracing: Tracing | None = None, pool=None
    ) -> None:
        self._services = list(services)
        self.health = Health()
        self.reflection = Reflection({*self._services, HEALTH_SERVICE, REFLECTION_SERVICE}, pool)
        health, reflection = self.health, self.reflection
        self.port = H2Port(
            {
                CHECK_PATH: lambda stream: _Check(stream, health),
                LIST_PATH: lambda stream: _List(stream, health),
                WATCH_PATH: lambda stream: _Watch(stream, health),
                REFLECTION_PATH: lambda stream: _ReflectionCall(stream, reflection),
            },
            tracing,
        )
        self.port.name = "admin"

    @property
    def address(self) -> str:
        """`host:port` actually bound (after start)."""
        return self.port.address

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind (OSError if the port is taken) and serve; every service SERVING."""
        address = await self.port.start(host, port)
        self.set_serving(True)
        return address

    def set_serving(self, serving: bool) -> None:
        """The status of the whole server ("") and of every registered service."""
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self._services]:
            self.health.set(name, status)

    async def close(self) -> None:
        """Health NOT_SERVING for good (watchers hear it), then every call ends
        (UNAVAILABLE), GOAWAY, close; idempotent."""
        self.health.enter_graceful_shutdown()
        await self.port.close()
