"""Admission counters of the webhook's two transports, driven without sockets."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.serving.v1 import resources_pb2
from ebb.api.webhook.v1 import admission_pb2
from ebb.common.metrics import new_registry
from ebb.webhook.admission import AdmissionSettings
from ebb.webhook.metrics import WebhookMetrics, kind_label, operation_label
from ebb.webhook.server import AdmissionReviewServer, AdmissionServicer

NAME = "ebb_webhook_admissions_total"


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code, details):
        raise Aborted(code, details)


def service(**spec) -> resources_pb2.Resource:
    body = {
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"command": ["python", "app.py"]}]}}, **spec},
    }
    resource = resources_pb2.Resource()
    json_format.ParseDict(body, resource.service)
    return resource


@pytest.fixture
def metrics():
    return WebhookMetrics(new_registry())


def count(metrics, **labels):
    return metrics.registry.get_sample_value(NAME, labels) or 0


async def defaulted(**spec) -> resources_pb2.Resource:
    plain = AdmissionServicer(AdmissionSettings())  # no metrics: counts nothing
    reply = await plain.Default(admission_pb2.DefaultRequest(resource=service(**spec)), FakeContext())
    return reply.resource


async def test_grpc_validate_allowed_and_denied(metrics):
    servicer = AdmissionServicer(AdmissionSettings(), metrics)
    ok = await servicer.Validate(
        admission_pb2.ValidateRequest(
            resource=await defaulted(), operation=admission_pb2.OPERATION_CREATE
        ),
        FakeContext(),
    )
    bad = await servicer.Validate(
        admission_pb2.ValidateRequest(
            resource=await defaulted(traffic=[{"percent": 90}]),
            operation=admission_pb2.OPERATION_UPDATE,
        ),
        FakeContext(),
    )
    assert ok.allowed and not bad.allowed
    assert sum(s.value for s in metrics.admissions.collect()[0].samples if s.name == NAME) == 2
    common = {"kind": "Service", "action": "validate", "transport": "grpc"}
    assert count(metrics, operation="CREATE", verdict="allowed", **common) == 1
    assert count(metrics, operation="UPDATE", verdict="denied", **common) == 1


async def test_grpc_default_allowed_and_error(metrics):
    servicer = AdmissionServicer(AdmissionSettings(), metrics)
    await servicer.Default(admission_pb2.DefaultRequest(resource=service()), FakeContext())
    with pytest.raises(Aborted):
        await servicer.Default(admission_pb2.DefaultRequest(), FakeContext())
    common = {"action": "default", "transport": "grpc", "operation": "CREATE"}
    assert count(metrics, kind="Service", verdict="allowed", **common) == 1
    assert count(metrics, kind="unknown", verdict="error", **common) == 1


def review(kind="Service", operation="CREATE", obj=None, **spec):
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "serving.knative.dev", "version": "v1", "kind": kind},
                "operation": operation,
                "object": obj
                if obj is not None
                else json_format.MessageToDict(service(**spec).service),
            },
        }
    ).encode()


def test_https_reviews_are_counted(metrics):
    server = AdmissionReviewServer(AdmissionSettings(), metrics=metrics)
    assert server._route("POST", "/mutate", review(operation="UPDATE"))[0] == 200
    status, answer = server._route("POST", "/validate", review(traffic=[{"percent": 90}]))
    assert status == 200 and not answer["response"]["allowed"]
    assert server._route("POST", "/validate", b"{not json")[0] == 400
    assert server._route("POST", "/validate", review(kind="Pod", operation="PATCHY"))[0] == 200
    assert server._route("GET", "/healthz", b"")[0] == 200  # not an admission
    https = {"transport": "https"}
    assert count(metrics, kind="Service", operation="CREATE", action="validate", verdict="denied", **https) == 1
    assert count(metrics, kind="Service", operation="UPDATE", action="default", verdict="allowed", **https) == 1
    assert count(metrics, kind="unknown", operation="unknown", action="validate", verdict="error", **https) == 1
    assert count(metrics, kind="other", operation="other", action="validate", verdict="allowed", **https) == 1


def test_exposition_parses(metrics):
    metrics.admission(kind="Route", operation="DELETE", action="validate", verdict="allowed", transport="grpc")
    text = generate_latest(metrics.registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "ebb_webhook_admissions"]
    assert family.type == "counter"
    (sample,) = [s for s in family.samples if s.name == NAME]
    assert sample.labels == {
        "kind": "Route",
        "operation": "DELETE",
        "action": "validate",
        "verdict": "allowed",
        "transport": "grpc",
    }


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("Service", "Service"), ("DomainMapping", "DomainMapping"), ("Pod", "other"), ("", "unknown"), (None, "unknown"), (3, "other")],
)
def test_kind_label_is_bounded(raw, kind):
    assert kind_label(raw) == kind


@pytest.mark.parametrize(
    ("raw", "op"), [("create", "CREATE"), ("DELETE", "DELETE"), ("x" * 300, "other"), (None, "unknown")]
)
def test_operation_label_is_bounded(raw, op):
    assert operation_label(raw) == op
