"""The gateway snapshot: built from specs, named, versioned by content, checked."""

from __future__ import annotations

import dataclasses

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import message

from ebb.controller.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_ORDER,
    ClusterSpec,
    Endpoint,
    GatewaySpec,
    RouteTarget,
    Snapshot,
    SnapshotError,
    VirtualHostSpec,
    build_snapshot,
    check_consistency,
    expand_domains,
)

A = ClusterSpec("default/hello-00001", (Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)))
B = ClusterSpec("default/hello-00002", (Endpoint("127.0.0.1", 9003),), connect_timeout_s=0.25)
HELLO = VirtualHostSpec(
    "default/hello",
    ("hello.default.localhost",),
    (RouteTarget(A.name, 100),),
    timeout_s=42.0,
    request_headers_to_add=(("k-original-host", "hello.default.localhost"),),
)
SPLIT = VirtualHostSpec(
    "default/split",
    ("split.default.localhost",),
    (RouteTarget(A.name, 70), RouteTarget(B.name, 30)),
)
SPEC = GatewaySpec(listener_port=8080, virtual_hosts=(HELLO, SPLIT), clusters=(A, B))


def unpack(snapshot: Snapshot, type_url: str, name: str, cls: type[message.Message]):
    msg = cls()
    assert snapshot.items(type_url)[name].Unpack(msg)
    return msg


def vhosts(snapshot: Snapshot) -> dict[str, route_components_pb2.VirtualHost]:
    config = unpack(snapshot, ROUTE_TYPE, "gateway", route_pb2.RouteConfiguration)
    return {vh.name: vh for vh in config.virtual_hosts}


# ---------------------------------------------------------------------------- building


def test_names_one_resource_per_cluster_and_one_listener_and_route_config() -> None:
    snapshot = build_snapshot(SPEC)
    assert list(snapshot.items(CLUSTER_TYPE)) == [A.name, B.name]
    assert list(snapshot.items(ENDPOINT_TYPE)) == [A.name, B.name]
    assert list(snapshot.items(LISTENER_TYPE)) == ["gateway"]
    assert list(snapshot.items(ROUTE_TYPE)) == ["gateway"]
    for type_url in TYPE_ORDER:
        assert all(a.type_url == type_url for a in snapshot.items(type_url).values())


def test_clusters_are_eds_over_ads_with_http1_keepalive() -> None:
    cluster = unpack(build_snapshot(SPEC), CLUSTER_TYPE, B.name, cluster_pb2.Cluster)
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.ToNanoseconds() == 250_000_000
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    assert options.explicit_http_config.HasField("http_protocol_options")
    assert options.common_http_protocol_options.idle_timeout.seconds > 0


def test_load_assignment_lists_the_endpoints() -> None:
    cla = unpack(build_snapshot(SPEC), ENDPOINT_TYPE, A.name, endpoint_pb2.ClusterLoadAssignment)
    assert cla.cluster_name == A.name
    addresses = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for locality in cla.endpoints
        for e in locality.lb_endpoints
    ]
    assert addresses == [("127.0.0.1", 9001), ("127.0.0.1", 9002)]


def test_cluster_without_endpoints_has_an_empty_assignment() -> None:
    empty = ClusterSpec("idle", ())
    spec = GatewaySpec(8080, (), (empty,))
    cla = unpack(build_snapshot(spec), ENDPOINT_TYPE, "idle", endpoint_pb2.ClusterLoadAssignment)
    assert list(cla.endpoints) == []


def test_listener_uses_rds_over_ads_with_router_and_timeouts() -> None:
    listener = unpack(build_snapshot(SPEC), LISTENER_TYPE, "gateway", listener_pb2.Listener)
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 8080
    (chain,) = listener.filter_chains
    (net_filter,) = chain.filters
    manager = hcm_pb2.HttpConnectionManager()
    assert net_filter.typed_config.Unpack(manager)
    assert manager.rds.route_config_name == "gateway"
    assert manager.rds.config_source.HasField("ads")
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert manager.use_remote_address.value is True
    assert manager.stream_idle_timeout.seconds == 600
    assert manager.request_headers_timeout.seconds > 0


def test_listener_host_and_idle_timeout_come_from_the_spec() -> None:
    spec = dataclasses.replace(SPEC, listener_host="0.0.0.0", stream_idle_timeout_s=90.0)
    listener = unpack(build_snapshot(spec), LISTENER_TYPE, "gateway", listener_pb2.Listener)
    assert listener.address.socket_address.address == "0.0.0.0"
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.stream_idle_timeout.seconds == 90


