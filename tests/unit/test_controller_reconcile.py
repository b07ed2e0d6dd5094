"""Reconcilers: Service children, revision naming, statuses and traffic resolution (tables)."""

import hashlib
import re

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


def _rev(name, generation, ready="True", message="", config="hello"):
    rev = new("Revision")
    rev.metadata.name, rev.metadata.namespace = name, "default"
    rev.metadata.labels["serving.knative.dev/configurationGeneration"] = str(generation)
    rev.metadata.labels["serving.knative.dev/configuration"] = config
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
        # Once ready, then crash-looping: wanted, none ready, the last one exited (Knative's
        # reconcileDeployment: ContainerHealthy=False, ExitCode<n>)...
        (rc.InstanceView(desired=1, actual=0, ever_ready=True, failure_reason="ExitCode3", failure_message="boom"),
         "False", "ExitCode3"),
        # ...also while the next attempt starts...
        (rc.InstanceView(desired=1, actual=1, ever_ready=True, failure_reason="ExitCode3"), "False", "ExitCode3"),
        # ...but not when one instance of several crashed, nor at zero, nor once one is ready again.
        (rc.InstanceView(desired=2, actual=1, ready=1, ever_ready=True, failure_reason="ExitCode3"), "True", ""),
        (rc.InstanceView(desired=0, actual=0, ever_ready=True, failure_reason="ExitCode3"), "True", ""),
        (rc.InstanceView(desired=1, actual=1, ready=1, ever_ready=True), "True", ""),
    ],
)
def test_revision_status(view, ready, reason):
    out = rc.revision_status(_rev("hello-00001", 1, "Unknown"), view, now_s=NOW)
    cond = condition(out, "Ready")
    assert (cond.status, cond.reason) == (ready, reason)
    if ready != "Unknown":  # Ready = ResourcesAvailable ∧ ContainerHealthy; here the container decides
        assert (condition(out, "ContainerHealthy").status, condition(out, "ContainerHealthy").reason) == (ready, reason)
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


def desired_for(annotations, decision, *, reachable=True, latest=True, zero_ok=True, initialized=False, running=0):
    """`rc.desired_instances` with the common case as defaults: routed, the newest, an
    activator in front, not yet scale-target initialized, nothing running."""
    return rc.desired_instances(
        annotations,
        reachable=reachable,
        latest=latest,
        decision=decision,
        can_scale_to_zero=zero_ok,
        scale_target_initialized=initialized,
        running=running,
    )




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
    assert desired_for(annotations, decision, reachable=reachable, latest=latest, zero_ok=zero_ok) == expected


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
    assert desired_for(annotations, decision, reachable=reachable) == expected


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
    assert desired_for(annotations, decision, reachable=reachable, initialized=got, running=ready) == desired


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
    assert desired_for(
        annotations, decision, reachable=reachable, latest=latest, zero_ok=zero_ok,
        initialized=initialized, running=running,
    ) == expected  # fmt: skip


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


# ---- generated names fit 63 characters (Knative's kmeta.ChildName)


def _md5(text):
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    "parent,suffix,expected",
    [
        ("hello", "-00001", "hello-00001"),
        ("a" * 57, "-00001", "a" * 57 + "-00001"),  # 63: as is
        ("a" * 58, "-00001", "a" * 25 + _md5("a" * 58) + "-00001"),  # 64: cut, hashed
        ("a" * 60, "-00012", "a" * 25 + _md5("a" * 60) + "-00012"),
        ("b" * 63, "-123456", "b" * 24 + _md5("b" * 63) + "-123456"),  # a longer suffix cuts more
    ],
)
def test_child_name(parent, suffix, expected):
    assert rc.child_name(parent, suffix) == expected
    assert len(expected) <= 63


def test_a_long_configurations_revisions_are_dns_labels_and_distinct():
    long_a, long_b = "x" * 59 + "a", "x" * 59 + "b"  # the same first 25 characters
    names = {rc.revision_for(_cfg(name, generation=g), []).metadata.name for name in (long_a, long_b) for g in (1, 2)}
    assert len(names) == 4
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in names), names


# ---- a revision name that is taken (Knative's CheckNameAvailability)


def _cfg_with(generation, template_name="", env=None, status=None):
    cfg = _cfg(generation=generation, template_name=template_name)
    if env is not None:
        cfg.spec.template.spec.containers[0].env.add(name="V", value=env)
    if status is not None:
        cfg.status.CopyFrom(status.status)
    return cfg


def _stamp(cfg, ready="True"):
    """The revision the controller makes for `cfg`, owned by it, with a Ready condition."""
    rev = rc.revision_for(cfg, [])
    return _ready(rev, ready)


