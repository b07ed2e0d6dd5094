"""The controller's endpoints stream, as the activator follows it (gRPC adapter).

`watch_endpoints` keeps one `EndpointsService.WatchEndpoints` stream open and hands each
message, as plain values, to `apply`. When the stream breaks (the controller restarts) it
reconnects with exponential backoff (capped); the activator keeps what it last knew
meanwhile, and the first message of the new stream is a full snapshot that replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from ebb.api.networking.v1 import endpoints_pb2, endpoints_pb2_grpc
from ebb.common.grpcstream import (
    CHANNEL_OPTIONS,
    INITIAL_BACKOFF_S,
    MAX_BACKOFF_S,
    reconnect_forever,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300  # Knative's timeoutSeconds default, when the controller says 0


@dataclass(frozen=True, slots=True)
class RevisionSpec:
    """What the activator needs to know of one revision (a `RevisionEndpoints`)."""

    namespace: str
    name: str
    addresses: tuple[str, ...] = ()
    not_ready_addresses: tuple[str, ...] = ()
    container_concurrency: int = 0
    timeout_s: int = DEFAULT_TIMEOUT_S
    response_start_timeout_s: int = 0  # 0 = off (timeout_s bounds it)
    idle_timeout_s: int = 0  # 0 = off


RevisionKey = tuple[str, str]  # (namespace, name)
Share = tuple[int, int]  # (this activator's index, how many activators share the instances)
Apply = Callable[[Sequence[RevisionSpec], Sequence[RevisionKey], bool, "Share | None"], None]


def from_proto(
    msg: endpoints_pb2.WatchEndpointsResponse,
) -> tuple[list[RevisionSpec], list[RevisionKey], bool, Share | None]:
    """(revisions, removed, snapshot, share) of one message; negative numbers read as 0;
    share is None when the controller did not count this watcher as an activator (or gave
    an index out of range)."""
    revisions = [
        RevisionSpec(
            namespace=rev.revision.namespace,
            name=rev.revision.name,
            addresses=tuple(rev.addresses),
            not_ready_addresses=tuple(rev.not_ready_addresses),
            container_concurrency=max(rev.container_concurrency, 0),
            timeout_s=rev.timeout_seconds if rev.timeout_seconds > 0 else DEFAULT_TIMEOUT_S,
            response_start_timeout_s=max(rev.response_start_timeout_seconds, 0),
            idle_timeout_s=max(rev.idle_timeout_seconds, 0),
        )
        for rev in msg.revisions
        if rev.revision.namespace and rev.revision.name
    ]
    removed = [(key.namespace, key.name) for key in msg.removed]
    share = None
    if 0 <= msg.activator_index < msg.activator_count:
        share = (msg.activator_index, msg.activator_count)
    return revisions, removed, msg.snapshot, share


async def watch_endpoints(
    target: str,
    apply: Apply,
    *,
    namespace: str = "",
    activator_id: str = "",
    initial_backoff_s: float = INITIAL_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> None:
    """Follow the controller's endpoints at `target` (HOST:PORT) until cancelled.
    `activator_id`: this activator's, so the controller counts it among those sharing the
    instances. `interceptors`: the tracing ones (ebb.common.tracing) when tracing is on."""
    async with grpc.aio.insecure_channel(
        target, options=CHANNEL_OPTIONS, interceptors=list(interceptors) or None
    ) as channel:
        stub = endpoints_pb2_grpc.EndpointsServiceStub(channel)
        request = endpoints_pb2.WatchEndpointsRequest(namespace=namespace, activator_id=activator_id)

        async def stream(progress: Callable[[], None]) -> None:
            call = stub.WatchEndpoints(request)
            try:
                async for msg in call:
                    try:
                        apply(*from_proto(msg))
                    except Exception:  # one bad update must not end the watch
                        log.exception("cannot apply an endpoints update")
                    progress()
            finally:
                call.cancel()

        await reconnect_forever(
            stream,
            what="endpoints stream",
            target=target,
            log=log,
            initial_backoff_s=initial_backoff_s,
            max_backoff_s=max_backoff_s,
        )
