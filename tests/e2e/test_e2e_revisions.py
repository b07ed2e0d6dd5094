"""Revisions and traffic end to end, through the real `ebb up` (controller, webhook, Envoy,
queue, app): `ebb service update`, splits and tags, the webhook's refusal, a failing
revision, the runtime contract, and standalone Configuration + Route manifests.

One mesh serves the whole module (starting it is the slow part); each test deploys its own
service so the tests do not depend on each other's order.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
from collections import Counter

import pytest
from helpers import REPO, SAMPLE_APP, wait_until, websocket_echo
from mesh import Mesh

pytestmark = pytest.mark.e2e

APP = f"{sys.executable} {SAMPLE_APP}"
WAIT = ("--wait", "--wait-timeout", "60")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("revisions") / "ebb")
    # The tour's manifests say `command: [python, app.py]`: resolve `python` to this interpreter.
    m.env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), m.env.get("PATH", "")])
    with m.running():
        yield m


def request(mesh: Mesh, host: str, path: str = "/", *, method: str = "GET", body=None,
            headers: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict, bytes]:
    """One request through the Envoy gateway: (status, headers (lower-case names), body)."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.ports["http"], timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})},
                     encode_chunked=body is not None and not isinstance(body, bytes))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def text(mesh: Mesh, host: str, path: str = "/") -> str:
    status, body = mesh.get(host, path)
    assert status == 200, (status, body)
    return body


def serves(mesh: Mesh, host: str, want: str, timeout_s: float = 30.0) -> None:
    """Wait until `host` answers 200 with body `want`."""
    wait_until(lambda: mesh.get(host) == (200, want), timeout_s, message=f"{host} to answer {want!r}")


def hello_from(revision: str) -> str:
    return f"Hello from {revision}!\n"


def revision_names(mesh: Mesh, service: str) -> list[str]:
    listed = json.loads(mesh.ebb("revision", "list", "--service", service, "-o", "json").stdout)
    return sorted(r["metadata"]["name"] for r in listed)


def describe(mesh: Mesh, kind: str, name: str) -> dict:
    return json.loads(mesh.ebb(kind, "describe", name, "-o", "json").stdout)


def create(mesh: Mesh, name: str) -> None:
    url = mesh.ebb("service", "create", name, "--cmd", APP, *WAIT).stdout.splitlines()[-1]
    assert url == f"http://{name}.default.localhost:{mesh.ports['http']}"
    serves(mesh, f"{name}.default.localhost", hello_from(f"{name}-00001"))


def test_update_makes_a_revision_and_metadata_changes_do_not(mesh, tmp_path):
    create(mesh, "hello")
    res = mesh.ebb("service", "update", "hello", "--env", "TARGET=v2", *WAIT)
    assert res.stdout.splitlines() == [
        "service.serving.knative.dev/hello configured", f"http://hello.default.localhost:{mesh.ports['http']}"]
    # Ready means Envoy ACKed the route to the new revision: every request reaches it.
    for _ in range(5):
        assert text(mesh, "hello.default.localhost") == hello_from("hello-00002")
    assert revision_names(mesh, "hello") == ["hello-00001", "hello-00002"]  # the old one stays
    svc = describe(mesh, "service", "hello")
    assert svc["status"]["latestCreatedRevisionName"] == svc["status"]["latestReadyRevisionName"] == "hello-00002"
    assert svc["status"]["traffic"] == [{"revisionName": "hello-00002", "latestRevision": True, "percent": 100}]

    # A metadata-only change through a manifest: the Service as stored, plus a label.
    manifest = {k: v for k, v in svc.items() if k != "status"}
    manifest["metadata"] = {"name": "hello", "namespace": "default", "labels": {"team": "blue"}}
    path = tmp_path / "hello.json"  # JSON is YAML
    path.write_text(json.dumps(manifest))
    assert mesh.ebb("apply", "-f", str(path)).stdout == "service.serving.knative.dev/hello configured\n"
    after = describe(mesh, "service", "hello")
    assert after["metadata"]["labels"] == {"team": "blue"}
    assert after["metadata"]["generation"] == svc["metadata"]["generation"]
    # The controller passes the label on to the Route in the same pass that would stamp a
    # revision; once the Route has it, no revision was made.
    wait_until(lambda: describe(mesh, "route", "hello")["metadata"]["labels"].get("team") == "blue", 15,
               message="the label to reach the route")
    assert revision_names(mesh, "hello") == ["hello-00001", "hello-00002"]
    # ... and the Configuration's generation did not move: the next template change is 00003.
    mesh.ebb("service", "update", "hello", "--env", "TARGET=v3", *WAIT)
    assert revision_names(mesh, "hello") == ["hello-00001", "hello-00002", "hello-00003"]
    assert text(mesh, "hello.default.localhost") == hello_from("hello-00003")


