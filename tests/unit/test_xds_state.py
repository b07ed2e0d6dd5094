"""The ADS protocol of one stream, as a table: requests and snapshots in, responses out.

Each row is (step, expected responses). A response is written "type version names":
`cds S2 a,b` is a CDS response carrying clusters a and b at snapshot S2's CDS version;
`S1|S3` is the make-before-break union of S1's and S3's clusters; `-` is no resources.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from ebb.controller.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_NAMES,
    ClusterSpec,
    Endpoint,
    GatewaySpec,
    RouteTarget,
    Snapshot,
    VirtualHostSpec,
    build_snapshot,
    content_version,
)
from ebb.controller.xds import AdsServer, StreamState, XdsStats

TYPES = {"cds": CLUSTER_TYPE, "eds": ENDPOINT_TYPE, "lds": LISTENER_TYPE, "rds": ROUTE_TYPE}
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def snap(
    clusters: dict[str, int],
    routes: dict[str, str],
    *,
    listener_port: int = 8080,
    timeout_s: float = 300.0,
    connect_timeout_s: float = 1.0,
) -> Snapshot:
    """Clusters name -> endpoint port; routes host -> cluster."""
    return build_snapshot(
        GatewaySpec(
            listener_port=listener_port,
            virtual_hosts=tuple(
                VirtualHostSpec(h, (h,), (RouteTarget(c, 100),), timeout_s=timeout_s)
                for h, c in routes.items()
            ),
            clusters=tuple(
                ClusterSpec(n, (Endpoint("127.0.0.1", p),), connect_timeout_s=connect_timeout_s)
                for n, p in clusters.items()
            ),
        )
    )


SNAPS = {
    "S1": snap({"a": 1}, {"a.test": "a"}),
    # Every type changes: a new cluster b, a route to it, another listener port.
    "S2": snap({"a": 1, "b": 2}, {"a.test": "a", "b.test": "b"}, listener_port=8081),
    # a is gone, b takes its place.
    "S3": snap({"b": 2}, {"b.test": "b"}),
    # Only a's endpoints move.
    "S4": snap({"a": 9}, {"a.test": "a"}),
    # Only the routes change (twice).
    "S5": snap({"a": 1}, {"a.test": "a"}, timeout_s=10),
    "S6": snap({"a": 1}, {"a.test": "a"}, timeout_s=20),
    # Only a's definition changes (same endpoints).
    "S7": snap({"a": 1}, {"a.test": "a"}, connect_timeout_s=2.0),
    # b exists but nothing routes to it.
    "S8": snap({"a": 1, "b": 2}, {"a.test": "a"}),
    "S9": snap({"a": 1, "b": 2, "c": 3}, {"a.test": "a", "b.test": "b", "c.test": "c"}),
    # S5's routes (NACKed in a case below) with S4's endpoints.
    "S10": snap({"a": 9}, {"a.test": "a"}, timeout_s=10),
}


def _name(any_msg) -> str:
    for cls in (cluster_pb2.Cluster, listener_pb2.Listener, route_pb2.RouteConfiguration):
        msg = cls()
        if any_msg.Unpack(msg):
            return msg.name
    cla = endpoint_pb2.ClusterLoadAssignment()
    assert any_msg.Unpack(cla)
    return cla.cluster_name


def _version(type_url: str, label: str) -> str:
    if "|" not in label:
        return SNAPS[label].version_of(type_url)
    items: dict = {}
    for part in label.split("|"):
        items.update(SNAPS[part].items(type_url))
    return content_version(items)


def expect(line: str) -> tuple[str, str, str]:
    short, label, names = line.split()
    return short, _version(TYPES[short], label), names


def describe(response: discovery_pb2.DiscoveryResponse) -> tuple[str, str, str]:
    names = ",".join(sorted(_name(r) for r in response.resources)) or "-"
    return TYPE_NAMES[response.type_url], response.version_info, names


# ---------------------------------------------------------------------------- the runner


@dataclass
class Client:
    """Plays Envoy's side: remembers nonces, accepted versions and subscriptions."""

    state: StreamState = field(default_factory=lambda: StreamState(stats=XdsStats()))
    last: dict[str, discovery_pb2.DiscoveryResponse] = field(default_factory=dict)
    previous: dict[str, discovery_pb2.DiscoveryResponse] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def request(self, type_url: str, nonce: str = "", version: str | None = None, error: str = ""):
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            response_nonce=nonce,
            version_info=self.accepted.get(type_url, "") if version is None else version,
            resource_names=self.names.get(type_url, ()),
        )
        req.node.id = "envoy-1"
        if error:
            req.error_detail.code = 3
            req.error_detail.message = error
        return self.state.on_request(req)