def _reconcile(cfg, revisions):
    """One pass: make the revision if due (ready at once), then the Configuration's status."""
    made = rc.revision_for(cfg, revisions)
    if made is not None:
        revisions.append(_ready(made))
    return rc.configuration_status(cfg, revisions, now_s=NOW)


def test_a_user_chosen_name_with_another_spec_fails_the_configuration():
    revisions = []
    st1 = _reconcile(_cfg_with(1, "hello-a", env="1"), revisions)
    st2 = _reconcile(_cfg_with(2, "hello-b", env="2", status=st1), revisions)
    assert (st2.status.latest_created_revision_name, st2.status.latest_ready_revision_name) == ("hello-b", "hello-b")
    back = _cfg_with(3, "hello-a", env="3", status=st2)  # the old name, a new template
    assert rc.revision_for(back, revisions) is None
    st3 = rc.configuration_status(back, revisions, now_s=NOW)
    cond = condition(st3, "Ready")
    assert (cond.status, cond.reason, cond.message) == (
        "False", "RevisionFailed",
        'Revision creation failed with message: revisions.serving.knative.dev "hello-a" already exists.')
    # The previous revisions are kept as they were: traffic stays on hello-b.
    assert (st3.status.latest_created_revision_name, st3.status.latest_ready_revision_name) == ("hello-b", "hello-b")
    assert st3.status.observed_generation == 3
    route = _ready(_route())
    svc = rc.service_status(_service(), st3, route, now_s=NOW)
    assert (condition(svc, "Ready").status, condition(svc, "Ready").reason) == ("False", "RevisionFailed")
    assert svc.status.latest_created_revision_name == "hello-b"


def test_rolling_back_to_a_user_chosen_name_with_the_same_spec_reuses_it():
    revisions = []
    st1 = _reconcile(_cfg_with(1, "hello-a", env="1"), revisions)
    st2 = _reconcile(_cfg_with(2, "hello-b", env="2", status=st1), revisions)
    back = _cfg_with(3, "hello-a", env="1", status=st2)  # hello-a's very template again
    assert rc.revision_for(back, revisions) is None
    st3 = rc.configuration_status(back, revisions, now_s=NOW)
    assert condition(st3, "Ready").status == "True"
    # hello-a (generation 1) is latest created and, being ready, latest ready: not hello-b.
    assert (st3.status.latest_created_revision_name, st3.status.latest_ready_revision_name) == ("hello-a", "hello-a")
    assert [v.metadata.name for v in revisions] == ["hello-a", "hello-b"]
    assert rc.latest_created(back, revisions).metadata.name == "hello-a"


def test_a_reused_revision_not_ready_yet_leaves_latest_ready_alone():
    revisions = []
    st1 = _reconcile(_cfg_with(1, "hello-a", env="1"), revisions)
    st2 = _reconcile(_cfg_with(2, "hello-b", env="2", status=st1), revisions)
    _ready(revisions[0], "Unknown")  # say hello-a is deploying again
    st3 = rc.configuration_status(_cfg_with(3, "hello-a", env="1", status=st2), revisions, now_s=NOW)
    assert (st3.status.latest_created_revision_name, st3.status.latest_ready_revision_name) == ("hello-a", "hello-b")
    assert condition(st3, "Ready").status == "Unknown"


def test_a_generated_name_taken_by_a_user_chosen_one_fails_the_configuration():
    revisions = []
    st1 = _reconcile(_cfg_with(1, "hello-00002"), revisions)
    nxt = _cfg_with(2, env="2", status=st1)  # no name: wants hello-00002
    assert rc.revision_for(nxt, revisions) is None
    st2 = rc.configuration_status(nxt, revisions, now_s=NOW)
    cond = condition(st2, "Ready")
    assert (cond.status, cond.reason) == ("False", "RevisionFailed")
    assert '"hello-00002" already exists' in cond.message
    assert st2.status.latest_created_revision_name == "hello-00002"  # as the status said


def test_a_user_chosen_name_of_another_configurations_revision_is_a_conflict():
    other = _rev("hello-x", 1, config="other")
    other.metadata.owner_references.add(kind="Configuration", name="other", uid="uid-other", controller=True)
    cfg = _cfg_with(1, "hello-x")
    assert rc.revision_for(cfg, [other]) is None
    st = rc.configuration_status(cfg, [other], now_s=NOW)
    assert condition(st, "Ready").status == "False"
    assert (st.status.latest_created_revision_name, st.status.latest_ready_revision_name) == ("", "")


