"""The ADS server Envoy takes its config from: state-of-the-world xDS over one stream.

Two halves (STYLE 2, 12): `StreamState` is the protocol, pure (no grpc, no clock):
a DiscoveryRequest or a new snapshot in, the DiscoveryResponses to send out. `AdsServer`
is the grpc.aio adapter: one StreamState per Envoy stream, plus waits on ACKs.

Protocol, per stream and per type:
- a request without a nonce (or one naming a nonce this stream never sent) subscribes and
  gets the type's current resources;
- a request naming the last nonce sent is the answer to it: with `error_detail` a NACK
  (recorded; Envoy keeps what it had; that response is not sent again until the snapshot
  changes), else with `version_info` equal to the version sent an ACK; either way its
  `resource_names` are the client's current subscription (EDS and RDS), which may ask
  for more;
- a request naming an older nonce is stale (a newer response is on its way) and ignored.

Make-before-break (STYLE 7): types are sent in the order clusters, endpoints, listeners,
routes, and a type is only sent once every earlier type is ACKed at its current version
(and, for endpoints, covers every subscribed cluster), so a route never reaches Envoy
before its cluster is warm. Clusters that leave the snapshot stay in CDS (as the union of
what Envoy may have and the new clusters) until Envoy ACKs the new routes; only then is
CDS sent without them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from ebb.controller.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_NAMES,
    TYPE_ORDER,
    Snapshot,
    content_version,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CONTROL_PLANE_ID = "ebb-controller"
# Types whose requests name the resources wanted; clusters and listeners are always
# sent whole (state of the world), whatever a request names.
_NAMED_TYPES = frozenset({ENDPOINT_TYPE, ROUTE_TYPE})
_RECENT_NACKS = 64


@dataclass(frozen=True)
class Nack:
    """One rejected response, as Envoy reported it."""

    node_id: str
    type_url: str
    version: str
    nonce: str
    code: int
    message: str


@dataclass
class XdsStats:
    """Counters by short type name (cds, eds, lds, rds), shared by all streams."""

    pushes: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)
    nacks: Counter[str] = field(default_factory=Counter)


@dataclass
class _TypeState:
    subscribed: bool = False
    names: frozenset[str] | None = None  # None: everything (wildcard)
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_items: Mapping[str, any_pb2.Any] = field(default_factory=dict)
    answered_nonce: str | None = None  # last nonce we took an ACK/NACK for
    acked_version: str | None = None
    acked_names: frozenset[str] = frozenset()
    nacked_version: str | None = None  # not sent again until the snapshot changes
    rejected: bool = False  # the last response sent was NACKed: Envoy has the acked one


class StreamState:
    """The xDS protocol of one ADS stream. Pure: requests and snapshots in, responses out."""

    def __init__(
        self,
        snapshot: Snapshot | None = None,
        *,
        stats: XdsStats | None = None,
        stream_id: str = "",
    ) -> None:
        self._snapshot = snapshot
        self._stats = stats if stats is not None else XdsStats()
        self._stream_id = stream_id
        self._types = {t: _TypeState() for t in TYPE_ORDER}
        self._nonces = itertools.count(1)
        # Clusters Envoy has or may have (sent, and not known to be gone): the base of the
        # make-before-break union.
        self._client_clusters: dict[str, any_pb2.Any] = {}
        # Clusters no longer in the snapshot, kept in CDS until the new routes are ACKed.
        self._stale_clusters: dict[str, any_pb2.Any] = {}
        # A new or changed cluster warms again and needs its endpoints sent again.
        self._refresh_endpoints = False
        self.node_id = ""
        self.last_nack: Nack | None = None

    # ------------------------------------------------------------------ inputs

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        if request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        st = self._types.get(type_url)
        if st is None:
            log.debug("xds: ignoring request for unserved type", extra={"type_url": type_url})
            return []
        nonce = request.response_nonce
        if nonce and st.sent_nonce is not None:
            if nonce != st.sent_nonce:
                log.debug(
                    "xds: stale nonce ignored",
                    extra={"type": TYPE_NAMES[type_url], "nonce": nonce, "current": st.sent_nonce},
                )
                return []
            if nonce != st.answered_nonce:  # later requests with it only change subscriptions
                st.answered_nonce = nonce
                self._take_answer(type_url, st, request)
            self._subscribe(st, type_url, request.resource_names)
            return self._pump()
        # Initial request: a new subscription, or Envoy back with a nonce of another stream.
        self._subscribe(st, type_url, request.resource_names)
        st.subscribed = True
        return self._pump(force=type_url)

    def on_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        if self._snapshot is not None and snapshot.version == self._snapshot.version:
            return []
        self._snapshot = snapshot
        for st in self._types.values():
            st.nacked_version = None  # a changed snapshot may be tried again
        new = snapshot.items(CLUSTER_TYPE)
        self._stale_clusters = {n: a for n, a in self._client_clusters.items() if n not in new}
        return self._pump()

    # ------------------------------------------------------------------ queries

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def stats(self) -> XdsStats:
        return self._stats

    def acked_version(self, type_url: str) -> str | None:
        return self._types[type_url].acked_version

    def sent_version(self, type_url: str) -> str | None:
        return self._types[type_url].sent_version

    def is_acked(self, snapshot: Snapshot) -> bool:
        """This client has ACKed every type of `snapshot` (stale clusters removed included),
        and the endpoints and routes it ACKed cover everything it subscribes to."""
        for type_url in TYPE_ORDER:
            st = self._types[type_url]
            items = snapshot.items(type_url)
            if not st.subscribed:
                if items:
                    return False
                continue  # e.g. no clusters: Envoy never asks for endpoints
            if st.acked_version != snapshot.version_of(type_url):
                return False
            if not set(self._subset(st, type_url, items)) <= st.acked_names:
                return False
        return True

    # ------------------------------------------------------------------ protocol

    def _take_answer(
        self, type_url: str, st: _TypeState, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        name = TYPE_NAMES[type_url]
        detail = request.error_detail
        if request.HasField("error_detail") and (detail.code or detail.message):
            st.nacked_version = st.sent_version
            st.rejected = True
            self.last_nack = Nack(
                node_id=self.node_id,
                type_url=type_url,
                version=st.sent_version or "",
                nonce=st.sent_nonce or "",
                code=detail.code,
                message=detail.message,
            )
            self._stats.nacks[name] += 1
            # Envoy keeps what it had; for clusters it may have taken the valid ones, so
            # the clusters it may have only grow here (they shrink on an ACK).
            log.warning(
                "xds: NACK",
                extra={
                    "stream": self._stream_id,
                    "node": self.node_id,
                    "type": name,
                    "version": st.sent_version,
                    "acked_version": st.acked_version,
                    "error": detail.message,
                },
            )
        elif request.version_info == st.sent_version:
            st.acked_version = st.sent_version
            st.acked_names = frozenset(st.sent_items)
            self._stats.acks[name] += 1
            if type_url == CLUSTER_TYPE:
                self._client_clusters = dict(st.sent_items)
            log.debug(
                "xds: ACK",
                extra={
                    "stream": self._stream_id,
                    "node": self.node_id,
                    "type": name,
                    "version": st.acked_version,
                },
            )
        else:
            log.debug(
                "xds: answer with an unexpected version ignored",
                extra={"type": name, "version": request.version_info, "sent": st.sent_version},
            )

    @staticmethod
    def _subscribe(st: _TypeState, type_url: str, resource_names) -> None:
        if type_url not in _NAMED_TYPES:
            st.names = None
            return
        names = frozenset(resource_names)
        if "*" in names:
            st.names = None
        elif names:
            st.names = names
        elif st.names is not None:
            st.names = frozenset()  # named before, names nothing now: unsubscribed from all
        # else: empty from the start means everything

    @staticmethod
    def _subset(
        st: _TypeState, type_url: str, items: Mapping[str, any_pb2.Any]
    ) -> Mapping[str, any_pb2.Any]:
        if type_url not in _NAMED_TYPES or st.names is None:
            return items
        return {n: items[n] for n in sorted(st.names) if n in items}

    def _wanted(self, type_url: str) -> tuple[str, Mapping[str, any_pb2.Any]]:
        """(version, resources) this client should have now for `type_url`."""
        assert self._snapshot is not None
        items = self._snapshot.items(type_url)
        version = self._snapshot.version_of(type_url)
        if type_url == CLUSTER_TYPE and self._stale_clusters:
            items = dict(sorted({**self._stale_clusters, **items}.items()))
            version = content_version(items)
        return version, self._subset(self._types[type_url], type_url, items)

    def _settled(self, type_url: str) -> bool:
        st = self._types[type_url]
        if not st.subscribed:
            return True
        version, items = self._wanted(type_url)
        return st.acked_version == version and set(items) <= st.acked_names

    def _pump(self, force: str | None = None) -> list[discovery_pb2.DiscoveryResponse]:
        """Send what is due: clusters with their endpoints first, then listener and routes
        once the clusters are in place (make-before-break)."""
        if self._snapshot is None:
            return []
        if self._stale_clusters and self._settled(ROUTE_TYPE):
            # Envoy's routes are the snapshot's: nothing can route to the stale clusters.
            self._stale_clusters = {}
        out: list[discovery_pb2.DiscoveryResponse] = []

        def push(type_url: str) -> None:
            resend = type_url == force or (type_url == ENDPOINT_TYPE and self._refresh_endpoints)
            response = self._maybe_push(type_url, resend)
            if response is not None:
                out.append(response)

        # Endpoints are never held back behind the CDS ACK: Envoy itself holds that ACK
        # until new clusters have warmed, and warming needs their endpoints (waiting would
        # stall until Envoy's initial-fetch timeout, 15 s).
        push(CLUSTER_TYPE)
        push(ENDPOINT_TYPE)
        if not (self._settled(CLUSTER_TYPE) and self._settled(ENDPOINT_TYPE)):
            return out
        # Likewise a listener warms until its routes arrive, so LDS and RDS go together,
        # both only after every cluster a route may name is ACKed.
        push(LISTENER_TYPE)
        push(ROUTE_TYPE)
        return out

    @staticmethod
    def _client_has(st: _TypeState, version: str, items: Mapping[str, any_pb2.Any]) -> bool:
        """Envoy has, or is about to get, `items` at `version` (a shrunk subscription
        needs no answer)."""
        if st.rejected:
            return version == st.acked_version and set(items) <= st.acked_names
        return version == st.sent_version and set(items) <= set(st.sent_items)

    def _maybe_push(self, type_url: str, resend: bool) -> discovery_pb2.DiscoveryResponse | None:
        st = self._types[type_url]
        if not st.subscribed:
            return None
        version, items = self._wanted(type_url)
        if version == st.nacked_version:
            return None
        if not resend and self._client_has(st, version, items):
            return None
        nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=list(items.values()),
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID),
        )
        st.sent_version, st.sent_nonce, st.sent_items = version, nonce, dict(items)
        st.rejected = False
        if type_url == CLUSTER_TYPE:
            if any(self._client_clusters.get(n) != a for n, a in items.items()):
                self._refresh_endpoints = True
            self._client_clusters.update(items)
        elif type_url == ENDPOINT_TYPE:
            self._refresh_endpoints = False
        self._stats.pushes[TYPE_NAMES[type_url]] += 1
        log.debug(
            "xds: push",
            extra={
                "stream": self._stream_id,
                "node": self.node_id,
                "type": TYPE_NAMES[type_url],
                "version": version,
                "nonce": nonce,
                "resources": len(items),
            },
        )
        return response


# ---------------------------------------------------------------------------- grpc adapter


@dataclass
class _Stream:
    state: StreamState
    queue: asyncio.Queue[discovery_pb2.DiscoveryResponse | None]
    peer: str


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """`envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world only.

    Call set_snapshot() from the event loop the server runs on; register with
    `ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)` or
    `ads.add_to_server(server)`.
    """

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._stats = XdsStats()
        self._nacks: deque[Nack] = deque(maxlen=_RECENT_NACKS)
        self._changed = asyncio.Event()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current and push it to every connected Envoy (in order)."""
        if self._snapshot is not None and snapshot.version == self._snapshot.version:
            return
        self._snapshot = snapshot
        log.info(
            "xds: new snapshot", extra={"version": snapshot.version, "streams": len(self._streams)}
        )
        for stream in self._streams.values():
            for response in stream.state.on_snapshot(snapshot):
                stream.queue.put_nowait(response)
        self._notify()

    # ------------------------------------------------------------------ waiting

    async def wait_acked(self, type_url: str, version: str, timeout_s: float) -> bool:
        """True once a connected Envoy has ACKed `version` of `type_url`; False on timeout."""
        return await self._wait(
            lambda: any(s.state.acked_version(type_url) == version for s in self._streams.values()),
            timeout_s,
        )

    async def wait_snapshot_acked(self, snapshot: Snapshot, timeout_s: float) -> bool:
        """True once a connected Envoy has ACKed every type of `snapshot` (routes, and
        clusters with the stale ones removed); False on timeout."""
        return await self._wait(
            lambda: any(s.state.is_acked(snapshot) for s in self._streams.values()), timeout_s
        )

    async def wait_nacked(self, type_url: str, version: str, timeout_s: float) -> bool:
        """True once an Envoy has NACKed `version` of `type_url`; False on timeout."""
        return await self._wait(
            lambda: any(n.type_url == type_url and n.version == version for n in self._nacks),
            timeout_s,
        )

    async def _wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changed = self._changed
            if predicate():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return predicate()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------------ observing

    def stats(self) -> dict[str, object]:
        """Counters by short type name: {"pushes": {"cds": 3, ...}, "acks": ..., "nacks": ...,
        "streams": connected streams}."""
        return {
            "pushes": {TYPE_NAMES[t]: self._stats.pushes[TYPE_NAMES[t]] for t in TYPE_ORDER},
            "acks": {TYPE_NAMES[t]: self._stats.acks[TYPE_NAMES[t]] for t in TYPE_ORDER},
            "nacks": {TYPE_NAMES[t]: self._stats.nacks[TYPE_NAMES[t]] for t in TYPE_ORDER},
            "streams": len(self._streams),
        }

    def last_nack(self) -> Nack | None:
        return self._nacks[-1] if self._nacks else None

    # ------------------------------------------------------------------ rpc

    async def StreamAggregatedResources(  # noqa: N802 (grpc method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream_id = next(self._ids)
        stream = _Stream(
            StreamState(self._snapshot, stats=self._stats, stream_id=str(stream_id)),
            asyncio.Queue(),
            context.peer(),
        )
        self._streams[stream_id] = stream
        log.info("xds: stream opened", extra={"stream": stream_id, "peer": stream.peer})
        reader = asyncio.ensure_future(self._read(stream, request_iterator))
        try:
            while (response := await stream.queue.get()) is not None:
                yield response
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
            del self._streams[stream_id]
            self._notify()
            log.info(
                "xds: stream closed", extra={"stream": stream_id, "node": stream.state.node_id}
            )

    async def _read(
        self, stream: _Stream, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> None:
        try:
            async for request in request_iterator:
                before = stream.state.last_nack
                for response in stream.state.on_request(request):
                    stream.queue.put_nowait(response)
                if stream.state.last_nack is not before and stream.state.last_nack is not None:
                    self._nacks.append(stream.state.last_nack)
                self._notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-read, or a bug: end the stream
            log.info("xds: stream read ended", extra={"peer": stream.peer, "error": repr(exc)})
        finally:
            stream.queue.put_nowait(None)

    async def DeltaAggregatedResources(  # noqa: N802 (grpc method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ebb serves state-of-the-world ADS only")
