"""gRPC adapters of the controller: the Serving API and the endpoints stream for activators."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from ebb.api.networking.v1 import endpoints_pb2, endpoints_pb2_grpc
from ebb.api.serving.v1 import serving_pb2, serving_pb2_grpc
from ebb.api.webhook.v1 import admission_pb2, admission_pb2_grpc
from ebb.controller.resources import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    KIND_BY_ENUM,
    from_resource,
    key_of,
    kind_of,
    to_resource,
)
from ebb.controller.store import Store, same_content

log = logging.getLogger(__name__)

APPLYABLE = ("Service", "Configuration", "Route")


class Admission:
    """Client of the webhook's AdmissionService (defaulting, then validation)."""

    def __init__(self, address: str, interceptors=()) -> None:
        self._address = address
        self._channel = (
            grpc.aio.insecure_channel(address, interceptors=list(interceptors) or None) if address else None
        )
        self._stub = admission_pb2_grpc.AdmissionServiceStub(self._channel) if self._channel else None

    async def admit(self, obj, old) -> tuple[object, list[str]]:
        """Defaulted object and the list of `path: rule` errors."""
        if self._stub is None:
            return obj, []
        op = admission_pb2.OPERATION_UPDATE if old is not None else admission_pb2.OPERATION_CREATE
        res = to_resource(obj)
        old_res = to_resource(old) if old is not None else None
        defaulted = await self._stub.Default(
            admission_pb2.DefaultRequest(resource=res, old_resource=old_res, operation=op), timeout=10
        )
        verdict = await self._stub.Validate(
            admission_pb2.ValidateRequest(resource=defaulted.resource, old_resource=old_res, operation=op), timeout=10
        )
        errors = [f"{e.path}: {e.message}" if e.path else e.message for e in verdict.errors]
        if not verdict.allowed and not errors:
            errors = ["rejected by the webhook"]
        return from_resource(defaulted.resource) or obj, errors

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _kind(context_kind: int) -> str | None:
    return KIND_BY_ENUM.get(context_kind)


class ServingServicer(serving_pb2_grpc.ServingServiceServicer):
    """ServingService over the Store; the reconcile loop does the rest."""

    def __init__(self, store: Store, admission: Admission, clock=time.time) -> None:
        self._store = store
        self._admission = admission
        self._clock = clock
        self._watchers: set[asyncio.Queue] = set()
        store.subscribe(self._fan_out)

    def _fan_out(self, event) -> None:
        for queue in list(self._watchers):
            queue.put_nowait(event)

    async def Apply(self, request, context):
        obj = from_resource(request.resource)
        if obj is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "resource: exactly one kind must be set")
        kind = kind_of(obj)
        if kind not in APPLYABLE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"kind: {kind} cannot be applied; revisions are created from Configurations and Services",
            )
        if obj.api_version and obj.api_version != API_VERSION:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"apiVersion: must be {API_VERSION}, got {obj.api_version}")
        obj.api_version, obj.kind = API_VERSION, kind
        obj.metadata.namespace = obj.metadata.namespace or DEFAULT_NAMESPACE
        if not obj.metadata.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "metadata.name: Required value")
        old = self._store.get(kind, obj.metadata.namespace, obj.metadata.name)
        try:
            obj, errors = await self._admission.admit(obj, old)
        except grpc.aio.AioRpcError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"webhook unavailable: {exc.details()}")
        if errors:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(errors))
        if request.dry_run:  # what a real apply would say: unchanged when nothing would be
            changed = old is None or not same_content(old, obj)
            return serving_pb2.ApplyResponse(resource=to_resource(obj), created=old is None, changed=changed)
        stored, changed = self._store.put(obj, now_s=self._clock())
        log.info("applied", extra={"resource": str(key_of(stored)), "changed": changed})
        return serving_pb2.ApplyResponse(resource=to_resource(stored), created=old is None, changed=changed)

    async def Get(self, request, context):
        kind = _kind(request.kind)
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: must be set")
        obj = self._store.get(kind, request.namespace or DEFAULT_NAMESPACE, request.name)
        if obj is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'{kind.lower()}s.serving.knative.dev "{request.name}" not found')
        return serving_pb2.GetResponse(resource=to_resource(obj))

    async def List(self, request, context):
        kind = _kind(request.kind)
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: must be set")
        selector = dict(request.label_selector)
        objs = [
            o
            for o in self._store.list(kind, request.namespace or None)
            if all(o.metadata.labels.get(k) == v for k, v in selector.items())
        ]
        return serving_pb2.ListResponse(resources=[to_resource(o) for o in objs])

    async def Delete(self, request, context):
        kind = _kind(request.kind)
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: must be set")
        if self._store.delete(kind, request.namespace or DEFAULT_NAMESPACE, request.name) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'{kind.lower()}s.serving.knative.dev "{request.name}" not found')
        return serving_pb2.DeleteResponse()

    async def Watch(self, request, context):
        kind = _kind(request.kind)
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: must be set")
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        try:
            for obj in self._store.list(kind, request.namespace or None):
                yield serving_pb2.WatchResponse(type=serving_pb2.EVENT_TYPE_ADDED, resource=to_resource(obj))
            types = {
                "ADDED": serving_pb2.EVENT_TYPE_ADDED,
                "MODIFIED": serving_pb2.EVENT_TYPE_MODIFIED,
                "DELETED": serving_pb2.EVENT_TYPE_DELETED,
            }
            while True:
                event = await queue.get()
                if kind_of(event.obj) != kind:
                    continue
                if request.namespace and event.obj.metadata.namespace != request.namespace:
                    continue
                yield serving_pb2.WatchResponse(type=types[event.type], resource=to_resource(event.obj))
        finally:
            self._watchers.discard(queue)