Step = Callable[[Client], list]


def snapshot(label: str) -> Step:
    return lambda c: c.state.on_snapshot(SNAPS[label])


def _names(names: str) -> tuple[str, ...]:
    return tuple(n for n in names.split(",") if n)


def sub(short: str, names: str = "") -> Step:
    """The first request for a type."""

    def step(c: Client) -> list:
        c.names[TYPES[short]] = _names(names)
        return c.request(TYPES[short])

    return step


def ack(short: str) -> Step:
    def step(c: Client) -> list:
        last = c.last[TYPES[short]]
        c.accepted[TYPES[short]] = last.version_info
        return c.request(TYPES[short], nonce=last.nonce)

    return step


def nack(short: str, stale: bool = False) -> Step:
    def step(c: Client) -> list:
        answered = (c.previous if stale else c.last)[TYPES[short]]
        return c.request(TYPES[short], nonce=answered.nonce, error="rejected")

    return step


def resub(short: str, names: str = "") -> Step:
    """Envoy changes what it subscribes to, quoting the last nonce it has seen."""

    def step(c: Client) -> list:
        c.names[TYPES[short]] = _names(names)
        return c.request(TYPES[short], nonce=c.last[TYPES[short]].nonce)

    return step


def stale(short: str, names: str = "") -> Step:
    """A request quoting a nonce older than the last one sent."""

    def step(c: Client) -> list:
        c.names[TYPES[short]] = _names(names)
        return c.request(TYPES[short], nonce=c.previous[TYPES[short]].nonce)

    return step


def raw(type_url: str, nonce: str = "", version: str = "") -> Step:
    def step(c: Client) -> list:
        return c.request(type_url, nonce=nonce, version=version)

    return step


def run(rows: list[tuple[Step, list[str]]]) -> Client:
    client = Client()
    for i, (step, expected) in enumerate(rows):
        responses = step(client)
        for r in responses:
            if r.type_url in client.last:
                client.previous[r.type_url] = client.last[r.type_url]
            client.last[r.type_url] = r
        assert [describe(r) for r in responses] == [expect(e) for e in expected], f"row {i}"
    return client


def connect(label: str, endpoints: str) -> list[tuple[Step, list[str]]]:
    """Envoy's start-up: each type in turn, each ACKed, all at snapshot `label`."""
    return [
        (snapshot(label), []),
        (sub("cds"), [f"cds {label} {endpoints}"]),
        (ack("cds"), []),
        (sub("eds", endpoints), [f"eds {label} {endpoints}"]),
        (ack("eds"), []),
        (sub("lds"), [f"lds {label} gateway"]),
        (ack("lds"), []),
        (sub("rds", "gateway"), [f"rds {label} gateway"]),
        (ack("rds"), []),
    ]


