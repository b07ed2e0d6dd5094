"""Knative's defaults as the webhook applies them (pure: dict in, new dict out)."""

from __future__ import annotations

import copy

import pytest

from ebb.webhook.admission import AdmissionSettings, admit, default

TCP_PROBE = {"tcpSocket": {}, "successThreshold": 1}


def service(**spec) -> dict:
    return {
        "kind": "Service",
        "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"image": "img"}]}}, **spec},
    }


def test_service_gets_every_default():
    assert default(service()) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {
                    "timeoutSeconds": 300,
                    "containerConcurrency": 0,
                    "containers": [
                        {"name": "user-container", "image": "img", "readinessProbe": TCP_PROBE}
                    ],
                }
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
    }


def test_input_is_not_modified_and_unknown_fields_are_kept():
    obj = service()
    obj["status"] = {"observedGeneration": 3}
    obj["metadata"]["uid"] = "u-1"
    obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "x"}]
    before = copy.deepcopy(obj)
    out = default(obj)
    assert obj == before
    assert out["status"] == {"observedGeneration": 3}
    assert out["metadata"]["uid"] == "u-1"
    assert out["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] == [{"name": "x"}]


def test_defaulting_is_idempotent():
    once = default(service())
    assert default(once) == once


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "default"), ({"namespace": ""}, "default"), ({"namespace": "team-a"}, "team-a")],
)
def test_namespace(given, expected):
    obj = {"kind": "Route", "metadata": {"name": "r", **given}, "spec": {"traffic": []}}
    assert default(obj)["metadata"]["namespace"] == expected


def test_api_version_kept_when_given():
    obj = service() | {"apiVersion": "serving.knative.dev/v1alpha1"}
    assert default(obj)["apiVersion"] == "serving.knative.dev/v1alpha1"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, {"timeoutSeconds": 300, "containerConcurrency": 0}),
        ({"timeoutSeconds": 0}, {"timeoutSeconds": 300, "containerConcurrency": 0}),
        (
            {"timeoutSeconds": "0"},
            {"timeoutSeconds": 300, "containerConcurrency": 0},
        ),  # proto3 JSON int64
        (
            {"timeoutSeconds": 30, "containerConcurrency": 5},
            {"timeoutSeconds": 30, "containerConcurrency": 5},
        ),
        ({"containerConcurrency": 0}, {"timeoutSeconds": 300, "containerConcurrency": 0}),
    ],
)
def test_timeout_and_concurrency(spec, expected):
    obj = service()
    obj["spec"]["template"]["spec"].update(spec)
    out = default(obj)["spec"]["template"]["spec"]
    assert {k: out[k] for k in expected} == expected


def test_settings_change_the_defaults():
    settings = AdmissionSettings(
        default_namespace="ebb",
        revision_timeout_s=60,
        container_concurrency=10,
        user_container_name="app",
    )
    out = default(service(), settings=settings)
    assert out["metadata"]["namespace"] == "ebb"
    assert out["spec"]["template"]["spec"]["timeoutSeconds"] == 60
    assert out["spec"]["template"]["spec"]["containerConcurrency"] == 10
    assert out["spec"]["template"]["spec"]["containers"][0]["name"] == "app"


def test_container_name_kept_when_given():
    obj = service()
    obj["spec"]["template"]["spec"]["containers"][0]["name"] = "web"
    assert default(obj)["spec"]["template"]["spec"]["containers"][0]["name"] == "web"


def test_several_containers_are_numbered_and_only_the_serving_one_probed():
    obj = service()
    obj["spec"]["template"]["spec"]["containers"] = [
        {"image": "a"},
        {"image": "b", "ports": [{"containerPort": 8080}]},
    ]
    a, b = default(obj)["spec"]["template"]["spec"]["containers"]
    assert a == {"name": "user-container-0", "image": "a"}
    assert b["name"] == "user-container-1"
    assert b["readinessProbe"] == TCP_PROBE


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (None, TCP_PROBE),
        ({}, TCP_PROBE),
        (
            {"httpGet": {"path": "/healthz"}},
            {"httpGet": {"path": "/healthz"}, "successThreshold": 1},
        ),
        (
            {"tcpSocket": {"port": 8080}, "successThreshold": 2},
            {"tcpSocket": {"port": 8080}, "successThreshold": 2},
        ),
        (
            {"httpGet": {}, "periodSeconds": 5},
            {
                "httpGet": {},
                "periodSeconds": 5,
                "successThreshold": 1,
                "failureThreshold": 3,
                "timeoutSeconds": 1,
            },
        ),
        (
            {"httpGet": {}, "periodSeconds": 5, "failureThreshold": 7, "timeoutSeconds": 2},
            {
                "httpGet": {},
                "periodSeconds": 5,
                "successThreshold": 1,
                "failureThreshold": 7,
                "timeoutSeconds": 2,
            },
        ),
    ],
    ids=["absent", "empty", "httpGet", "tcp kept", "periodic", "periodic kept"],
)
def test_readiness_probe(probe, expected):
    obj = service()
    if probe is not None:
        obj["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = probe
    assert default(obj)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] == expected


