"""Reconcilers: Service children, revision naming, statuses and traffic resolution (tables)."""

import pytest

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller import reconcile as rc
from ebb.controller.resources import condition, new, set_condition

NOW = 1_000.0


def _service(name="hello", traffic=()):
    svc = new("Service")
    svc.metadata.name, svc.metadata.namespace, svc.metadata.uid = name, "default", "uid-svc"
    svc.metadata.generation = 1
    svc.spec.template.spec.containers.add(command=["python", "app.py"])
    for t in traffic:
        svc.spec.traffic.add().CopyFrom(t)
    return svc


def _cfg(name="hello", generation=1, template_name=""):
    cfg = rc.service_configuration(_service(name))
    cfg.metadata.generation = generation
    cfg.metadata.uid = "uid-cfg"
    cfg.spec.template.metadata.name = template_name
    return cfg


def _ready(obj, status="True", reason="", message=""):
    set_condition(obj, "Ready", status, reason, message, now_s=NOW)
    return obj


def test_service_children_carry_owner_and_labels():
    svc = _service()
    cfg, route = rc.service_configuration(svc), rc.service_route(svc)
    for child in (cfg, route):
        assert child.metadata.labels["serving.knative.dev/service"] == "hello"
        assert child.metadata.owner_references[0].uid == "uid-svc"
        assert child.metadata.owner_references[0].controller
    assert cfg.spec.template == svc.spec.template


def test_service_without_traffic_routes_all_to_latest():
    route = rc.service_route(_service())
    assert len(route.spec.traffic) == 1
    target = route.spec.traffic[0]
    assert (target.configuration_name, target.latest_revision, target.percent) == ("hello", True, 100)


def test_service_traffic_keeps_pinned_revisions_and_tags():
    route = rc.service_route(
        _service(traffic=[r.TrafficTarget(revision_name="hello-00001", percent=90, tag="old"),
                          r.TrafficTarget(latest_revision=True, percent=10)])
    )
    assert [(t.revision_name, t.configuration_name, t.percent, t.tag) for t in route.spec.traffic] == [
        ("hello-00001", "", 90, "old"),
        ("", "hello", 10, ""),
    ]


@pytest.mark.parametrize(
    "generation,template_name,expected",
    [(1, "", "hello-00001"), (2, "", "hello-00002"), (12, "", "hello-00012"), (3, "hello-blue", "hello-blue")],
)
def test_revision_naming(generation, template_name, expected):
    rev = rc.revision_for(_cfg(generation=generation, template_name=template_name), [])
    assert rev.metadata.name == expected
    assert rev.metadata.labels["serving.knative.dev/configurationGeneration"] == str(generation)
    assert rev.metadata.labels["serving.knative.dev/configuration"] == "hello"
    assert rev.metadata.labels["serving.knative.dev/service"] == "hello"


def test_one_revision_per_generation():
    cfg = _cfg(generation=1)
    rev = rc.revision_for(cfg, [])
    assert rc.revision_for(cfg, [rev]) is None
    cfg.metadata.generation = 2
    assert rc.revision_for(cfg, [rev]).metadata.name == "hello-00002"


def _rev(name, generation, ready="True", message=""):
    rev = new("Revision")
    rev.metadata.name, rev.metadata.namespace = name, "default"
    rev.metadata.labels["serving.knative.dev/configurationGeneration"] = str(generation)
    return _ready(rev, ready, "ExitCode1" if ready == "False" else "", message)


def test_configuration_status_latest_created_and_ready():
    cfg = _cfg(generation=2)
    out = rc.configuration_status(cfg, [_rev("hello-00001", 1), _rev("hello-00002", 2, "Unknown")], now_s=NOW)
    assert out.status.latest_created_revision_name == "hello-00002"
    assert out.status.latest_ready_revision_name == "hello-00001"
    assert condition(out, "Ready").status == "Unknown"


def test_configuration_status_failed_revision_keeps_previous_ready():
    cfg = _cfg(generation=2)
    revs = [_rev("hello-00001", 1), _rev("hello-00002", 2, "False", "Container exited with code 1.")]
    out = rc.configuration_status(cfg, revs, now_s=NOW)
    assert out.status.latest_ready_revision_name == "hello-00001"
    cond = condition(out, "Ready")
    assert (cond.status, cond.reason) == ("False", "RevisionFailed")
    assert "Container exited with code 1." in cond.message


