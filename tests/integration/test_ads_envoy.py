"""A real Envoy takes its gateway config from the in-process ADS server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy_helpers import HOST, EnvoyProcess, eventually, http_get, start_upstream
from helpers import free_port

from ebb.controller.snapshot import (
    CLUSTER_TYPE,
    ROUTE_TYPE,
    ClusterSpec,
    Endpoint,
    GatewaySpec,
    RouteTarget,
    Snapshot,
    VirtualHostSpec,
    build_snapshot,
)
from ebb.controller.xds import AdsServer

HELLO = "hello.default.localhost"
# Bounds for things that take milliseconds when all is well; they only stop a broken
# run from hanging.
DEADLINE_S = 15.0


async def start_ads(port: int = 0) -> tuple[AdsServer, grpc.aio.Server, int]:
    ads = AdsServer()
    server = grpc.aio.server()
    ads.add_to_server(server)
    bound = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return ads, server, bound


@dataclass
class Gateway:
    ads: AdsServer
    grpc_server: grpc.aio.Server
    ads_port: int
    envoy: EnvoyProcess
    listener_port: int
    servers: list[asyncio.Server] = field(default_factory=list)

    async def restart_ads(self) -> None:
        """Stop the ADS server (Envoy's stream breaks) and serve again on the same port
        with a fresh AdsServer, as a restarted controller would."""
        await self.grpc_server.stop(None)
        self.ads, self.grpc_server, _ = await start_ads(self.ads_port)

    async def upstream(self, body: bytes) -> int:
        server, port = await start_upstream(body)
        self.servers.append(server)
        return port

    def spec(
        self,
        routes: dict[str, list[tuple[str, int]]],
        clusters: dict[str, int],
        headers: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 30.0,
    ) -> GatewaySpec:
        return GatewaySpec(
            listener_port=self.listener_port,
            virtual_hosts=tuple(
                VirtualHostSpec(
                    name=host,
                    domains=(host,),
                    targets=tuple(RouteTarget(c, w) for c, w in targets),
                    timeout_s=timeout_s,
                    request_headers_to_add=headers,
                )
                for host, targets in routes.items()
            ),
            clusters=tuple(
                ClusterSpec(name, (Endpoint(HOST, port),)) for name, port in clusters.items()
            ),
        )

    async def apply(self, snapshot: Snapshot) -> None:
        self.ads.set_snapshot(snapshot)
        acked = await self.ads.wait_snapshot_acked(snapshot, DEADLINE_S)
        assert acked, f"snapshot {snapshot.version} not ACKed; envoy log:\n{self.envoy.log_tail()}"

    async def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        return await http_get(self.listener_port, host, path)

    async def serves(self, host: str, status: int, body: bytes | None = None) -> bool:
        async def probe() -> bool:
            got_status, got_body = await self.get(host)
            return got_status == status and (body is None or got_body == body)

        return await eventually(probe, DEADLINE_S)


@pytest.fixture
async def gateway(tmp_path: Path):
    ads, server, ads_port = await start_ads()
    gw = Gateway(ads, server, ads_port, EnvoyProcess(tmp_path, ads_port), free_port())
    try:
        gw.envoy.start()
        yield gw
    finally:
        await gw.envoy.stop()  # first: its keep-alive connections hold the upstreams
        for upstream in gw.servers:
            upstream.close()
            await upstream.wait_closed()
        await gw.grpc_server.stop(None)


async def test_host_routes_to_upstream_and_404_once_removed(gateway: Gateway) -> None:
    port = await gateway.upstream(b"hello")
    first = build_snapshot(
        gateway.spec({HELLO: [("default/hello-00001", 100)]}, {"default/hello-00001": port})
    )
    await gateway.apply(first)

    assert await gateway.serves(HELLO, 200, b"hello"), gateway.envoy.log_tail()
    assert await gateway.get(f"{HELLO}:{gateway.listener_port}") == (
        200,
        b"hello",
    )  # host:* variant
    assert (await gateway.get("other.default.localhost"))[0] == 404

    empty = build_snapshot(gateway.spec({}, {}))
    await gateway.apply(empty)
    assert await gateway.serves(HELLO, 404)
    # The stale cluster was removed too (last, after the routes were ACKed).
    _, clusters = await http_get(gateway.envoy.admin_port, HOST, "/clusters")
    assert b"default/hello-00001" not in clusters
    stats = gateway.ads.stats()
    assert stats["nacks"] == {"cds": 0, "eds": 0, "lds": 0, "rds": 0}
    assert stats["streams"] == 1


async def test_nack_is_recorded_not_resent_and_old_config_keeps_serving(gateway: Gateway) -> None:
    port = await gateway.upstream(b"hello")
    clusters = {"hello": port}
    await gateway.apply(build_snapshot(gateway.spec({HELLO: [("hello", 100)]}, clusters)))
    assert await gateway.serves(HELLO, 200, b"hello"), gateway.envoy.log_tail()

    # Envoy refuses routes that rewrite Host; our snapshot checks do not know that rule.
    bad = build_snapshot(
        gateway.spec({HELLO: [("hello", 100)]}, clusters, headers=(("host", "evil"),))
    )
    gateway.ads.set_snapshot(bad)
    assert await gateway.ads.wait_nacked(ROUTE_TYPE, bad.version_of(ROUTE_TYPE), DEADLINE_S)
    nack = gateway.ads.last_nack()
    assert nack is not None
    assert (nack.type_url, nack.version, nack.node_id) == (
        ROUTE_TYPE,
        bad.version_of(ROUTE_TYPE),
        "test-gateway",
    )
    assert "host" in nack.message
    pushes = gateway.ads.stats()["pushes"]["rds"]

    # Envoy keeps the previous routes and we do not send the rejected ones again.
    assert await gateway.serves(HELLO, 200, b"hello")
    stats = gateway.ads.stats()
    assert stats["nacks"]["rds"] == 1
    assert stats["pushes"]["rds"] == pushes

    # A changed snapshot is sent, and taken.
    fixed = build_snapshot(gateway.spec({HELLO: [("hello", 100)]}, clusters, timeout_s=20.0))
    await gateway.apply(fixed)
    assert await gateway.serves(HELLO, 200, b"hello")
    assert gateway.ads.stats()["pushes"]["rds"] == pushes + 1


async def test_weighted_split_reaches_both_upstreams(gateway: Gateway) -> None:
    blue, green = await gateway.upstream(b"blue"), await gateway.upstream(b"green")
    snapshot = build_snapshot(
        gateway.spec({HELLO: [("blue", 50), ("green", 50)]}, {"blue": blue, "green": green})
    )
    await gateway.apply(snapshot)
    assert await gateway.ads.wait_acked(CLUSTER_TYPE, snapshot.version_of(CLUSTER_TYPE), DEADLINE_S)

    seen: set[bytes] = set()

    async def both_seen() -> bool:
        status, body = await gateway.get(HELLO)
        if status == 200:
            seen.add(body)
        return seen == {b"blue", b"green"}

    # At 50/50 the chance of one colour missing after a few hundred requests is nil.
    assert await eventually(both_seen, DEADLINE_S, interval_s=0.0), (seen, gateway.envoy.log_tail())


async def test_delta_xds_is_unimplemented() -> None:
    server = grpc.aio.server()
    AdsServer().add_to_server(server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            # Envoy would send a DeltaDiscoveryRequest first; the server answers the opened
            # stream with its status, so the test only opens it and reads that status.
            # (Writing a request races the server's close: the client's send then fails
            # with INTERNAL before the status is read.)
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)


async def test_envoy_resyncs_with_a_restarted_ads_server(gateway: Gateway) -> None:
    port = await gateway.upstream(b"hello")
    await gateway.apply(build_snapshot(gateway.spec({HELLO: [("hello", 100)]}, {"hello": port})))
    assert await gateway.serves(HELLO, 200, b"hello"), gateway.envoy.log_tail()

    # Envoy reconnects to the new server quoting the versions and nonces of the old one.
    await gateway.restart_ads()
    moved = await gateway.upstream(b"moved")
    snapshot = build_snapshot(gateway.spec({HELLO: [("hello", 100)]}, {"hello": moved}))
    await gateway.apply(snapshot)
    assert await gateway.serves(HELLO, 200, b"moved"), gateway.envoy.log_tail()
