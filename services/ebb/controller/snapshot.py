"""The gateway's xDS snapshot: plain specs in, an immutable, versioned, consistent set of
Envoy resources out (STYLE 7). Pure: no grpc, no sockets, no clock.

One listener (`gateway`) whose HTTP connection manager takes its routes over RDS (route
configuration `gateway`), one virtual host per routed host, and one EDS cluster per
upstream group (a revision, the activator, ...) whose endpoints come as a
ClusterLoadAssignment of the same name. Every resource travels packed in an `Any`, and
each type carries a version that is a short hash of its content, so identical content
always has the identical version and an xDS server can tell "nothing changed" for free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# Make-before-break push order (STYLE 7): a route must never name a cluster Envoy lacks.
TYPE_ORDER: tuple[str, ...] = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
# Short names for logs and metric labels.
TYPE_NAMES: Mapping[str, str] = MappingProxyType(
    {CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds", LISTENER_TYPE: "lds", ROUTE_TYPE: "rds"}
)

LISTENER_NAME = "gateway"
ROUTE_CONFIG_NAME = "gateway"
# Traffic splits are Knative percents: the weights of one route add up to 100.
WEIGHT_TOTAL = 100

_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_ROUTER_FILTER = "envoy.filters.http.router"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Envoy's default circuit breakers (1024 pending/requests per cluster) would turn a burst
# at a cold revision into 503s; queueing is the activator's and queue-proxy's job.
_CIRCUIT_LIMIT = 1_000_000
_UPSTREAM_IDLE_S = 60.0  # keep-alive connections to instances, closed after a quiet minute
_DOWNSTREAM_IDLE_S = 3600.0  # Envoy's own default, stated so it is visible
_REQUEST_HEADERS_TIMEOUT_S = 10.0  # a client gets 10 s to send its headers (slowloris)
_VERSION_CHARS = 12


class SnapshotError(ValueError):
    """The snapshot is not consistent; the message names the offending resource."""


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class ClusterSpec:
    """An upstream group: one EDS cluster and its ClusterLoadAssignment, same name."""

    name: str
    endpoints: tuple[Endpoint, ...]
    connect_timeout_s: float = 1.0


@dataclass(frozen=True)
class RouteTarget:
    """A share of a host's traffic; `headers` are added to requests sent to this cluster
    (e.g. the revision's name, which the activator routes by)."""

    cluster: str
    weight: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VirtualHostSpec:
    """One routed host. `domains` are bare hosts; `host:*` port variants are added.

    Targets' weights add up to WEIGHT_TOTAL (100); zero-weight targets are dropped and
    targets on the same cluster merged.
    """

    name: str
    domains: tuple[str, ...]
    targets: tuple[RouteTarget, ...]
    timeout_s: float = 0.0  # the route's timeout; 0 = none (Envoy's own default would be 15 s)
    request_headers_to_add: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GatewaySpec:
    listener_port: int
    virtual_hosts: tuple[VirtualHostSpec, ...]
    clusters: tuple[ClusterSpec, ...]
    listener_host: str = "127.0.0.1"
    # Longest a stream may stay silent: the gateway's only bound on a request, as a safety
    # net under the queue's and activator's timeouts. 600 s is the largest timeoutSeconds a
    # revision may ask for, so it never ends a request they still allow.
    stream_idle_timeout_s: float = 600.0


# ---------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Packed resources per type URL (name -> Any) and a content-hash version per type;
    `version` hashes the per-type versions, so two snapshots are equal iff their content is.

    Treat the `Any` messages as read-only: they are shared by every xDS stream.
    """

    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, str]
    version: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and other.version == self.version

    def __hash__(self) -> int:
        return hash(self.version)

    @classmethod
    def from_resources(cls, resources: Mapping[str, Iterable[message.Message]]) -> Snapshot:
        """Pack and version resources given per type URL; does NOT check consistency.

        Each message's name is its `name` field (`cluster_name` for ClusterLoadAssignment).
        """
        packed: dict[str, Mapping[str, any_pb2.Any]] = {}
        for type_url in TYPE_ORDER:
            items: dict[str, any_pb2.Any] = {}
            for msg in resources.get(type_url, ()):
                name = msg.cluster_name if type_url == ENDPOINT_TYPE else msg.name
                if name in items:
                    raise SnapshotError(f"two {TYPE_NAMES[type_url]} resources named {name!r}")
                any_msg = any_pb2.Any()
                any_msg.Pack(msg, deterministic=True)
                if any_msg.type_url != type_url:
                    raise SnapshotError(f"{name!r} is a {any_msg.type_url}, not a {type_url}")
                items[name] = any_msg
            packed[type_url] = MappingProxyType(dict(sorted(items.items())))
        versions = {t: content_version(packed[t]) for t in TYPE_ORDER}
        overall = _short_hash("\n".join(f"{t}={versions[t]}" for t in TYPE_ORDER).encode())
        return cls(MappingProxyType(packed), MappingProxyType(versions), overall)

    def items(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        return self.resources.get(type_url, MappingProxyType({}))

    def version_of(self, type_url: str) -> str:
        return self.versions[type_url]


def content_version(items: Mapping[str, any_pb2.Any]) -> str:
    """Short hash of named packed resources; identical content gives the same version."""
    digest = hashlib.sha256()
    for name in sorted(items):
        value = items[name]
        for part in (name.encode(), value.type_url.encode(), value.value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()[:_VERSION_CHARS]


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_CHARS]


# ---------------------------------------------------------------------------- building


def build_snapshot(spec: GatewaySpec) -> Snapshot:
    """Build every resource for `spec`, version it, and check it (raises SnapshotError)."""
    _check_spec(spec)
    snapshot = Snapshot.from_resources(
        {
            CLUSTER_TYPE: [_cluster(c) for c in spec.clusters],
            ENDPOINT_TYPE: [_load_assignment(c) for c in spec.clusters],
            LISTENER_TYPE: [_listener(spec)],
            ROUTE_TYPE: [_route_configuration(spec)],
        }
    )
    check_consistency(snapshot)
    return snapshot


def _check_spec(spec: GatewaySpec) -> None:
    # Values Envoy would reject field by field; checked here so the error names our spec
    # rather than arriving later as a NACK.
    if not 0 < spec.listener_port < 65536:
        raise SnapshotError(f"listener_port = {spec.listener_port}, must be in 1..65535")
    if spec.stream_idle_timeout_s < 0:
        raise SnapshotError(f"stream_idle_timeout_s = {spec.stream_idle_timeout_s}, must be >= 0")
    for c in spec.clusters:
        if c.connect_timeout_s <= 0:
            raise SnapshotError(
                f"cluster {c.name!r}: connect_timeout_s = {c.connect_timeout_s}, must be > 0"
            )
        for e in c.endpoints:
            if not 0 < e.port < 65536:
                raise SnapshotError(
                    f"cluster {c.name!r}: endpoint port {e.port}, must be in 1..65535"
                )
    for vh in spec.virtual_hosts:
        if vh.timeout_s < 0:
            raise SnapshotError(
                f"virtual host {vh.name!r}: timeout_s = {vh.timeout_s}, must be >= 0"
            )
        if not vh.domains:
            raise SnapshotError(f"virtual host {vh.name!r} has no domains")
        if not vh.targets:
            raise SnapshotError(f"virtual host {vh.name!r} has no targets")
        for t in vh.targets:
            if t.weight < 0:
                raise SnapshotError(
                    f"virtual host {vh.name!r}: target {t.cluster!r} has weight {t.weight}, must be >= 0"
                )
        total = sum(t.weight for t in vh.targets)
        if total != WEIGHT_TOTAL:
            raise SnapshotError(
                f"virtual host {vh.name!r}: target weights sum to {total}, must be {WEIGHT_TOTAL}"
            )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _packed(msg: message.Message) -> any_pb2.Any:
    any_msg = any_pb2.Any()
    any_msg.Pack(msg, deterministic=True)
    return any_msg


def _cluster(spec: ClusterSpec) -> cluster_pb2.Cluster:
    http_options = http_protocol_options_pb2.HttpProtocolOptions(
        # Instances speak HTTP/1.1 (queue-proxy); connections are kept alive and reused.
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=_duration(_UPSTREAM_IDLE_S)
        ),
    )
    limit = wrappers_pb2.UInt32Value(value=_CIRCUIT_LIMIT)
    return cluster_pb2.Cluster(
        name=spec.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source()),
        connect_timeout=_duration(spec.connect_timeout_s),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=limit, max_pending_requests=limit, max_requests=limit
                )
            ]
        ),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: _packed(http_options)},
    )


def _load_assignment(spec: ClusterSpec) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=spec.name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=_socket_address(e.host, e.port)
                        )
                    )
                    for e in sorted(set(spec.endpoints), key=lambda e: (e.host, e.port))
                ]
            )
        ]
        if spec.endpoints
        else [],
    )


def _listener(spec: GatewaySpec) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=ROUTE_CONFIG_NAME),
        # suppress_envoy_headers: no x-envoy-* headers leak to apps or clients.
        http_filters=[
            hcm_pb2.HttpFilter(
                name=_ROUTER_FILTER,
                typed_config=_packed(router_pb2.Router(suppress_envoy_headers=True)),
            )
        ],
        # The gateway is the edge: the peer address is the client, and it is what
        # X-Forwarded-For gets appended with (queue-proxy turns it into Forwarded).
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        xff_num_trusted_hops=0,
        stream_idle_timeout=_duration(spec.stream_idle_timeout_s),
        request_headers_timeout=_duration(_REQUEST_HEADERS_TIMEOUT_S),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=_duration(_DOWNSTREAM_IDLE_S)
        ),
        # Apps' own Server header goes through unchanged.
        server_header_transformation=hcm_pb2.HttpConnectionManager.PASS_THROUGH,
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket_address(spec.listener_host, spec.listener_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=_HCM_FILTER, typed_config=_packed(manager))
                ]
            )
        ],
    )


def expand_domains(domains: Iterable[str]) -> list[str]:
    """Each bare host also as `host:*`, so `Host: name.ns.localhost:8080` matches too."""
    out: list[str] = []
    for domain in domains:
        domain = domain.lower()
        variants = [domain] if ":" in domain or "*" in domain else [domain, f"{domain}:*"]
        out.extend(v for v in variants if v not in out)
    return out


def _route_configuration(spec: GatewaySpec) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            _virtual_host(vh) for vh in sorted(spec.virtual_hosts, key=lambda v: v.name)
        ],
    )


def _virtual_host(vh: VirtualHostSpec) -> route_components_pb2.VirtualHost:
    # Two targets on one cluster (e.g. a tag and latest on the same revision) add up;
    # zero weights are dropped. Order is kept: it is the order Envoy lists them in.
    weights: dict[str, int] = {}
    target_headers: dict[str, tuple[tuple[str, str], ...]] = {}
    for t in vh.targets:
        if t.weight > 0:
            weights[t.cluster] = weights.get(t.cluster, 0) + t.weight
            target_headers.setdefault(t.cluster, t.headers)
    action = route_components_pb2.RouteAction(timeout=_duration(vh.timeout_s))
    route_headers = list(vh.request_headers_to_add)
    if len(weights) == 1:
        action.cluster = next(iter(weights))
        route_headers += list(target_headers[action.cluster])
    else:
        action.weighted_clusters.CopyFrom(
            route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=name,
                        weight=wrappers_pb2.UInt32Value(value=weight),
                        request_headers_to_add=_header_options(target_headers[name]),
                    )
                    for name, weight in weights.items()
                ]
            )
        )
    return route_components_pb2.VirtualHost(
        name=vh.name,
        domains=expand_domains(vh.domains),
        routes=[
            route_components_pb2.Route(
                name=vh.name,
                match=route_components_pb2.RouteMatch(prefix="/"),
                route=action,
                request_headers_to_add=_header_options(route_headers),
            )
        ],
    )


def _header_options(headers) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key, value in headers
    ]


# ---------------------------------------------------------------------------- checking


def _unpack(
    items: Mapping[str, any_pb2.Any], cls: type[message.Message]
) -> dict[str, message.Message]:
    out = {}
    for name, packed in items.items():
        msg = cls()
        if not packed.Unpack(msg):
            raise SnapshotError(
                f"resource {name!r} is a {packed.type_url}, not a {cls.DESCRIPTOR.full_name}"
            )
        out[name] = msg
    return out


def check_consistency(snapshot: Snapshot) -> None:
    """Raise SnapshotError at the first inconsistency (STYLE 7):

    a listener naming a missing route configuration, a route naming a missing cluster, an
    EDS cluster without its ClusterLoadAssignment, a domain served by two virtual hosts,
    weighted clusters whose weights do not add up to WEIGHT_TOTAL.
    """
    clusters = _unpack(snapshot.items(CLUSTER_TYPE), cluster_pb2.Cluster)
    assignments = snapshot.items(ENDPOINT_TYPE)
    listeners = _unpack(snapshot.items(LISTENER_TYPE), listener_pb2.Listener)
    routes = _unpack(snapshot.items(ROUTE_TYPE), route_pb2.RouteConfiguration)

    for name, cluster in clusters.items():
        if cluster.type == cluster_pb2.Cluster.EDS:
            wanted = cluster.eds_cluster_config.service_name or name
            if wanted not in assignments:
                raise SnapshotError(f"cluster {name!r} has no ClusterLoadAssignment {wanted!r}")

    for name, listener in listeners.items():
        for chain in listener.filter_chains:
            for net_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                if not net_filter.typed_config.Unpack(manager):
                    continue
                if manager.HasField("rds") and manager.rds.route_config_name not in routes:
                    raise SnapshotError(
                        f"listener {name!r} refers to missing route configuration "
                        f"{manager.rds.route_config_name!r}"
                    )

    for config_name, config in routes.items():
        owner_of: dict[str, str] = {}
        for vh in config.virtual_hosts:
            for domain in vh.domains:
                key = domain.lower()
                if key in owner_of:
                    raise SnapshotError(
                        f"route configuration {config_name!r}: domain {domain!r} is in virtual "
                        f"hosts {owner_of[key]!r} and {vh.name!r}"
                    )
                owner_of[key] = vh.name
            for route in vh.routes:
                _check_route(config_name, vh.name, route, clusters)


def _check_route(
    config: str, vhost: str, route: route_components_pb2.Route, clusters: Mapping[str, object]
) -> None:
    where = f"route configuration {config!r}, virtual host {vhost!r}"
    if not route.HasField("route"):
        return
    action = route.route
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        names = [action.cluster]
    elif kind == "weighted_clusters":
        weights = [cw.weight.value for cw in action.weighted_clusters.clusters]
        total = action.weighted_clusters.total_weight.value or WEIGHT_TOTAL
        if sum(weights) != total:
            raise SnapshotError(
                f"{where}: weights {weights} sum to {sum(weights)}, must be {total}"
            )
        names = [cw.name for cw in action.weighted_clusters.clusters]
    else:
        return
    for name in names:
        if name not in clusters:
            raise SnapshotError(f"{where} routes to missing cluster {name!r}")
