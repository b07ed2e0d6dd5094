"""Knative manifests -> ebb.api.serving.v1 messages, and the field paths in manifest errors."""

from __future__ import annotations

import textwrap

import pytest

from ebb.api.serving.v1 import resources_pb2
from ebb.cli.manifest import ManifestError, load_documents, translate_parse_error

HELLO = textwrap.dedent(
    """\
    apiVersion: serving.knative.dev/v1
    kind: Service
    metadata:
      name: hello
      namespace: default
      creationTimestamp: null
    spec:
      template:
        metadata:
          name: hello-world
          annotations:
            autoscaling.knative.dev/min-scale: "1"
            autoscaling.knative.dev/target: "10"
        spec:
          containerConcurrency: 10
          timeoutSeconds: 300
          containers:
            - image: ghcr.io/knative/helloworld-go:latest
              command: ["python", "app.py"]
              args: ["--verbose"]
              ports:
                - containerPort: 8080
                  name: http1
              env:
                - name: TARGET
                  value: "World"
              readinessProbe:
                httpGet:
                  path: /healthz
                  httpHeaders:
                    - name: X-Probe
                      value: "1"
                periodSeconds: 1
              resources:
                limits:
                  cpu: 500m
                  memory: 128Mi
      traffic:
        - latestRevision: true
          percent: 80
        - revisionName: hello-world
          percent: 20
          tag: old
    status:
      url: http://hello.default.example.com
      someFieldEbbDoesNotHave: ignored because status belongs to the controller
    """
)

CONFIGURATION = textwrap.dedent(
    """\
    apiVersion: serving.knative.dev/v1
    kind: Configuration
    metadata:
      name: blue
    spec:
      template:
        spec:
          containers:
            - image: local
              command: [python, app.py]
    """
)

ROUTE = textwrap.dedent(
    """\
    apiVersion: serving.knative.dev/v1
    kind: Route
    metadata:
      name: split
    spec:
      traffic:
        - configurationName: blue
          percent: 100
        - revisionName: blue-00001
          percent: 0
          tag: pinned
    """
)


def _one(text: str, source: str = "service.yaml"):
    (document,) = load_documents(text, source)
    return document


def test_knative_service_parses_field_for_field():
    doc = _one(HELLO)
    assert doc.kind == "Service"
    service = doc.resource.service
    assert service.api_version == "serving.knative.dev/v1"
    assert service.metadata.name == "hello"
    template = service.spec.template
    assert template.metadata.name == "hello-world"
    assert template.metadata.annotations["autoscaling.knative.dev/min-scale"] == "1"
    spec = template.spec
    assert spec.HasField("container_concurrency") and spec.container_concurrency == 10
    assert spec.timeout_seconds == 300
    (container,) = spec.containers
    assert list(container.command) == ["python", "app.py"]
    assert list(container.args) == ["--verbose"]
    assert container.ports[0].container_port == 8080
    assert container.env[0].name == "TARGET" and container.env[0].value == "World"
    assert container.readiness_probe.http_get.path == "/healthz"
    assert container.readiness_probe.http_get.http_headers[0].value == "1"
    assert container.resources.limits["memory"] == "128Mi"
    latest, pinned = service.spec.traffic
    assert latest.latest_revision is True and latest.percent == 80
    assert pinned.revision_name == "hello-world" and pinned.tag == "old"


def test_status_is_dropped():
    assert not _one(HELLO).resource.service.HasField("status")


def test_configuration_and_route_parse():
    config = _one(CONFIGURATION).resource
    assert config.WhichOneof("kind") == "configuration"
    assert list(config.configuration.spec.template.spec.containers[0].command) == ["python", "app.py"]
    route = _one(ROUTE).resource.route
    assert route.spec.traffic[0].configuration_name == "blue"
    # percent 0 is explicit: it must survive (the field has presence).
    assert route.spec.traffic[1].HasField("percent") and route.spec.traffic[1].percent == 0


def test_multi_document_keeps_order_and_skips_empty_documents():
    text = f"---\n{HELLO}---\n# just a comment\n---\n{CONFIGURATION}---\n{ROUTE}"
    docs = load_documents(text, "all.yaml")
    assert [d.kind for d in docs] == ["Service", "Configuration", "Route"]
    assert [d.index for d in docs] == [1, 2, 3]
    assert all(d.source == "all.yaml" for d in docs)


def test_timestamps_accept_yaml_datetimes():
    text = HELLO.replace("creationTimestamp: null", "creationTimestamp: 2024-05-01T12:00:00Z")
    meta = _one(text).resource.service.metadata
    assert meta.creation_timestamp.ToJsonString() == "2024-05-01T12:00:00Z"


