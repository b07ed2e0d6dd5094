"""AdmissionReview (admission.k8s.io/v1) answers, computed by the pure review_response()."""

from __future__ import annotations

import base64
import json

import pytest

from ebb.webhook import jsonpatch
from ebb.webhook.admission import AdmissionSettings, default, review_response


def service(**spec) -> dict:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "team-a"},
        "spec": {"template": {"spec": {"containers": [{"image": "img"}]}}, **spec},
    }


def review(obj, operation="CREATE", old=None, **request) -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Service"},
            "operation": operation,
            "namespace": "team-a",
            "object": obj,
            "oldObject": old,
            **request,
        },
    }


def _patch(answer) -> list:
    return json.loads(base64.b64decode(answer["response"]["patch"]))


def test_validate_allows_a_good_object():
    answer = review_response(review(default(service())), "validate")
    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True},
    }


def test_validate_denies_with_every_error():
    obj = default(service(traffic=[{"percent": 90, "tag": "Bad_Tag"}]))
    response = review_response(review(obj), "validate")["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["reason"] == "BadRequest"
    message = response["status"]["message"]
    assert message.startswith("validation failed: ")
    lines = message.removeprefix("validation failed: ").split("\n")
    assert lines[-1] == "spec.traffic: Traffic targets sum to 90, want 100"
    assert lines[0].startswith("spec.traffic[0].tag: invalid value: not a DNS 1035 label: ")


def test_validate_update_uses_old_object():
    old = default(service())
    old["spec"]["template"]["metadata"] = {"name": "hello-v1"}
    new = json.loads(json.dumps(old))
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "img2"
    response = review_response(review(new, "UPDATE", old), "validate")["response"]
    assert response["allowed"] is False
    assert (
        "spec.template.metadata.name: Saw the following changes without a name change"
        in response["status"]["message"]
    )


@pytest.mark.parametrize(
    "extra",
    [{"operation": "DELETE", "object": None}, {"operation": "CONNECT"}, {"subResource": "status"}],
    ids=["delete", "connect", "status subresource"],
)
def test_validate_and_mutate_skip(extra):
    bad = service(traffic=[{"percent": 1}])
    for action in ("validate", "mutate"):
        r = review(bad)
        r["request"].update(extra)
        assert review_response(r, action)["response"] == {
            "uid": r["request"]["uid"],
            "allowed": True,
        }


def test_mutate_patch_turns_the_object_into_its_defaulted_form():
    obj = service()
    response = review_response(review(obj), "mutate")["response"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert jsonpatch.apply(obj, _patch({"response": response})) == default(obj)


def test_mutate_of_a_defaulted_object_has_no_patch():
    response = review_response(review(default(service())), "mutate")["response"]
    assert response == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_mutate_takes_the_namespace_from_the_request():
    obj = service()
    del obj["metadata"]["namespace"]
    ops = _patch(review_response(review(obj), "mutate"))
    assert {"op": "add", "path": "/metadata/namespace", "value": "team-a"} in ops


def test_mutate_escapes_annotation_keys():
    obj = service()
    obj["spec"]["template"]["metadata"] = {"annotations": {"autoscaling.knative.dev/minScale": "1"}}
    ops = _patch(review_response(review(obj), "mutate"))
    assert {
        "op": "remove",
        "path": "/spec/template/metadata/annotations/autoscaling.knative.dev~1minScale",
    } in ops
    assert {
        "op": "add",
        "path": "/spec/template/metadata/annotations/autoscaling.knative.dev~1min-scale",
        "value": "1",
    } in ops


def test_settings_reach_the_rules():
    obj = service()
    obj["spec"]["template"]["metadata"] = {
        "annotations": {"autoscaling.knative.dev/initial-scale": "0"}
    }
    obj = default(obj)
    assert review_response(review(obj), "validate")["response"]["allowed"] is False
    allowed = review_response(
        review(obj), "validate", settings=AdmissionSettings(allow_zero_initial_scale=True)
    )
    assert allowed["response"]["allowed"] is True


def test_answers_with_the_request_api_version():
    r = review(default(service()))
    r["apiVersion"] = "admission.k8s.io/v1beta1"
    assert review_response(r, "validate")["apiVersion"] == "admission.k8s.io/v1beta1"


@pytest.mark.parametrize("bad", [{}, {"request": None}, {"request": {"operation": "CREATE"}}, []])
def test_not_a_review_raises(bad):
    with pytest.raises(ValueError):
        review_response(bad, "validate")


def test_unknown_action_raises():
    with pytest.raises(ValueError):
        review_response(review(service()), "convert")