def test_split_tags_and_a_bad_sum(mesh):
    create(mesh, "split")
    mesh.ebb("service", "update", "split", "--env", "TARGET=v2", *WAIT)
    before = describe(mesh, "service", "split")["metadata"]["generation"]

    mesh.ebb("service", "update", "split", "--traffic", "split-00001=50", "--traffic", "split-00002=50", *WAIT)
    assert revision_names(mesh, "split") == ["split-00001", "split-00002"]  # traffic only: no revision
    seen = Counter(text(mesh, "split.default.localhost") for _ in range(40))
    assert set(seen) == {hello_from("split-00001"), hello_from("split-00002")}, seen

    # A tag gives one revision its own host; the split itself does not change.
    mesh.ebb("service", "update", "split", "--tag", "split-00001=old", *WAIT)
    serves(mesh, "old-split.default.localhost", hello_from("split-00001"))
    assert {text(mesh, "old-split.default.localhost") for _ in range(10)} == {hello_from("split-00001")}
    described = mesh.ebb("service", "describe", "split").stdout
    assert f"http://old-split.default.localhost:{mesh.ports['http']}" in described
    status = describe(mesh, "service", "split")["status"]["traffic"]
    assert [(t.get("tag", ""), t["revisionName"], t["percent"], t.get("url", "")) for t in status] == [
        ("old", "split-00001", 50, f"http://old-split.default.localhost:{mesh.ports['http']}"),
        ("", "split-00002", 50, ""),
    ]

    mesh.ebb("service", "update", "split", "--untag", "old", *WAIT)
    wait_until(lambda: mesh.get("old-split.default.localhost")[0] == 404, 30, message="the tag host to 404")

    # The webhook refuses a split that does not add up; nothing changes.
    generation = describe(mesh, "service", "split")["metadata"]["generation"]
    assert generation > before
    res = mesh.ebb("service", "update", "split", "--traffic", "split-00001=40", "--traffic", "split-00002=50",
                   check=False)
    assert (res.returncode, res.stdout, res.stderr) == (
        1, "", "ebb: spec.traffic: Traffic targets sum to 90, want 100\n")
    assert describe(mesh, "service", "split")["metadata"]["generation"] == generation


