"""How the CLI shows resources (JSON numbers, describe summaries) and the tour's manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from helpers import REPO

from ebb.api.serving.v1 import resources_pb2
from ebb.cli import output, resources
from ebb.cli.manifest import load_documents, resolve_working_dirs
from ebb.webhook.admission import admit

SAMPLES = REPO / "samples" / "hello"


def service_with_split() -> resources_pb2.Service:
    return ParseDict({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default", "generation": "4"},
        "spec": {
            "template": {"spec": {"containerConcurrency": "0", "containers": [{"command": ["python", "app.py"]}]}},
            "traffic": [{"revisionName": "hello-00001", "percent": "50", "tag": "old"},
                        {"latestRevision": True, "percent": "50"}],
        },
        "status": {
            "observedGeneration": "4", "url": "http://hello.default.localhost:8080",
            "latestCreatedRevisionName": "hello-00003", "latestReadyRevisionName": "hello-00002",
            "traffic": [
                {"revisionName": "hello-00001", "percent": "50", "tag": "old",
                 "url": "http://old-hello.default.localhost:8080"},
                {"revisionName": "hello-00002", "latestRevision": True, "percent": "50"},
            ],
            "conditions": [
                {"type": "ConfigurationsReady", "status": "False", "reason": "RevisionFailed",
                 "message": 'Revision "hello-00003" failed with message: Container exited with code 3.'},
                {"type": "RoutesReady", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "RevisionFailed",
                 "message": 'Revision "hello-00003" failed with message: Container exited with code 3.'},
            ],
        },
    }, resources_pb2.Service())


def revision(name: str, generation: int, ready: str, reason: str = "") -> resources_pb2.Revision:
    return ParseDict({
        "metadata": {"name": name, "labels": {"serving.knative.dev/configurationGeneration": str(generation),
                                              "serving.knative.dev/service": "hello",
                                              "serving.knative.dev/configuration": "hello"}},
        "status": {"readyReplicas": 1 if ready == "True" else 0, "servingMode": "serve",
                   "actualReplicas": 2 if ready == "True" else 0,
                   "stableValue": 3.5 if ready == "True" else 0, "requestsPerSecond": 12.25 if ready == "True" else 0,
                   "conditions": [{"type": "Ready", "status": ready, "reason": reason}]},
    }, resources_pb2.Revision())


def test_json_has_numbers_where_kubernetes_has_numbers():
    data = output.to_dict(service_with_split())
    assert data["metadata"]["generation"] == 4
    assert data["spec"]["template"]["spec"]["containerConcurrency"] == 0
    assert [t["percent"] for t in data["spec"]["traffic"]] == [50, 50]
    assert data["status"]["observedGeneration"] == 4
    assert [t["percent"] for t in data["status"]["traffic"]] == [50, 50]
    # Round trip: what -o json prints is a manifest Apply accepts unchanged.
    again = ParseDict(data, resources_pb2.Service())
    assert again == service_with_split()
    assert "generation: 4" in output.dump(data, "yaml")
    json.dumps(data)


def test_describe_service_shows_traffic_tags_urls_latest_and_reasons():
    text = resources.summary("service", service_with_split(), [
        revision("hello-00001", 1, "True"), revision("hello-00003", 3, "False", "ExitCode3"),
        revision("hello-00002", 2, "True")])
    lines = text.splitlines()
    assert "Latest created:  hello-00003" in lines
    assert "Latest ready:    hello-00002" in lines
    traffic = lines[lines.index("Traffic:") + 1: lines.index("Revisions:")]
    assert [line.split() for line in traffic] == [
        ["PERCENT", "REVISION", "LATEST", "TAG", "URL"],
        ["50%", "hello-00001", "old", "http://old-hello.default.localhost:8080"],
        ["50%", "hello-00002", "yes"],
    ]
    revisions = lines[lines.index("Revisions:") + 1: lines.index("Conditions:")]
    assert [line.split() for line in revisions] == [
        ["NAME", "GENERATION", "TRAFFIC", "READY", "ACTUAL", "READY-INSTANCES", "MODE", "CONCURRENCY", "RPS",
         "REASON"],
        ["hello-00003", "3", "False", "0", "0", "serve", "0.00", "0.0", "ExitCode3"],  # live load and instances
        ["hello-00002", "2", "50%", "True", "2", "1", "serve", "3.50", "12.2"],
        ["hello-00001", "1", "50%", "(old)", "True", "2", "1", "serve", "3.50", "12.2"],
    ]
    conditions = lines[lines.index("Conditions:") + 1:]
    assert conditions[0].split() == ["TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"]
    assert conditions[3].split()[:4] == ["Ready", "False", "RevisionFailed", 'Revision']
    assert "Container exited with code 3." in conditions[3]


def test_describe_shows_requested_traffic_until_it_is_resolved():
    service = service_with_split()
    del service.status.traffic[:]
    lines = resources.summary("service", service).splitlines()
    at = lines.index("Traffic (requested, not yet resolved):")
    assert [line.split() for line in lines[at + 2: at + 4]] == [
        ["50%", "hello-00001", "old"], ["50%", "@latest", "yes"]]


def test_describe_route_and_revision():
    route = ParseDict({
        "metadata": {"name": "greeter", "namespace": "default"},
        "spec": {"traffic": [{"configurationName": "greeter-config", "percent": "100"}]},
        "status": {"url": "http://greeter.default.localhost:8080",
                   "conditions": [{"type": "Ready", "status": "Unknown", "reason": "RevisionMissing"}]},
    }, resources_pb2.Route())
    lines = resources.summary("route", route).splitlines()
    assert "URL:             http://greeter.default.localhost:8080" in lines
    assert lines[lines.index("Traffic (requested, not yet resolved):") + 2].split() == [
        "100%", "@latest", "(greeter-config)", "yes"]
    rev = revision("hello-00003", 3, "False", "ExitCode3")
    rev.spec.containers.add(command=["python", "-c", "import sys; sys.exit(3)"])
    lines = resources.summary("revision", rev).splitlines()
    assert "Service:         hello" in lines and "Configuration:   hello" in lines
    assert "Command:         python -c 'import sys; sys.exit(3)'" in lines
    assert lines[-1].split()[:3] == ["Ready", "False", "ExitCode3"]


# ---- manifests of the tour ----


def test_relative_working_dirs_are_resolved_against_the_manifest(tmp_path):
    doc = load_documents(
        "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {name: c}\n"
        "spec: {template: {spec: {containers: [{command: [python, app.py], workingDir: app}]}}}\n",
        "c.yaml")[0]
    resolve_working_dirs(doc.resource, tmp_path)
    assert doc.message.spec.template.spec.containers[0].working_dir == str(tmp_path / "app")
    absolute = load_documents(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: s}\n"
        "spec: {template: {spec: {containers: [{command: [x], workingDir: /srv}, {command: [y]}]}}}\n",
        "s.yaml")[0]
    resolve_working_dirs(absolute.resource, tmp_path)
    containers = absolute.message.spec.template.spec.containers
    assert (containers[0].working_dir, containers[1].working_dir) == ("/srv", "")


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_tour_manifests_parse_and_pass_the_webhook(path: Path):
    documents = load_documents(path.read_text(), str(path))
    assert documents
    for document in documents:
        resolve_working_dirs(document.resource, path.parent)
        for container in getattr(document.message.spec, "template", resources_pb2.RevisionTemplateSpec()).spec.containers:
            assert container.working_dir == str(SAMPLES)
            assert (SAMPLES / container.command[-1]).is_file()
        _, errors = admit(MessageToDict(document.message), None, "CREATE")
        assert errors == [], (path.name, errors)


def test_tour_manifests_are_the_expected_ones():
    assert sorted(p.name for p in SAMPLES.glob("*.yaml")) == [
        "configuration-and-route.yaml", "service.yaml", "traffic-split.yaml"]
    kinds = [d.kind for d in load_documents((SAMPLES / "configuration-and-route.yaml").read_text(), "c")]
    assert kinds == ["Configuration", "Route"]