@pytest.mark.parametrize(
    "view,ready,reason",
    [
        (rc.InstanceView(desired=1, actual=1, ready=1, ever_ready=True), "True", ""),
        (rc.InstanceView(desired=0, actual=0, ready=0, ever_ready=True), "True", ""),
        (rc.InstanceView(desired=1, actual=1, ready=0), "Unknown", "Deploying"),
        (rc.InstanceView(desired=1, actual=0, failure_reason="ExitCode3", failure_message="boom"), "False", "ExitCode3"),
    ],
)
def test_revision_status(view, ready, reason):
    out = rc.revision_status(_rev("hello-00001", 1, "Unknown"), view, now_s=NOW)
    cond = condition(out, "Ready")
    assert (cond.status, cond.reason) == (ready, reason)
    assert (out.status.desired_replicas, out.status.actual_replicas, out.status.ready_replicas) == (
        view.desired, view.actual, view.ready)


def _route(*targets):
    route = new("Route")
    route.metadata.name, route.metadata.namespace = "hello", "default"
    for t in targets:
        route.spec.traffic.add().CopyFrom(t)
    return route


def test_resolve_latest_and_pinned():
    cfg = _cfg()
    cfg.status.latest_ready_revision_name = "hello-00002"
    res = rc.resolve_traffic(
        _route(r.TrafficTarget(configuration_name="hello", latest_revision=True, percent=80),
               r.TrafficTarget(revision_name="hello-00001", percent=20, tag="v1")),
        {"hello": cfg},
        {"hello-00001": _rev("hello-00001", 1), "hello-00002": _rev("hello-00002", 2)},
    )
    assert res.reason == ""
    assert [(t.revision, t.percent, t.tag) for t in res.targets] == [("hello-00002", 80, ""), ("hello-00001", 20, "v1")]


@pytest.mark.parametrize(
    "target,reason",
    [
        (r.TrafficTarget(revision_name="nope", percent=100), "RevisionMissing"),
        (r.TrafficTarget(configuration_name="nope", percent=100), "ConfigurationMissing"),
        (r.TrafficTarget(configuration_name="hello", percent=100), "RevisionMissing"),  # none ready yet
    ],
)
def test_resolve_failures(target, reason):
    assert rc.resolve_traffic(_route(target), {"hello": _cfg()}, {}).reason == reason


def test_route_waits_in_unknown_while_first_revision_deploys_and_fails_when_it_fails():
    deploying = _cfg()
    set_condition(deploying, "Ready", "Unknown", "", "Waiting", now_s=NOW)
    target = r.TrafficTarget(configuration_name="hello", percent=100)
    res = rc.resolve_traffic(_route(target), {"hello": deploying}, {})
    assert (res.reason, res.status) == ("RevisionMissing", "Unknown")
    out = rc.route_status(_route(target), res, False, 8080, now_s=NOW)
    assert condition(out, "Ready").status == "Unknown"
    failed = _ready(_cfg(), "False", "RevisionFailed", "boom")
    assert rc.resolve_traffic(_route(target), {"hello": failed}, {}).status == "False"


def test_route_status_ready_only_after_ingress():
    route = _route(r.TrafficTarget(revision_name="hello-00001", percent=100, tag="blue"))
    res = rc.Resolution(targets=(rc.ResolvedTarget("hello-00001", 100, "blue"),))
    waiting = rc.route_status(route, res, False, 8080, now_s=NOW)
    assert condition(waiting, "Ready").status == "Unknown"
    assert condition(waiting, "AllTrafficAssigned").status == "True"
    ready = rc.route_status(route, res, True, 8080, now_s=NOW)
    assert condition(ready, "Ready").status == "True"
    assert ready.status.url == "http://hello.default.localhost:8080"
    assert ready.status.traffic[0].url == "http://blue-hello.default.localhost:8080"


def test_service_status_merges_children():
    svc = _service()
    cfg = _ready(_cfg())
    cfg.status.latest_created_revision_name = cfg.status.latest_ready_revision_name = "hello-00001"
    route = _ready(_route())
    route.status.url = "http://hello.default.localhost:8080"
    out = rc.service_status(svc, cfg, route, now_s=NOW)
    assert condition(out, "Ready").status == "True"
    assert out.status.url == route.status.url
    assert out.status.latest_ready_revision_name == "hello-00001"
    failing = rc.service_status(svc, _ready(_cfg(), "False", "RevisionFailed", "bad"), route, now_s=NOW)
    cond = condition(failing, "Ready")
    assert (cond.status, cond.reason, cond.message) == ("False", "RevisionFailed", "bad")


A = "autoscaling.knative.dev/"