def test_a_failing_revision_reports_why_and_the_previous_one_keeps_serving(mesh):
    create(mesh, "fail")
    res = mesh.ebb("service", "update", "fail", "--cmd", f"{sys.executable} -c 'import sys; sys.exit(3)'",
                   *WAIT, check=False)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1].startswith(
        "ebb: service fail failed to become ready: revision fail-00002: ExitCode3"), res.stderr
    try:
        rows = [line.split() for line in mesh.ebb("revision", "list", "--service", "fail").stdout.splitlines()]
        by_name = {row[0]: row for row in rows[1:]}
        assert by_name["fail-00002"][3] == "False" and by_name["fail-00002"][-1] == "ExitCode3"
        assert by_name["fail-00001"][3] == "True"
        described = mesh.ebb("revision", "describe", "fail-00002").stdout.splitlines()
        ready = next(line.split() for line in described if line.strip().startswith("Ready "))
        assert ready[:3] == ["Ready", "False", "ExitCode3"]
        svc = describe(mesh, "service", "fail")
        assert svc["status"]["latestCreatedRevisionName"] == "fail-00002"
        assert svc["status"]["latestReadyRevisionName"] == "fail-00001"
        reasons = {c["type"]: c.get("reason", "") for c in svc["status"]["conditions"]}
        assert reasons["Ready"] == reasons["ConfigurationsReady"] == "RevisionFailed"
        for _ in range(10):
            assert text(mesh, "fail.default.localhost") == hello_from("fail-00001")
    finally:
        mesh.ebb("service", "delete", "fail")  # stop its crash loop


def test_runtime_contract(mesh):
    create(mesh, "contract")
    host = "contract.default.localhost"
    env = json.loads(text(mesh, host, "/env"))
    assert {k: env[k] for k in ("K_SERVICE", "K_CONFIGURATION", "K_REVISION")} == {
        "K_SERVICE": "contract", "K_CONFIGURATION": "contract", "K_REVISION": "contract-00001"}
    assert env["PORT"].isdigit()

    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    status, _, body = request(mesh, host, "/headers", headers={
        "X-User-Header": "kept as is", "traceparent": trace, "tracestate": "ebb=1"})
    assert status == 200
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    assert seen["host"] == host
    assert seen["x-user-header"] == "kept as is"
    assert seen["traceparent"] == trace and seen["tracestate"] == "ebb=1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"].split(",")[0].strip()  # Envoy's hop (its own address for loopback)
    # Forwarded is built from the X-Forwarded-* the queue received, as Knative's queue-proxy
    # does: Envoy sets X-Forwarded-For and -Proto, no X-Forwarded-Host, so no host=.
    first = seen["forwarded"].split(",")[0]
    assert first.startswith("for=") and first.endswith(";proto=http") and "host=" not in first, seen["forwarded"]
    # A client's own X-Forwarded-For chain is extended, not replaced.
    status, _, body = request(mesh, host, "/headers", headers={"X-Forwarded-For": "203.0.113.7"})
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    assert seen["x-forwarded-for"].startswith("203.0.113.7,")
    assert seen["forwarded"].startswith("for=203.0.113.7;proto=http, for="), seen["forwarded"]

    # 20 MB up and back, with a Content-Length... (the app echoes bodies on any path but `/`)
    payload = random.Random(5).randbytes(20 * 1024 * 1024)
    status, _, body = request(mesh, host, "/echo", method="POST", body=payload, timeout_s=60)
    assert status == 200 and len(body) == len(payload) and body == payload
    # ... and chunked (the app answers a chunked body chunked).
    pieces = [payload[i: i + 65536] for i in range(0, 8 * 1024 * 1024, 65536)]
    status, headers, body = request(mesh, host, "/echo", method="POST", body=iter(pieces), timeout_s=60)
    assert status == 200 and headers.get("transfer-encoding") == "chunked" and body == b"".join(pieces)
    # A streamed (chunked) response arrives whole and in order.
    status, headers, body = request(mesh, host, "/?chunks=200&chunk_delay=1")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body.decode() == "".join(f"chunk {i}\n" for i in range(200))


def test_a_websocket_through_the_gateway(mesh):
    create(mesh, "ws")
    big = bytes(range(256)) * 400
    status, echoes, answered = websocket_echo(
        mesh.ports["http"], "ws.default.localhost", [b"hello", big, b"bye"]
    )
    assert (status, echoes) == (101, [b"hello", big, b"bye"])
    assert answered["upgrade"].lower() == "websocket"
    serves(mesh, "ws.default.localhost", hello_from("ws-00001"))  # plain requests still fine