def test_namespace_flag_fills_in_and_must_match():
    (doc,) = load_documents(CONFIGURATION, "c.yaml", namespace="team")
    assert doc.resource.configuration.metadata.namespace == "team"
    with pytest.raises(ManifestError, match=r"metadata.namespace: default does not match --namespace team"):
        load_documents(HELLO, "service.yaml", namespace="team")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("containers:", "containerz:"),
         "service.yaml: spec.template.spec.containerz: unknown field (did you mean containers?)"),
        (("- image: ghcr", "- imagez: ghcr"),
         "service.yaml: spec.template.spec.containers[0].imagez: unknown field (did you mean image?)"),
        (("containerConcurrency: 10", "container_concurrency: 10"),
         "service.yaml: spec.template.spec.container_concurrency: unknown field (did you mean containerConcurrency?)"),
        (("  traffic:", "  trafic:"), "service.yaml: spec.trafic: unknown field (did you mean traffic?)"),
        (("namespace: default", "namespace: default\n  generateName: x-"),
         "service.yaml: metadata.generateName: unknown field"),
        (('value: "World"', "value: 3"),
         'service.yaml: spec.template.spec.containers[0].env[0].value: expected a string, got an integer (quote it: "3")'),
        (('min-scale: "1"', "min-scale: 1"),
         "service.yaml: spec.template.metadata.annotations.autoscaling.knative.dev/min-scale: "
         'expected a string, got an integer (quote it: "1")'),
        (("percent: 20", "percent: twenty"),
         "service.yaml: spec.traffic[1].percent: expected an integer, got a string 'twenty'"),
        (("latestRevision: true", "latestRevision: \"yes\""),
         "service.yaml: spec.traffic[0].latestRevision: expected true or false, got a string"),
        (('command: ["python", "app.py"]', "command: python app.py"),
         "service.yaml: spec.template.spec.containers[0].command: expected a list, got a string"),
        (("containerPort: 8080", "containerPort: 99999999999"),
         "service.yaml: spec.template.spec.containers[0].ports[0].containerPort: 99999999999 is out of range"),
        (("creationTimestamp: null", "creationTimestamp: yesterday"),
         "service.yaml: metadata.creationTimestamp: expected an RFC 3339 time"),
    ],
)
def test_errors_name_the_field_path(change, message):
    old, new = change
    assert old in HELLO
    with pytest.raises(ManifestError) as caught:
        load_documents(HELLO.replace(old, new), "service.yaml")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_error_in_second_document_names_the_document():
    text = HELLO + "---\n" + CONFIGURATION.replace("command:", "cmd:")
    with pytest.raises(ManifestError) as caught:
        load_documents(text, "all.yaml")
    assert str(caught.value) == "all.yaml: document 2: spec.template.spec.containers[0].cmd: unknown field"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: [x\n",
         r"^svc.yaml:5:1: invalid YAML: "),
        ("apiVersion: v1\n kind: Service\n", r"^svc.yaml:2:6: invalid YAML: mapping values are not allowed here$"),
        ("key: 'unterminated\n", r"^svc.yaml:2:1: invalid YAML: "),
    ],
)
def test_bad_yaml_reports_line_and_column(text, message):
    with pytest.raises(ManifestError, match=message):
        load_documents(text, "svc.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
         "svc.yaml: apiVersion: v1 ConfigMap is not an Ebb resource (want serving.knative.dev/v1)"),
        ("apiVersion: serving.knative.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\n",
         "svc.yaml: apiVersion: serving.knative.dev/v1alpha1 is not supported, use serving.knative.dev/v1"),
        ("apiVersion: serving.knative.dev/v1\nkind: DomainMapping\nmetadata: {name: x}\n",
         "svc.yaml: kind: DomainMapping is not supported (one of Service, Configuration, Route)"),
        ("apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata: {name: x}\n",
         "svc.yaml: kind: Revision cannot be applied"),
        ("kind: Service\nmetadata: {name: x}\n", "svc.yaml: apiVersion: required"),
        ("apiVersion: serving.knative.dev/v1\nmetadata: {name: x}\n", "svc.yaml: kind: required"),
        ("apiVersion: serving.knative.dev/v1\nkind: Service\nspec: {}\n", "svc.yaml: metadata.name: required"),
        ("- a\n- b\n", "svc.yaml: expected a mapping with apiVersion and kind, got a list"),
        ("# nothing\n", "svc.yaml: no resources found"),
        ("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: [1]\n",
         "svc.yaml: spec: expected a mapping, got a list"),
    ],
)
def test_wrong_documents_are_explained(text, message):
    with pytest.raises(ManifestError) as caught:
        load_documents(text, "svc.yaml")
    assert str(caught.value).startswith(message)


def test_resource_round_trips_to_proto_names():
    service = _one(HELLO).resource.service
    assert isinstance(service, resources_pb2.Service)
    assert service.spec.template.spec.containers[0].readiness_probe.period_seconds == 1


def test_translate_parse_error_fallback():
    text = (
        'Failed to parse spec field: Failed to parse template field: Failed to parse spec field: '
        'Message type "ebb.api.serving.v1.RevisionSpec" has no field named "containerz" at '
        '"Service.spec.template.spec".\n Available Fields(except extensions): "[...]"...'
    )
    assert translate_parse_error(text) == "spec.template.spec.containerz: unknown field"
    text = (
        "Failed to parse spec field: Failed to parse traffic field: Expected true or false without "
        "quotes at Service.spec.traffic[0].latestRevision.."
    )
    assert translate_parse_error(text) == "spec.traffic[0].latestRevision: Expected true or false without quotes"
    text = "Failed to parse metadata field: Failed to parse annotations field: expected string or bytes-like object, got 'int'.."
    assert translate_parse_error(text) == "metadata.annotations: expected string or bytes-like object, got 'int'"