def test_the_same_user_chosen_name_at_its_own_generation_is_the_revision():
    cfg = _cfg_with(4, "hello-a", env="1")
    rev = _stamp(cfg)
    cfg.spec.template.spec.containers[0].env[0].value = "2"  # a defaulted field, say: same generation
    assert rc.latest_created_revision(cfg, [rev]) == (rev, "")


# ---- latest ready moves forward only (Knative's findAndSetLatestReadyRevision)


def test_latest_ready_stays_on_a_revision_that_fails_after_being_ready():
    revisions = []
    st1 = _reconcile(_cfg_with(1), revisions)
    st2 = _reconcile(_cfg_with(2, env="2", status=st1), revisions)
    assert st2.status.latest_ready_revision_name == "hello-00002"
    _ready(revisions[1], "False", "ExitCode3", "Container exited with code 3.")  # it crash-loops now
    st3 = rc.configuration_status(_cfg_with(2, env="2", status=st2), revisions, now_s=NOW)
    # Not back to hello-00001: its traffic stays; Ready says why.
    assert st3.status.latest_ready_revision_name == "hello-00002"
    cond = condition(st3, "Ready")
    assert (cond.status, cond.reason) == ("False", "RevisionFailed")
    assert "Container exited with code 3" in cond.message


def test_latest_ready_of_a_deleted_revision_is_recomputed():
    revisions = []
    st1 = _reconcile(_cfg_with(1), revisions)
    st2 = _reconcile(_cfg_with(2, env="2", status=st1), revisions)
    del revisions[1]
    st3 = rc.configuration_status(_cfg_with(2, env="2", status=st2), revisions, now_s=NOW)
    assert st3.status.latest_ready_revision_name == "hello-00001"


# ---- traffic to revisions not ready (Knative's addRevisionTarget, traffic/errors.go)


R1, R2 = "hello-00001", "hello-00002"


@pytest.mark.parametrize(
    "states,targets,status,reason,message",
    [
        ({R1: "True", R2: "Unknown"}, [(R1, 50), (R2, 50)], "Unknown", "RevisionMissing",
         'Revision "hello-00002" is not yet ready.'),
        ({R1: "True", R2: None}, [(R2, 100)], "Unknown", "RevisionMissing",  # no conditions yet
         'Revision "hello-00002" is not yet ready.'),
        ({R1: "True", R2: "False"}, [(R1, 50), (R2, 50)], "False", "RevisionMissing",
         'Revision "hello-00002" failed to become ready.'),
        # A failure wins over one still deploying, whatever the order...
        ({R1: "Unknown", R2: "False"}, [(R1, 50), (R2, 50)], "False", "RevisionMissing",
         'Revision "hello-00002" failed to become ready.'),
        ({R1: "Unknown"}, [(R1, 50), ("hello-00009", 50)], "False", "RevisionMissing",
         'Revision "hello-00009" referenced in traffic not found.'),
        # ...and the first of several still deploying is named.
        ({R1: "Unknown", R2: "Unknown"}, [(R1, 50), (R2, 50)], "Unknown", "RevisionMissing",
         'Revision "hello-00001" is not yet ready.'),
    ],
)
def test_pinned_revisions_not_ready_do_not_assign_traffic(states, targets, status, reason, message):
    revisions = {}
    for name, state in states.items():
        rev = _rev(name, int(name[-1]))
        if state is None:
            del rev.status.conditions[:]
        else:
            _ready(rev, state)
        revisions[name] = rev
    route = _route(*(r.TrafficTarget(revision_name=name, percent=pct) for name, pct in targets))
    res = rc.resolve_traffic(route, {}, revisions)
    assert (res.status, res.reason, res.message, res.targets) == (status, reason, message, ())
    assert set(res.referenced) == {name for name, _ in targets if name in revisions}
    out = rc.route_status(route, res, True, 8080, now_s=NOW)
    for cond_type in ("AllTrafficAssigned", "Ready"):
        cond = condition(out, cond_type)
        assert (cond.status, cond.reason, cond.message) == (status, reason, message)


def test_traffic_names_every_revision_it_references():
    cfg = _cfg()
    cfg.status.latest_ready_revision_name = R2
    route = _route(r.TrafficTarget(configuration_name="hello", latest_revision=True, percent=50),
                   r.TrafficTarget(revision_name=R1, percent=50))
    res = rc.resolve_traffic(route, {"hello": cfg}, {R1: _rev(R1, 1), R2: _rev(R2, 2)})
    assert res.reason == ""
    assert res.referenced == (R2, R1)