CASES: dict[str, list[tuple[Step, list[str]]]] = {
    "initial subscribe gets each type, ACKs need no answer": connect("S1", "a"),
    "requests before any snapshot wait for it": [
        (sub("cds"), []),
        (snapshot("S1"), ["cds S1 a"]),
        (ack("cds"), []),
        (sub("eds", "a"), ["eds S1 a"]),
    ],
    "a repeated ACK or the same snapshot again sends nothing": connect("S1", "a")
    + [
        (ack("cds"), []),
        (ack("rds"), []),
        (snapshot("S1"), []),
    ],
    "a later type waits for the earlier ones to be ACKed": [
        (snapshot("S1"), []),
        (sub("cds"), ["cds S1 a"]),
        (sub("lds"), []),
        (ack("cds"), ["lds S1 gateway"]),
    ],
    "NACK: recorded, nothing resent": connect("S1", "a")
    + [
        (snapshot("S5"), ["rds S5 gateway"]),
        (nack("rds"), []),
        (resub("rds", "gateway"), []),
        (ack("cds"), []),
        (snapshot("S5"), []),
    ],
    "NACK then a new snapshot is sent": connect("S1", "a")
    + [
        (snapshot("S5"), ["rds S5 gateway"]),
        (nack("rds"), []),
        (snapshot("S6"), ["rds S6 gateway"]),
        (ack("rds"), []),
    ],
    "NACK then a changed snapshot tries that type again": connect("S1", "a")
    + [
        (snapshot("S5"), ["rds S5 gateway"]),
        (nack("rds"), []),
        (snapshot("S10"), ["eds S10 a"]),
        (ack("eds"), ["rds S10 gateway"]),
    ],
    "stale nonces are ignored, ACK or NACK": connect("S1", "a")
    + [
        (snapshot("S4"), ["eds S4 a"]),
        (stale("eds", "a"), []),
        (nack("eds", stale=True), []),
        (ack("eds"), []),
    ],
    "clusters go with their endpoints; listener and routes only after both are ACKed": connect(
        "S1", "a"
    )
    + [
        (snapshot("S2"), ["cds S2 a,b", "eds S2 a"]),
        # Envoy asks for b's endpoints as it takes the clusters, before it reads eds S2.
        (stale("eds", "a,b"), []),
        (ack("eds"), ["eds S2 a,b"]),
        (ack("eds"), []),  # the endpoints are in, the clusters not yet
        (ack("cds"), ["lds S2 gateway", "rds S2 gateway"]),
        (ack("lds"), []),
        (ack("rds"), []),
    ],
    "a new cluster's endpoints are sent before its CDS ACK (Envoy holds it while b warms)": connect(
        "S1", "a"
    )
    + [
        (snapshot("S2"), ["cds S2 a,b", "eds S2 a"]),
        (ack("eds"), []),
        (resub("eds", "a,b"), ["eds S2 a,b"]),  # CDS is not ACKed: b's endpoints go anyway
        (ack("eds"), []),
        (ack("cds"), ["lds S2 gateway", "rds S2 gateway"]),
    ],
    "endpoints asked for after the CDS ACK are sent on the next answer": connect("S1", "a")
    + [
        (snapshot("S2"), ["cds S2 a,b", "eds S2 a"]),
        (ack("cds"), []),
        (stale("eds", "a,b"), []),
        (ack("eds"), ["eds S2 a,b"]),
        (ack("eds"), ["lds S2 gateway", "rds S2 gateway"]),
    ],
    "a removed cluster stays until the new routes are ACKed": connect("S1", "a")
    + [
        # b is new, so endpoints go too: none of S3's are a's, the only ones subscribed.
        (snapshot("S3"), ["cds S1|S3 a,b", "eds S3 -"]),
        (stale("eds", "a,b"), []),
        (ack("eds"), ["eds S3 b"]),
        (ack("eds"), []),
        (ack("cds"), ["rds S3 gateway"]),
        (ack("rds"), ["cds S3 b"]),
        (ack("cds"), []),
        (resub("eds", "b"), []),
    ],
    "a removed cluster stays while the new routes are NACKed": connect("S1", "a")
    + [
        (snapshot("S3"), ["cds S1|S3 a,b", "eds S3 -"]),
        (stale("eds", "a,b"), []),
        (ack("eds"), ["eds S3 b"]),
        (ack("eds"), []),
        (ack("cds"), ["rds S3 gateway"]),
        (nack("rds"), []),
        (resub("eds", "a,b"), []),
        (ack("cds"), []),
        # Back to S1: Envoy's routes (S1's, S3 was refused) match, so a goes at once.
        (snapshot("S1"), ["cds S1 a", "eds S1 a"]),
        (ack("cds"), []),
        (ack("eds"), []),
    ],
    "a cluster no route uses is removed at once": connect("S8", "a,b")
    + [
        (snapshot("S1"), ["cds S1 a", "eds S1 a"]),
        (ack("cds"), []),
        (ack("eds"), []),
        (resub("eds", "a"), []),
    ],
    "a changed cluster gets its endpoints again": connect("S1", "a")
    + [
        (snapshot("S7"), ["cds S7 a", "eds S7 a"]),
        (ack("cds"), []),
        (ack("eds"), []),
    ],
    "endpoints and routes carry only the names subscribed to": [
        (snapshot("S9"), []),
        (sub("cds"), ["cds S9 a,b,c"]),
        (ack("cds"), []),
        (sub("eds", "a"), ["eds S9 a"]),
        (ack("eds"), []),
        (resub("eds", "a,c"), ["eds S9 a,c"]),
        (ack("eds"), []),
        (resub("eds", "c"), []),
        (sub("lds"), ["lds S9 gateway"]),
        (ack("lds"), []),
        (sub("rds", "elsewhere"), ["rds S9 -"]),
        (ack("rds"), []),
        (resub("rds", "gateway"), ["rds S9 gateway"]),
    ],
    "no names or the wildcard name means all": [
        (snapshot("S9"), []),
        (sub("eds"), ["eds S9 a,b,c"]),
        (ack("eds"), []),
        (resub("eds", "*"), []),
        (resub("eds", "b"), []),
    ],
    "a nonce from another stream counts as a first request": [
        (snapshot("S1"), []),
        (raw(CLUSTER_TYPE, nonce="99", version="old"), ["cds S1 a"]),
    ],
    "types we do not serve are ignored": [
        (snapshot("S1"), []),
        (raw(SECRET_TYPE), []),
    ],
}


