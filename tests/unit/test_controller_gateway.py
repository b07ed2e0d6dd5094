"""Routes and instances to the gateway spec: hosts, weighted splits, tags, clusters."""

from ebb.controller.gateway import cluster_name, gateway_spec, route_virtual_hosts
from ebb.controller.reconcile import Resolution, ResolvedTarget
from ebb.controller.resources import new
from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.snapshot import build_snapshot


def _route(name="hello"):
    route = new("Route")
    route.metadata.name, route.metadata.namespace = name, "default"
    return route


def _weights(vh):
    return [(t.cluster, t.weight) for t in vh.targets]


def test_single_target_host():
    res = Resolution(targets=(ResolvedTarget("hello-00001", 100),))
    (vh,) = route_virtual_hosts(_route(), res)
    assert vh.domains == ("hello.default.localhost",)
    assert _weights(vh) == [("default/hello-00001", 100)]
    assert vh.targets[0].headers == (
        ("Knative-Serving-Namespace", "default"),
        ("Knative-Serving-Revision", "hello-00001"),
    )


def test_split_and_tags():
    res = Resolution(
        targets=(
            ResolvedTarget("hello-00002", 90, latest_revision=True),
            ResolvedTarget("hello-00001", 10, tag="old"),
            ResolvedTarget("hello-00003", 0, tag="next"),
        )
    )
    main, old, nxt = route_virtual_hosts(_route(), res)
    assert _weights(main) == [("default/hello-00001", 10), ("default/hello-00002", 90)]
    assert [dict(t.headers)["Knative-Serving-Revision"] for t in main.targets] == ["hello-00001", "hello-00002"]
    # No route timeout: the queue and the activator own the revisions' timeouts.
    assert main.timeout_s == old.timeout_s == nxt.timeout_s == 0
    assert old.domains == ("old-hello.default.localhost",)
    assert nxt.domains == ("next-hello.default.localhost",)
    assert _weights(nxt) == [("default/hello-00003", 100)]


def test_same_revision_twice_sums_weights():
    res = Resolution(targets=(ResolvedTarget("a-00001", 50), ResolvedTarget("a-00001", 50, tag="t")))
    main = route_virtual_hosts(_route("a"), res)[0]
    assert _weights(main) == [("default/a-00001", 100)]


def test_unresolved_route_has_no_hosts():
    assert route_virtual_hosts(_route(), Resolution(reason="RevisionMissing")) == ()


def test_gateway_spec_builds_a_consistent_snapshot():
    res = Resolution(targets=(ResolvedTarget("hello-00001", 100),))
    hosts = list(route_virtual_hosts(_route(), res))
    key = RevisionKey("default", "hello-00001")
    idle = RevisionKey("default", "idle-00001")
    spec = gateway_spec(8080, hosts, {key: [Address("127.0.0.1", 4000)], idle: []})
    assert [c.name for c in spec.clusters] == [cluster_name(key), cluster_name(idle)]
    assert spec.clusters[0].endpoints[0].port == 4000
    snap = build_snapshot(spec)  # raises if any route points at a missing cluster
    assert snap.version == build_snapshot(gateway_spec(8080, hosts, {key: [Address("127.0.0.1", 4000)], idle: []})).version