def test_timeout_seconds_bounds_the_wait_for_an_answer_not_a_stream(mesh):
    """As in Knative: timeoutSeconds ends a request with a 504 only while nothing of the
    answer has come; a response that has started streams on through the gateway."""
    mesh.ebb("service", "create", "slow", "--cmd", APP, "--timeout", "1", *WAIT)
    host = "slow.default.localhost"
    status, _, body = request(mesh, host, "/?chunks=3&chunk_delay=600")  # 1.2 s after the head
    assert (status, body) == (200, b"chunk 0\nchunk 1\nchunk 2\n")
    status, _, body = request(mesh, host, "/?sleep=2500")
    assert status == 504 and b"timeoutSeconds=1" in body, (status, body)


def test_configuration_and_route_manifest(mesh):
    path = REPO / "samples" / "hello" / "configuration-and-route.yaml"
    res = mesh.ebb("apply", "-f", str(path))
    assert res.stdout.splitlines() == [
        "configuration.serving.knative.dev/greeter-config created", "route.serving.knative.dev/greeter created"]
    serves(mesh, "greeter.default.localhost", hello_from("greeter-config-00001"), timeout_s=60)
    route = describe(mesh, "route", "greeter")
    assert route["status"]["url"] == f"http://greeter.default.localhost:{mesh.ports['http']}"
    assert route["status"]["traffic"] == [
        {"revisionName": "greeter-config-00001", "latestRevision": True, "percent": 100}]
    listed = mesh.ebb("route", "list").stdout
    assert "100% greeter-config-00001" in listed
    # Applying it again changes nothing, and a dry run says so too.
    assert mesh.ebb("apply", "-f", str(path), "--dry-run").stdout.splitlines() == [
        "configuration.serving.knative.dev/greeter-config unchanged (dry run)",
        "route.serving.knative.dev/greeter unchanged (dry run)"]
    assert mesh.ebb("apply", "-f", str(path)).stdout.splitlines() == [
        "configuration.serving.knative.dev/greeter-config unchanged", "route.serving.knative.dev/greeter unchanged"]


# ---- failure handling of the controller ----


def test_traffic_to_a_missing_revision_keeps_the_last_good_config(mesh, tmp_path):
    create(mesh, "keep")
    svc = describe(mesh, "service", "keep")
    manifest = {"apiVersion": svc["apiVersion"], "kind": "Service", "metadata": {"name": "keep"},
                "spec": {"template": svc["spec"]["template"],
                         "traffic": [{"revisionName": "keep-00009", "percent": 100}]}}
    path = tmp_path / "keep.json"
    path.write_text(json.dumps(manifest))
    mesh.ebb("apply", "-f", str(path))  # `ebb service update` refuses a missing revision itself

    def route_reason() -> str:
        conditions = describe(mesh, "route", "keep")["status"].get("conditions", [])
        return next((c.get("reason", "") for c in conditions if c["type"] == "Ready"), "")

    wait_until(lambda: route_reason() == "RevisionMissing", 15, message="the route to say RevisionMissing")
    for _ in range(20):
        assert mesh.get("keep.default.localhost") == (200, hello_from("keep-00001"))


def test_deleting_the_routed_revision_fails_the_route(mesh):
    create(mesh, "gone")
    res = mesh.ebb("service", "update", "gone", "--cmd", f"{sys.executable} -c 'import sys; sys.exit(3)'",
                   *WAIT, check=False)
    assert res.returncode == 1
    try:
        mesh.ebb("revision", "delete", "gone-00001", "--force")

        def route_ready() -> tuple[str, str]:
            conditions = describe(mesh, "route", "gone")["status"].get("conditions", [])
            ready = next(c for c in conditions if c["type"] == "Ready")
            return ready["status"], ready.get("reason", "")

        wait_until(lambda: route_ready() == ("False", "RevisionMissing"), 10,
                   message="the route to say RevisionMissing")
    finally:
        mesh.ebb("service", "delete", "gone")
