"""From routes and ready instances to the gateway's desired config (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller.reconcile import Resolution, host_of
from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.snapshot import ClusterSpec, Endpoint, GatewaySpec, RouteTarget, VirtualHostSpec


def cluster_name(key: RevisionKey) -> str:
    """One Envoy cluster per revision, e.g. `default/hello-00001`."""
    return f"{key.namespace}/{key.name}"


def revision_headers(namespace: str, revision: str) -> tuple[tuple[str, str], ...]:
    """Headers naming the target revision; the activator routes held requests by them."""
    return (("Knative-Serving-Namespace", namespace), ("Knative-Serving-Revision", revision))


def route_virtual_hosts(route: r.Route, resolution: Resolution) -> tuple[VirtualHostSpec, ...]:
    """The route's main host split by percent, plus one host per tag at 100% to its revision.

    No route timeout: the revision's timeouts are the queue's and the activator's, which end
    a request with a 504 only before its response starts (Knative's own gateway, Kourier,
    sets none either); a gateway timeout would cut long streaming responses they allow.
    """
    if resolution.reason or not resolution.targets:
        return ()
    ns, name = route.metadata.namespace, route.metadata.name
    weights: dict[str, int] = {}
    headers: dict[str, tuple[tuple[str, str], ...]] = {}
    for target in resolution.targets:
        cluster = cluster_name(RevisionKey(ns, target.revision))
        headers[cluster] = revision_headers(ns, target.revision)
        if target.percent > 0:
            weights[cluster] = weights.get(cluster, 0) + target.percent
    hosts = []
    if weights:
        hosts.append(
            VirtualHostSpec(
                name=f"{ns}/{name}",
                domains=(host_of(name, ns),),
                targets=tuple(RouteTarget(c, w, headers[c]) for c, w in sorted(weights.items())),
            )
        )
    seen_tags = set()
    for target in resolution.targets:
        if not target.tag or target.tag in seen_tags:
            continue
        seen_tags.add(target.tag)
        key = RevisionKey(ns, target.revision)
        hosts.append(
            VirtualHostSpec(
                name=f"{ns}/{name}/{target.tag}",
                domains=(host_of(name, ns, target.tag),),
                targets=(RouteTarget(cluster_name(key), 100, revision_headers(ns, target.revision)),),
            )
        )
    return tuple(hosts)


def gateway_spec(
    listener_port: int,
    virtual_hosts: list[VirtualHostSpec],
    endpoints: Mapping[RevisionKey, list[Address]],
) -> GatewaySpec:
    """Clusters for every revision some host routes to (or that has instances)."""
    referenced = {t.cluster for vh in virtual_hosts for t in vh.targets}
    by_name = {cluster_name(k): k for k in endpoints}
    clusters = []
    for name in sorted(referenced | set(by_name)):
        key = by_name.get(name)
        addrs = endpoints.get(key, []) if key else []
        clusters.append(ClusterSpec(name=name, endpoints=tuple(Endpoint(a.host, a.port) for a in addrs)))
    return GatewaySpec(
        listener_port=listener_port,
        virtual_hosts=tuple(sorted(virtual_hosts, key=lambda v: v.name)),
        clusters=tuple(clusters),
    )