@pytest.mark.parametrize("rows", list(CASES.values()), ids=list(CASES))
def test_protocol(rows: list[tuple[Step, list[str]]]) -> None:
    run(rows)


# ---------------------------------------------------------------------------- records


def test_acks_nacks_and_pushes_are_counted_once_each() -> None:
    client = run(
        connect("S1", "a")
        + [
            (ack("cds"), []),  # a repeat is a subscription update, not another ACK
            (snapshot("S5"), ["rds S5 gateway"]),
            (nack("rds"), []),
            (nack("rds"), []),
        ]
    )
    stats = client.state.stats
    assert stats.pushes == {"cds": 1, "eds": 1, "lds": 1, "rds": 2}
    assert stats.acks == {"cds": 1, "eds": 1, "lds": 1, "rds": 1}
    assert stats.nacks == {"rds": 1}


def test_nack_keeps_the_acked_version_and_records_the_detail() -> None:
    client = run(connect("S1", "a") + [(snapshot("S5"), ["rds S5 gateway"]), (nack("rds"), [])])
    state = client.state
    assert state.acked_version(ROUTE_TYPE) == SNAPS["S1"].version_of(ROUTE_TYPE)
    assert state.sent_version(ROUTE_TYPE) == SNAPS["S5"].version_of(ROUTE_TYPE)
    nack_ = state.last_nack
    assert nack_ is not None
    assert (nack_.node_id, nack_.type_url, nack_.version, nack_.code, nack_.message) == (
        "envoy-1",
        ROUTE_TYPE,
        SNAPS["S5"].version_of(ROUTE_TYPE),
        3,
        "rejected",
    )
    assert not state.is_acked(SNAPS["S5"])
    assert state.is_acked(SNAPS["S1"])


def test_stale_nack_is_not_recorded() -> None:
    client = run(
        connect("S1", "a") + [(snapshot("S4"), ["eds S4 a"]), (nack("eds", stale=True), [])]
    )
    assert client.state.last_nack is None