def test_virtual_host_with_one_target_routes_to_the_cluster() -> None:
    vh = vhosts(build_snapshot(SPEC))["default/hello"]
    assert list(vh.domains) == ["hello.default.localhost", "hello.default.localhost:*"]
    (route,) = vh.routes
    assert route.match.prefix == "/"
    assert route.route.cluster == A.name
    assert route.route.timeout.seconds == 42
    assert [(h.header.key, h.header.value) for h in route.request_headers_to_add] == [
        ("k-original-host", "hello.default.localhost")
    ]


def test_target_headers_go_on_the_route_or_on_each_weighted_cluster() -> None:
    rev_a = (("Knative-Serving-Revision", "a"),)
    rev_b = (("Knative-Serving-Revision", "b"),)
    single = dataclasses.replace(SPLIT, targets=(RouteTarget(A.name, 100, rev_a),))
    got = vhosts(build_snapshot(dataclasses.replace(SPEC, virtual_hosts=(single,))))["default/split"]
    assert [(h.header.key, h.header.value) for h in got.routes[0].request_headers_to_add] == list(rev_a)
    split = dataclasses.replace(SPLIT, targets=(RouteTarget(A.name, 70, rev_a), RouteTarget(B.name, 30, rev_b)))
    got = vhosts(build_snapshot(dataclasses.replace(SPEC, virtual_hosts=(split,))))["default/split"]
    clusters = got.routes[0].route.weighted_clusters.clusters
    assert [[(h.header.key, h.header.value) for h in c.request_headers_to_add] for c in clusters] == [
        list(rev_a),
        list(rev_b),
    ]


def test_virtual_host_with_several_targets_splits_by_weight() -> None:
    vh = vhosts(build_snapshot(SPEC))["default/split"]
    action = vh.routes[0].route
    assert action.WhichOneof("cluster_specifier") == "weighted_clusters"
    assert [(c.name, c.weight.value) for c in action.weighted_clusters.clusters] == [
        (A.name, 70),
        (B.name, 30),
    ]
    # 0 (no route timeout) is sent explicitly: left out, Envoy would apply its 15 s default.
    assert action.HasField("timeout") and action.timeout.ToNanoseconds() == 0


def test_zero_weight_targets_are_dropped() -> None:
    vh = dataclasses.replace(SPLIT, targets=(RouteTarget(A.name, 0), RouteTarget(B.name, 100)))
    got = vhosts(build_snapshot(dataclasses.replace(SPEC, virtual_hosts=(vh,))))["default/split"]
    assert got.routes[0].route.cluster == B.name


def test_targets_on_one_cluster_are_merged() -> None:
    targets = (RouteTarget(A.name, 40), RouteTarget(B.name, 20), RouteTarget(A.name, 40))
    vh = dataclasses.replace(SPLIT, targets=targets)
    got = vhosts(build_snapshot(dataclasses.replace(SPEC, virtual_hosts=(vh,))))["default/split"]
    clusters = got.routes[0].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in clusters] == [(A.name, 80), (B.name, 20)]
    only = dataclasses.replace(SPLIT, targets=(RouteTarget(A.name, 50), RouteTarget(A.name, 50)))
    got = vhosts(build_snapshot(dataclasses.replace(SPEC, virtual_hosts=(only,))))["default/split"]
    assert got.routes[0].route.cluster == A.name


@pytest.mark.parametrize(
    ("domains", "expanded"),
    [
        (["a.b.localhost"], ["a.b.localhost", "a.b.localhost:*"]),
        (["A.B.Localhost"], ["a.b.localhost", "a.b.localhost:*"]),
        (["a.b.localhost:8080"], ["a.b.localhost:8080"]),
        (["*.example.com"], ["*.example.com"]),
        (["a", "a"], ["a", "a:*"]),
    ],
)
def test_domains_get_their_port_variants(domains: list[str], expanded: list[str]) -> None:
    assert expand_domains(domains) == expanded


# ---------------------------------------------------------------------------- versions


def test_versions_are_stable_and_independent_of_input_order() -> None:
    one = build_snapshot(SPEC)
    two = build_snapshot(
        dataclasses.replace(
            SPEC,
            virtual_hosts=(SPLIT, HELLO),
            clusters=(B, dataclasses.replace(A, endpoints=tuple(reversed(A.endpoints)))),
        )
    )
    assert dict(one.versions) == dict(two.versions)
    assert one.version == two.version
    assert one == two
    assert len({one.version, *one.versions.values()}) == 5  # types differ, so do versions


def test_a_change_moves_only_the_versions_of_the_types_it_touches() -> None:
    one = build_snapshot(SPEC)
    moved = dataclasses.replace(A, endpoints=(Endpoint("127.0.0.1", 9999),))
    two = build_snapshot(dataclasses.replace(SPEC, clusters=(moved, B)))
    changed = {t for t in TYPE_ORDER if one.version_of(t) != two.version_of(t)}
    assert changed == {ENDPOINT_TYPE}
    assert one.version != two.version
    assert one != two