class EndpointsServicer(endpoints_pb2_grpc.EndpointsServiceServicer):
    """Streams each revision's ready queue addresses to activators, and tells each
    activator its share: how many activators watch (by `activator_id`) and its place among
    them, again whenever one comes or goes (see ebb.activator.throttler.assign)."""

    def __init__(self, controller) -> None:
        self._controller = controller
        self._activators: dict[asyncio.Queue, str] = {}  # stream -> its activator's id

    def _share(self, activator_id: str) -> tuple[int, int]:
        ids = sorted(set(self._activators.values()))
        return ids.index(activator_id), len(ids)

    def _activators_changed(self) -> None:
        for queue in self._activators:
            queue.put_nowait(None)  # a message with the new share only

    async def WatchEndpoints(self, request, context):
        queue = self._controller.watch_endpoints()
        activator_id = request.activator_id
        if activator_id:
            self._activators_changed()
            self._activators[queue] = activator_id
        try:
            while True:
                update = await queue.get()
                if activator_id:
                    index, count = self._share(activator_id)
                    share = {"activator_index": index, "activator_count": count}
                else:
                    share = {}
                if update is None:
                    yield endpoints_pb2.WatchEndpointsResponse(**share)
                    continue
                changed, removed, snapshot = update
                msg = endpoints_pb2.WatchEndpointsResponse(snapshot=snapshot, **share)
                for key, view in changed.items():
                    if request.namespace and key.namespace != request.namespace:
                        continue
                    msg.revisions.add(
                        revision=endpoints_pb2.RevisionKey(namespace=key.namespace, name=key.name),
                        addresses=view.addresses,
                        not_ready_addresses=view.not_ready_addresses,
                        container_concurrency=view.container_concurrency,
                        timeout_seconds=view.timeout_s,
                        response_start_timeout_seconds=view.response_start_timeout_s,
                        idle_timeout_seconds=view.idle_timeout_s,
                    )
                for key in removed:
                    if not request.namespace or key.namespace == request.namespace:
                        msg.removed.add(namespace=key.namespace, name=key.name)
                yield msg
        finally:
            self._controller.unwatch_endpoints(queue)
            if self._activators.pop(queue, None) is not None:
                self._activators_changed()