@pytest.mark.parametrize(
    "annotations,reachable,latest,decision,zero_ok,expected",
    [
        ({}, True, True, None, True, 1),  # before the first decision: initial-scale 1
        ({A + "initial-scale": "3"}, True, True, None, True, 3),
        ({A + "initial-scale": "0"}, True, True, None, True, 0),
        ({A + "min-scale": "2"}, True, True, rc.Decision(desired=1), True, 2),  # min applies when routed
        ({A + "min-scale": "2"}, False, True, rc.Decision(desired=1), True, 1),  # ...not when unrouted
        ({A + "max-scale": "4"}, True, True, rc.Decision(desired=9), True, 4),
        ({}, True, True, rc.Decision(desired=0), True, 0),  # scale to zero with an activator
        ({}, True, True, rc.Decision(desired=0), False, 1),  # never below one without it
        ({}, False, False, rc.Decision(desired=5), True, 0),  # neither routed nor newest
        ({}, True, False, rc.Decision(desired=-1), True, 1),  # unknown decision = initial scale
        ({A + "min-scale": "x"}, True, True, rc.Decision(desired=3), True, 3),  # malformed ignored
    ],
)
def test_desired_instances(annotations, reachable, latest, decision, zero_ok, expected):
    assert rc.desired_instances(
        annotations,
        reachable=reachable,
        latest=latest,
        decision=decision,
        can_scale_to_zero=zero_ok,
        scale_target_initialized=False,
        running=0,
    ) == expected


def _bounded(desired, min_scale=0, max_scale=0, initial_scale=1):
    bounds = rc.ScaleBounds(min_scale=min_scale, max_scale=max_scale, initial_scale=initial_scale)
    return rc.Decision(desired=desired, bounds=bounds)


@pytest.mark.parametrize(
    "annotations,reachable,decision,expected",
    [
        # Cluster-wide settings arrive as the autoscaler's resolved bounds.
        ({}, True, _bounded(1, min_scale=2), 2),  # cluster min-scale 2
        ({}, False, _bounded(1, min_scale=2), 1),  # ...only while routed
        ({}, True, _bounded(9, max_scale=5), 5),  # cluster max-scale (or max-scale-limit) 5
        ({}, True, _bounded(-1, initial_scale=3), 3),  # cluster initial-scale 3
        ({}, True, _bounded(-1, initial_scale=0), 0),  # allow-zero-initial-scale
        ({}, True, _bounded(-1, min_scale=2, initial_scale=1), 2),  # min above initial wins
        # The autoscaler has already let a valid annotation override the cluster default,
        # so its bounds win over the raw annotations.
        ({A + "max-scale": "4"}, True, _bounded(9, max_scale=4), 4),
        ({A + "max-scale": "50"}, True, _bounded(30, max_scale=10), 10),  # 50 over the limit
    ],
)
def test_desired_instances_uses_the_autoscalers_bounds(annotations, reachable, decision, expected):
    assert rc.desired_instances(
        annotations,
        reachable=reachable,
        latest=True,
        decision=decision,
        can_scale_to_zero=True,
        scale_target_initialized=False,
        running=0,
    ) == expected


INITIAL_5 = {A + "initial-scale": "5"}