def test_snapshot_is_immutable() -> None:
    snapshot = build_snapshot(SPEC)
    with pytest.raises(TypeError):
        snapshot.items(CLUSTER_TYPE)["x"] = snapshot.items(CLUSTER_TYPE)[A.name]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.version = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------- checks


def _resources(snapshot: Snapshot) -> dict[str, list[message.Message]]:
    classes = {
        CLUSTER_TYPE: cluster_pb2.Cluster,
        ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
        LISTENER_TYPE: listener_pb2.Listener,
        ROUTE_TYPE: route_pb2.RouteConfiguration,
    }
    return {t: [unpack(snapshot, t, n, classes[t]) for n in snapshot.items(t)] for t in TYPE_ORDER}


def _drop_assignment(res: dict) -> None:
    res[ENDPOINT_TYPE] = [c for c in res[ENDPOINT_TYPE] if c.cluster_name != B.name]


def _route_to_missing(res: dict) -> None:
    res[ROUTE_TYPE][0].virtual_hosts[0].routes[0].route.cluster = "nowhere"


def _bad_weights(res: dict) -> None:
    split = next(vh for vh in res[ROUTE_TYPE][0].virtual_hosts if vh.name == "default/split")
    split.routes[0].route.weighted_clusters.clusters[0].weight.value = 60


def _duplicate_domain(res: dict) -> None:
    res[ROUTE_TYPE][0].virtual_hosts[1].domains.append("hello.default.localhost")


def _listener_to_missing_routes(res: dict) -> None:
    res[ROUTE_TYPE][0].name = "elsewhere"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_drop_assignment, "cluster 'default/hello-00002' has no ClusterLoadAssignment"),
        (_route_to_missing, "virtual host 'default/hello' routes to missing cluster 'nowhere'"),
        (_bad_weights, "weights [60, 30] sum to 90, must be 100"),
        (
            _duplicate_domain,
            "domain 'hello.default.localhost' is in virtual hosts 'default/hello' and 'default/split'",
        ),
        (
            _listener_to_missing_routes,
            "listener 'gateway' refers to missing route configuration 'gateway'",
        ),
    ],
)
def test_check_consistency_names_the_problem(breakage, message: str) -> None:
    resources = _resources(build_snapshot(SPEC))
    breakage(resources)
    broken = Snapshot.from_resources(resources)
    with pytest.raises(SnapshotError) as err:
        check_consistency(broken)
    assert message in str(err.value)


def test_check_consistency_passes_a_built_snapshot() -> None:
    check_consistency(build_snapshot(SPEC))
    check_consistency(build_snapshot(GatewaySpec(8080, (), ())))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            dataclasses.replace(
                SPEC,
                virtual_hosts=(dataclasses.replace(HELLO, targets=(RouteTarget("nowhere", 100),)),),
            ),
            "virtual host 'default/hello' routes to missing cluster 'nowhere'",
        ),
        (
            dataclasses.replace(
                SPEC,
                virtual_hosts=(
                    HELLO,
                    dataclasses.replace(SPLIT, domains=("hello.default.localhost",)),
                ),
            ),
            "domain 'hello.default.localhost' is in virtual hosts 'default/hello' and 'default/split'",
        ),
        (
            dataclasses.replace(
                SPEC,
                virtual_hosts=(
                    dataclasses.replace(
                        SPLIT, targets=(RouteTarget(A.name, 50), RouteTarget(B.name, 40))
                    ),
                ),
            ),
            "virtual host 'default/split': target weights sum to 90, must be 100",
        ),
        (
            dataclasses.replace(SPEC, virtual_hosts=(dataclasses.replace(HELLO, targets=()),)),
            "virtual host 'default/hello' has no targets",
        ),
        (
            dataclasses.replace(
                SPEC,
                virtual_hosts=(
                    dataclasses.replace(
                        SPLIT, targets=(RouteTarget(A.name, 110), RouteTarget(B.name, -10))
                    ),
                ),
            ),
            "target 'default/hello-00002' has weight -10, must be >= 0",
        ),
        (dataclasses.replace(SPEC, listener_port=0), "listener_port = 0, must be in 1..65535"),
        (
            dataclasses.replace(SPEC, clusters=(A, dataclasses.replace(B, connect_timeout_s=0))),
            "cluster 'default/hello-00002': connect_timeout_s = 0, must be > 0",
        ),
        (
            dataclasses.replace(SPEC, clusters=(A, B, A)),
            "two cds resources named 'default/hello-00001'",
        ),
    ],
)
def test_build_snapshot_rejects_bad_specs(spec: GatewaySpec, message: str) -> None:
    with pytest.raises(SnapshotError) as err:
        build_snapshot(spec)
    assert message in str(err.value)