def test_liveness_probe_is_not_defaulted():
    obj = service()
    obj["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] = {"httpGet": {}}
    assert default(obj)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] == {
        "httpGet": {}
    }


@pytest.mark.parametrize(
    ("traffic", "expected"),
    [
        (None, [{"latestRevision": True, "percent": 100}]),
        ([], [{"latestRevision": True, "percent": 100}]),
        (
            [{"percent": 80}, {"revisionName": "hello-00001", "percent": 20}],
            [
                {"percent": 80, "latestRevision": True},
                {"revisionName": "hello-00001", "percent": 20, "latestRevision": False},
            ],
        ),
        ([{"latestRevision": False, "percent": 100}], [{"latestRevision": False, "percent": 100}]),
    ],
    ids=["absent", "empty", "latestRevision from revisionName", "explicit kept"],
)
def test_service_traffic(traffic, expected):
    obj = service() if traffic is None else service(traffic=traffic)
    assert default(obj)["spec"]["traffic"] == expected


def test_standalone_route_targets_get_latest_revision_but_no_traffic_block():
    route = {
        "kind": "Route",
        "metadata": {"name": "r"},
        "spec": {
            "traffic": [
                {"configurationName": "c", "percent": 50},
                {"revisionName": "c-00001", "percent": 50},
            ]
        },
    }
    assert default(route)["spec"]["traffic"] == [
        {"configurationName": "c", "percent": 50, "latestRevision": True},
        {"revisionName": "c-00001", "percent": 50, "latestRevision": False},
    ]
    empty = {"kind": "Route", "metadata": {"name": "r"}, "spec": {}}
    assert "traffic" not in default(empty)["spec"]


def test_route_owned_by_a_service_follows_its_configuration():
    route = {
        "kind": "Route",
        "metadata": {"name": "hello", "labels": {"serving.knative.dev/service": "hello"}},
        "spec": {},
    }
    assert default(route)["spec"]["traffic"] == [
        {"configurationName": "hello", "latestRevision": True, "percent": 100}
    ]


def test_configuration_template_defaulted_without_traffic():
    config = {
        "kind": "Configuration",
        "metadata": {"name": "c"},
        "spec": {"template": {"spec": {"containers": [{"command": ["x"]}]}}},
    }
    out = default(config)
    assert "traffic" not in out["spec"]
    assert out["spec"]["template"]["spec"]["containers"][0]["name"] == "user-container"
    assert out["spec"]["template"]["spec"]["timeoutSeconds"] == 300


def test_revision_spec_defaulted():
    revision = {
        "kind": "Revision",
        "metadata": {"name": "c-00001"},
        "spec": {"containers": [{"command": ["x"]}]},
    }
    out = default(revision)
    assert out["spec"] == {
        "containers": [{"name": "user-container", "command": ["x"], "readinessProbe": TCP_PROBE}],
        "timeoutSeconds": 300,
        "containerConcurrency": 0,
    }


def test_missing_spec_gets_defaults_where_a_spec_is_needed():
    out = default({"kind": "Service", "metadata": {"name": "s"}})
    assert out["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    assert out["spec"]["template"]["spec"] == {"timeoutSeconds": 300, "containerConcurrency": 0}


def test_alias_annotations_are_renamed_to_canonical_keys():
    obj = service()
    obj["spec"]["template"]["metadata"] = {
        "annotations": {
            "autoscaling.knative.dev/minScale": "1",
            "autoscaling.knative.dev/window": "60s",
            "x/y": "z",
        }
    }
    assert default(obj)["spec"]["template"]["metadata"]["annotations"] == {
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/window": "60s",
        "x/y": "z",
    }
    revision = {
        "kind": "Revision",
        "metadata": {"name": "r", "annotations": {"autoscaling.knative.dev/maxScale": "3"}},
        "spec": {},
    }
    assert default(revision)["metadata"]["annotations"] == {
        "autoscaling.knative.dev/max-scale": "3"
    }


def test_both_spellings_are_left_for_validation_to_report():
    anns = {"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/minScale": "2"}
    obj = service()
    obj["spec"]["template"]["metadata"] = {"annotations": dict(anns)}
    assert default(obj)["spec"]["template"]["metadata"]["annotations"] == anns


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Pod", "spec": {}},
        {"metadata": {"name": "x"}},
        {"kind": "Service", "spec": "nonsense"},
    ],
)
def test_unknown_kinds_and_bad_shapes_pass_through(obj):
    out = default(obj)
    assert out == obj | (
        {"apiVersion": "serving.knative.dev/v1", "metadata": {"namespace": "default"}}
        if obj.get("kind") == "Service"
        else {}
    )


def test_admit_defaults_then_validates():
    defaulted, errors = admit(service(), None, "CREATE")
    assert errors == []
    assert defaulted == default(service())
    _, errors = admit(service(traffic=[{"percent": 90}]), None, "CREATE")
    assert [str(e) for e in errors] == ["spec.traffic: Traffic targets sum to 90, want 100"]