def test_snapshot_counts_as_acked_only_once_stale_clusters_are_gone() -> None:
    rows = connect("S1", "a") + [
        (snapshot("S3"), ["cds S1|S3 a,b", "eds S3 -"]),
        (stale("eds", "a,b"), []),
        (ack("eds"), ["eds S3 b"]),
        (ack("eds"), []),
        (ack("cds"), ["rds S3 gateway"]),
        (ack("rds"), ["cds S3 b"]),
    ]
    client = run(rows)
    assert not client.state.is_acked(SNAPS["S3"])
    run_more(client, [(ack("cds"), [])])
    assert client.state.is_acked(SNAPS["S3"])
    assert not client.state.is_acked(SNAPS["S1"])


def test_an_empty_snapshot_is_acked_without_endpoint_requests() -> None:
    empty = build_snapshot(GatewaySpec(8080, (), ()))
    state = StreamState(empty)
    for type_url in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        names = ["gateway"] if type_url == ROUTE_TYPE else []
        (response,) = state.on_request(
            discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        )
        state.on_request(
            discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                response_nonce=response.nonce,
                version_info=response.version_info,
                resource_names=names,
            )
        )
    assert state.is_acked(empty)


def run_more(client: Client, rows: list[tuple[Step, list[str]]]) -> None:
    for i, (step, expected) in enumerate(rows):
        responses = step(client)
        for r in responses:
            client.previous[r.type_url] = client.last[r.type_url]
            client.last[r.type_url] = r
        assert [describe(r) for r in responses] == [expect(e) for e in expected], f"row {i}"


# ---------------------------------------------------------------------------- the adapter


class FakeContext:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


async def test_ads_server_streams_and_reports_acks() -> None:
    """The grpc adapter without a socket: its generator fed from a queue of requests."""
    s1, s5 = SNAPS["S1"], SNAPS["S5"]
    server = AdsServer(s1)
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def request_iterator():
        while (req := await requests.get()) is not None:
            yield req

    stream = server.StreamAggregatedResources(request_iterator(), FakeContext())

    async def answer(
        type_url: str, names: list[str], error: str = ""
    ) -> discovery_pb2.DiscoveryResponse:
        """Send the first request of a type, ACK (or NACK) the response."""
        await requests.put(discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names))
        response = await anext(stream)
        return await reply(response, names, error)

    async def reply(response, names: list[str], error: str = "") -> discovery_pb2.DiscoveryResponse:
        req = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url,
            response_nonce=response.nonce,
            version_info=response.version_info,
            resource_names=names,
        )
        if error:
            req.error_detail.message = error
        await requests.put(req)
        return response

    try:
        await answer(CLUSTER_TYPE, [])
        await answer(ENDPOINT_TYPE, ["a"])
        assert not await server.wait_snapshot_acked(s1, timeout_s=0)
        await answer(LISTENER_TYPE, [])
        await answer(ROUTE_TYPE, ["gateway"])
        assert await server.wait_snapshot_acked(s1, timeout_s=5)
        assert await server.wait_acked(CLUSTER_TYPE, s1.version_of(CLUSTER_TYPE), timeout_s=5)
        assert server.stats()["streams"] == 1

        server.set_snapshot(s5)
        response = await anext(stream)
        assert (response.type_url, response.version_info) == (ROUTE_TYPE, s5.version_of(ROUTE_TYPE))
        await reply(response, ["gateway"], error="no")
        assert await server.wait_nacked(ROUTE_TYPE, s5.version_of(ROUTE_TYPE), timeout_s=5)
        assert server.last_nack() is not None and server.last_nack().message == "no"
        assert not await server.wait_snapshot_acked(s5, timeout_s=0)
        assert server.stats()["nacks"] == {"cds": 0, "eds": 0, "lds": 0, "rds": 1}
        assert server.stats()["acks"] == {"cds": 1, "eds": 1, "lds": 1, "rds": 1}
    finally:
        await requests.put(None)
        async for _ in stream:  # the stream ends when the client closes its side
            pass
    assert server.stats()["streams"] == 0
    assert not await server.wait_acked(CLUSTER_TYPE, s1.version_of(CLUSTER_TYPE), timeout_s=0)