@pytest.mark.parametrize(
    "annotations,reachable,decision,ready,was_initialized,initialized,desired",
    [
        # initial-scale 5 holds through an idle first decision until 5 are ready at once.
        (INITIAL_5, True, rc.Decision(desired=1), 1, False, False, 5),
        (INITIAL_5, True, rc.Decision(desired=1), 4, False, False, 5),
        (INITIAL_5, True, rc.Decision(desired=0), 4, False, False, 5),  # no scale to zero either
        (INITIAL_5, True, rc.Decision(desired=8), 4, False, False, 8),  # a floor, not a cap
        (INITIAL_5, True, rc.Decision(desired=1), 5, False, True, 1),  # reached: the decision rules
        (INITIAL_5, True, rc.Decision(desired=1), 0, True, True, 1),  # and for good (read back)
        (INITIAL_5, True, rc.Decision(desired=0), 1, True, True, 0),
        (INITIAL_5, True, None, 5, False, False, 5),  # no verdict yet: not before the bounds are known
        (INITIAL_5, False, rc.Decision(desired=1), 1, False, False, 5),  # unrouted but newest: still held
        # min-scale, while routed, raises the mark; initial-scale 1 is no floor under a decision.
        ({A + "min-scale": "3"}, True, rc.Decision(desired=1), 2, False, False, 3),
        ({A + "min-scale": "3"}, True, rc.Decision(desired=1), 3, False, True, 3),
        ({A + "min-scale": "3"}, False, rc.Decision(desired=1), 1, False, True, 1),  # unrouted: 1 is enough
        ({A + "min-scale": "4", A + "initial-scale": "2"}, True, rc.Decision(desired=1), 3, False, False, 4),
        ({A + "min-scale": "3", **INITIAL_5}, True, rc.Decision(desired=1), 3, False, False, 5),
        ({A + "min-scale": "3", **INITIAL_5}, True, rc.Decision(desired=1), 5, False, True, 3),
        ({}, True, rc.Decision(desired=0), 0, False, False, 0),  # initial-scale 1: not yet, no floor
        ({}, True, rc.Decision(desired=0), 1, False, True, 0),
        # The autoscaler's bounds carry the cluster-wide initial-scale.
        ({}, True, _bounded(1, initial_scale=3), 2, False, False, 3),
        ({}, True, _bounded(1, initial_scale=3), 3, False, True, 1),
        ({}, True, _bounded(-1, initial_scale=0), 0, False, True, 0),  # allow-zero-initial-scale: at once
        # max-scale still caps the floor.
        ({A + "max-scale": "3", **INITIAL_5}, True, rc.Decision(desired=1), 3, False, False, 3),
    ],
)
def test_initial_scale_is_the_floor_until_the_scale_target_is_initialized(
    annotations, reachable, decision, ready, was_initialized, initialized, desired
):
    got = rc.scale_target_initialized(
        annotations, reachable=reachable, decision=decision, ready=ready, initialized=was_initialized
    )
    assert got is initialized
    assert rc.desired_instances(
        annotations,
        reachable=reachable,
        latest=True,
        decision=decision,
        can_scale_to_zero=True,
        scale_target_initialized=got,
        running=ready,
    ) == desired


@pytest.mark.parametrize(
    "annotations,reachable,latest,decision,initialized,running,zero_ok,expected",
    [
        # No verdict (a restarted controller or autoscaler): an initialized revision keeps
        # what runs, so one that went below its initial-scale is not pushed back up...
        (INITIAL_5, True, True, None, True, 1, True, 1),
        (INITIAL_5, True, True, rc.Decision(desired=-1), True, 2, True, 2),
        ({}, True, True, None, True, 0, True, 0),  # ...nor one at zero woken
        ({}, True, True, None, True, 3, True, 3),
        ({A + "min-scale": "2"}, True, True, None, True, 1, True, 2),  # bounds still apply
        ({A + "max-scale": "2"}, True, True, None, True, 3, True, 2),
        ({}, True, True, None, True, 0, False, 1),  # no activator: never below one while routed
        ({}, False, False, None, True, 3, True, 0),  # neither routed nor newest
        # ...while one not yet initialized starts at its initial scale, as Knative creates it.
        (INITIAL_5, True, True, None, False, 2, True, 5),
        (INITIAL_5, True, True, rc.Decision(desired=-1), False, 0, True, 5),
        (INITIAL_5, False, False, rc.Decision(desired=1), False, 2, True, 0),  # unneeded: nothing
    ],
)
def test_desired_instances_without_a_verdict(
    annotations, reachable, latest, decision, initialized, running, zero_ok, expected
):
    assert rc.desired_instances(
        annotations,
        reachable=reachable,
        latest=latest,
        decision=decision,
        can_scale_to_zero=zero_ok,
        scale_target_initialized=initialized,
        running=running,
    ) == expected


@pytest.mark.parametrize(
    "decision,desired,ready,has_activator,mode",
    [
        (None, 1, 0, True, "proxy"),  # before the first decision the activator holds requests
        (rc.Decision(desired=2, excess_burst_capacity=50), 2, 2, True, "serve"),
        (rc.Decision(desired=2, excess_burst_capacity=-1), 2, 2, True, "proxy"),  # short of burst capacity
        (rc.Decision(desired=0, excess_burst_capacity=10), 0, 1, True, "proxy"),  # scaling to zero
        (rc.Decision(desired=1, excess_burst_capacity=10), 1, 0, True, "proxy"),  # nothing ready yet
        (rc.Decision(desired=0, excess_burst_capacity=-5), 0, 0, False, "serve"),  # no activator at all
    ],
)
def test_serving_mode(decision, desired, ready, has_activator, mode):
    assert rc.serving_mode(decision, desired, ready, has_activator=has_activator) == mode


@pytest.mark.parametrize(
    "desired,running,acked,expected",
    [(0, 2, False, 2), (0, 2, True, 0), (1, 2, False, 1), (0, 0, False, 0), (3, 1, False, 3)],
)
def test_instances_stop_only_after_the_activator_is_acked(desired, running, acked, expected):
    assert rc.hold_instances_for_switch(desired, running, acked) == expected
