"""The `ebb` resource commands against an in-process fake ServingService (grpc.aio, port 0).

The CLI is blocking, so each command runs in a worker thread while the event loop serves
the fake controller.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import textwrap

import grpc
import pytest

from ebb.api.serving.v1 import resources_pb2, serving_pb2, serving_pb2_grpc
from ebb.cli import main as cli
from ebb.common.server import ServiceCore

KIND_FIELD = {
    resources_pb2.KIND_SERVICE: "service",
    resources_pb2.KIND_CONFIGURATION: "configuration",
    resources_pb2.KIND_REVISION: "revision",
    resources_pb2.KIND_ROUTE: "route",
}
FIELD_KIND = {v: k for k, v in KIND_FIELD.items()}
SERVICE_LABEL = "serving.knative.dev/service"


class FakeServing(serving_pb2_grpc.ServingServiceServicer):
    """Just enough of the controller: a store, webhook-like validation, Ready after a delay.

    Like Ebb's controller, a Service owns a Configuration and a Route of its name; a change
    of its template stamps a revision `NAME-0000N` (or the template's name), a traffic-only
    change stamps none; a new revision deploys (Ready=Unknown) while the Service says
    Ready=False (RevisionMissing), then status.traffic names revisions (tags get URLs). A
    Service whose command contains `crash` gets a revision that fails (the previous one
    keeps its traffic); with `routefail` the revision is fine but the route never is.
    """

    def __init__(self, ready_after_s: float = 0.2) -> None:
        self.store: dict[tuple[str, str, str], resources_pb2.Resource] = {}
        self.calls: list[str] = []
        self.applied: list[resources_pb2.Resource] = []
        self.ready_after_s = ready_after_s
        self.watchers: list[asyncio.Queue] = []
        self.tasks: set[asyncio.Task] = set()

    # -- helpers --

    def _publish(self, event_type: int, resource: resources_pb2.Resource) -> None:
        for queue in self.watchers:
            queue.put_nowait(serving_pb2.WatchResponse(type=event_type, resource=resource))

    def _validate(self, kind: str, message) -> str | None:
        traffic = list(message.spec.traffic) if kind in ("service", "route") else []
        if traffic:
            total = sum(t.percent for t in traffic)
            if total != 100:
                return f"spec.traffic: Traffic targets sum to {total}, want 100"
        return None

    def _resolve_traffic(self, service: resources_pb2.Service) -> list[resources_pb2.TrafficTarget]:
        """status.traffic: every target named by revision, tags with their URLs."""
        targets = list(service.spec.traffic) or [resources_pb2.TrafficTarget(latest_revision=True, percent=100)]
        resolved = []
        for target in targets:
            out = resources_pb2.TrafficTarget(tag=target.tag, percent=target.percent)
            if target.revision_name:
                out.revision_name = target.revision_name
            else:
                out.revision_name = service.status.latest_ready_revision_name
                out.latest_revision = True
            if target.tag:
                out.url = f"http://{target.tag}-{service.metadata.name}.{service.metadata.namespace}.localhost:8080"
            resolved.append(out)
        return resolved

    def _set_traffic(self, service: resources_pb2.Service) -> None:
        if not service.status.latest_ready_revision_name:
            return
        del service.status.traffic[:]
        service.status.traffic.extend(self._resolve_traffic(service))
        route = self.store[("route", service.metadata.namespace, service.metadata.name)].route
        route.spec.CopyFrom(resources_pb2.RouteSpec(traffic=service.spec.traffic))
        del route.status.traffic[:]
        route.status.traffic.extend(service.status.traffic)

    async def _become_ready(self, key: tuple[str, str, str], generation: int) -> None:
        await asyncio.sleep(self.ready_after_s)
        resource = self.store.get(key)
        if resource is None or resource.service.metadata.generation != generation:
            return
        service = resource.service
        command = " ".join(service.spec.template.spec.containers[0].command)
        status = service.status
        revision = self.store[("revision", key[1], status.latest_created_revision_name)].revision
        del status.conditions[:]
        del revision.status.conditions[:]
        if "crash" in command:
            revision.status.conditions.add(type="Ready", status="False", reason="ExitCode1",
                                           message="Container failed with exit code 1")
            status.conditions.add(type="Ready", status="False", reason="RevisionFailed",
                                  message=f"Revision {revision.metadata.name} failed")
        elif "routefail" in command:
            revision.status.conditions.add(type="Ready", status="True")
            status.conditions.add(type="Ready", status="False", reason="IngressNotConfigured",
                                  message="gateway rejected the route")
        else:
            revision.status.conditions.add(type="Ready", status="True")
            status.conditions.add(type="Ready", status="True")
            status.latest_ready_revision_name = status.latest_created_revision_name
        status.observed_generation = generation
        configuration = self.store[("configuration", key[1], key[2])].configuration
        configuration.status.latest_ready_revision_name = status.latest_ready_revision_name
        self._set_traffic(service)
        self._publish(serving_pb2.EVENT_TYPE_MODIFIED, resource)

    def _stamp_children(self, old: resources_pb2.Service | None, inner: resources_pb2.Service) -> None:
        """Configuration, Route and (when the template changed) a new Revision of a Service."""
        namespace, name = inner.metadata.namespace, inner.metadata.name
        template_changed = old is None or old.spec.template != inner.spec.template
        config_key = ("configuration", namespace, name)
        config = self.store.get(config_key)
        config_generation = (config.configuration.metadata.generation if config else 0) + (1 if template_changed else 0)
        if old is not None:
            inner.status.latest_created_revision_name = old.status.latest_created_revision_name
            inner.status.latest_ready_revision_name = old.status.latest_ready_revision_name
        inner.status.url = f"http://{name}.{namespace}.localhost:8080"
        inner.status.observed_generation = inner.metadata.generation
        inner.status.conditions.add(type="Ready", status="Unknown", reason="Reconciling")
        if template_changed:
            rev_name = inner.spec.template.metadata.name or f"{name}-{config_generation:05d}"
            inner.status.latest_created_revision_name = rev_name
            del inner.status.conditions[:]
            inner.status.conditions.add(type="Ready", status="False", reason="RevisionMissing",
                                        message="Waiting for revision to become ready.")
            self.store[("revision", namespace, rev_name)] = resources_pb2.Resource(revision=resources_pb2.Revision(
                api_version="serving.knative.dev/v1", kind="Revision",
                metadata=resources_pb2.ObjectMeta(
                    name=rev_name, namespace=namespace,
                    labels={SERVICE_LABEL: name, "serving.knative.dev/configuration": name,
                            "serving.knative.dev/configurationGeneration": str(config_generation)}),
                spec=inner.spec.template.spec,
                status=resources_pb2.RevisionStatus(
                    desired_replicas=1, actual_replicas=1, ready_replicas=1, serving_mode="serve",
                    stable_value=0.5, panic_value=1.0, requests_per_second=7.5,
                    conditions=[resources_pb2.Condition(type="Ready", status="Unknown", reason="Deploying")]),
            ))
        self.store[config_key] = resources_pb2.Resource(configuration=resources_pb2.Configuration(
            metadata=resources_pb2.ObjectMeta(name=name, namespace=namespace, generation=config_generation,
                                              labels={SERVICE_LABEL: name}),
            spec=resources_pb2.ConfigurationSpec(template=inner.spec.template),
            status=resources_pb2.ConfigurationStatus(
                latest_created_revision_name=inner.status.latest_created_revision_name,
                latest_ready_revision_name=inner.status.latest_ready_revision_name),
        ))
        route_key = ("route", namespace, name)
        if route_key not in self.store:
            self.store[route_key] = resources_pb2.Resource(route=resources_pb2.Route(
                metadata=resources_pb2.ObjectMeta(name=name, namespace=namespace, labels={SERVICE_LABEL: name}),
                spec=resources_pb2.RouteSpec(traffic=[resources_pb2.TrafficTarget(
                    configuration_name=name, latest_revision=True, percent=100)]),
                status=resources_pb2.RouteStatus(url=inner.status.url,
                                                 conditions=[resources_pb2.Condition(type="Ready", status="True")]),
            ))
        if old is not None:
            self._set_traffic(inner)

    # -- rpcs --

    async def Apply(self, request, context):
        self.calls.append("Apply")
        self.applied.append(request.resource)
        kind = request.resource.WhichOneof("kind")
        message = getattr(request.resource, kind)
        error = self._validate(kind, message)
        if error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        namespace = message.metadata.namespace or "default"
        key = (kind, namespace, message.metadata.name)
        old = self.store.get(key)
        stored = resources_pb2.Resource()
        stored.CopyFrom(request.resource)
        inner = getattr(stored, kind)
        inner.metadata.namespace = namespace
        inner.ClearField("status")
        old_inner = getattr(old, kind) if old is not None else None
        changed = old is None or old_inner.spec != inner.spec or old_inner.metadata.labels != inner.metadata.labels
        if old is not None and not changed:
            return serving_pb2.ApplyResponse(resource=old, created=False, changed=False)
        generation = 1 if old is None else old_inner.metadata.generation + (1 if old_inner.spec != inner.spec else 0)
        inner.metadata.generation = generation
        if request.dry_run:
            return serving_pb2.ApplyResponse(resource=stored, created=old is None, changed=True)
        if kind == "service":
            self._stamp_children(old_inner, inner)
        self.store[key] = stored
        self._publish(serving_pb2.EVENT_TYPE_ADDED if old is None else serving_pb2.EVENT_TYPE_MODIFIED, stored)
        if kind == "service":
            task = asyncio.ensure_future(self._become_ready(key, generation))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return serving_pb2.ApplyResponse(resource=stored, created=old is None, changed=True)

    async def Get(self, request, context):
        self.calls.append("Get")
        key = (KIND_FIELD[request.kind], request.namespace or "default", request.name)
        if key not in self.store:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'{key[0]} "{request.name}" not found')
        return serving_pb2.GetResponse(resource=self.store[key])

    async def List(self, request, context):
        self.calls.append("List")
        kind = KIND_FIELD[request.kind]
        found = []
        for (k, namespace, _), resource in sorted(self.store.items()):
            if k != kind or (request.namespace and request.namespace != namespace):
                continue
            labels = getattr(resource, kind).metadata.labels
            if all(labels.get(key) == value for key, value in request.label_selector.items()):
                found.append(resource)
        return serving_pb2.ListResponse(resources=found)

    async def Delete(self, request, context):
        self.calls.append("Delete")
        key = (KIND_FIELD[request.kind], request.namespace or "default", request.name)
        resource = self.store.pop(key, None)
        if resource is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'{key[0]} "{request.name}" not found')
        self._publish(serving_pb2.EVENT_TYPE_DELETED, resource)
        return serving_pb2.DeleteResponse()

    async def Watch(self, request, context):
        self.calls.append("Watch")
        queue: asyncio.Queue = asyncio.Queue()
        kind = KIND_FIELD[request.kind]
        for (k, namespace, _), resource in sorted(self.store.items()):
            if k == kind and (not request.namespace or request.namespace == namespace):
                queue.put_nowait(serving_pb2.WatchResponse(type=serving_pb2.EVENT_TYPE_ADDED, resource=resource))
        self.watchers.append(queue)
        try:
            while True:
                event = await queue.get()
                if event.resource.WhichOneof("kind") == kind:
                    yield event
        finally:
            self.watchers.remove(queue)


async def _serve(fake: FakeServing) -> ServiceCore:
    core = ServiceCore("fake-controller", port=0, grace_s=0.1)
    core.add(lambda server: serving_pb2_grpc.add_ServingServiceServicer_to_server(fake, server),
             "ebb.api.serving.v1.ServingService")
    await core.start()
    return core


async def _stop(core: ServiceCore, fake: FakeServing) -> None:
    """Stop the server and every readiness timer the fake still has pending."""
    await core.shutdown()
    for task in list(fake.tasks):
        task.cancel()
    await asyncio.gather(*fake.tasks, return_exceptions=True)


@pytest.fixture
async def controller():
    fake = FakeServing()
    core = await _serve(fake)
    yield fake, core.address
    await _stop(core, fake)


async def ebb(address: str, *argv: str) -> int:
    """Run `ebb ARGV --server ADDRESS` in a thread (it blocks) while the loop serves."""
    return await asyncio.to_thread(cli.main, [*argv, "--server", address], {})


MANIFEST = textwrap.dedent(
    """\
    apiVersion: serving.knative.dev/v1
    kind: Service
    metadata:
      name: hello
    spec:
      template:
        spec:
          containers:
            - image: local
              command: [python, app.py]
    ---
    apiVersion: serving.knative.dev/v1
    kind: Route
    metadata:
      name: blue-green
    spec:
      traffic:
        - revisionName: hello-00001
          percent: 100
    """
)


async def test_apply_reports_created_configured_unchanged(controller, tmp_path, capsys):
    fake, address = controller
    path = tmp_path / "service.yaml"
    path.write_text(MANIFEST)
    assert await ebb(address, "apply", "-f", str(path)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "service.serving.knative.dev/hello created",
        "route.serving.knative.dev/blue-green created",
    ]
    assert await ebb(address, "apply", "-f", str(path)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "service.serving.knative.dev/hello unchanged",
        "route.serving.knative.dev/blue-green unchanged",
    ]
    path.write_text(MANIFEST.replace("app.py", "app2.py"))
    assert await ebb(address, "apply", "-f", str(path)) == 0
    assert capsys.readouterr().out.splitlines()[0] == "service.serving.knative.dev/hello configured"
    assert await ebb(address, "apply", "-f", str(path), "--dry-run") == 0
    assert capsys.readouterr().out.splitlines()[0] == "service.serving.knative.dev/hello unchanged (dry run)"


async def test_apply_from_stdin(controller, capsys, monkeypatch):
    _, address = controller
    monkeypatch.setattr(sys, "stdin", io.StringIO(MANIFEST))
    assert await ebb(address, "apply", "-f", "-") == 0
    assert capsys.readouterr().out.splitlines()[0] == "service.serving.knative.dev/hello created"


async def test_apply_maps_server_validation_errors(controller, tmp_path, capsys):
    fake, address = controller
    path = tmp_path / "route.yaml"
    path.write_text(MANIFEST.split("---\n")[1].replace("percent: 100", "percent: 90"))
    assert await ebb(address, "apply", "-f", str(path)) == 1
    captured = capsys.readouterr()
    assert captured.err == "ebb: spec.traffic: Traffic targets sum to 90, want 100\n"
    assert captured.out == ""


async def test_bad_manifest_sends_nothing(controller, tmp_path, capsys):
    fake, address = controller
    path = tmp_path / "service.yaml"
    path.write_text(MANIFEST.replace("containers:", "containerz:"))
    assert await ebb(address, "apply", "-f", str(path)) == 1
    err = capsys.readouterr().err
    assert err == f"ebb: {path}: document 1: spec.template.spec.containerz: unknown field (did you mean containers?)\n"
    assert fake.calls == []
    assert await ebb(address, "apply", "-f", str(tmp_path / "missing.yaml")) == 1
    assert capsys.readouterr().err == f"ebb: {tmp_path / 'missing.yaml'}: no such file\n"


async def test_service_create_wait_prints_the_url(controller, capsys, tmp_path, monkeypatch):
    fake, address = controller
    monkeypatch.chdir(tmp_path)
    code = await ebb(address, "service", "create", "hello", "--cmd", "python app.py", "--env", "TARGET=you",
                     "--port", "8081", "--annotation", "autoscaling.knative.dev/min-scale=1",
                     "--concurrency-limit", "4", "--timeout", "30", "--wait", "--wait-timeout", "10")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines() == [
        "service.serving.knative.dev/hello created",
        "http://hello.default.localhost:8080",
    ]
    assert "Waiting for service hello" in captured.err
    assert "Get" in fake.calls
    spec = fake.store[("service", "default", "hello")].service.spec.template.spec
    container = spec.containers[0]
    assert list(container.command) == ["python", "app.py"] and container.image == "local"
    assert container.working_dir == str(tmp_path)
    assert container.env[0].name == "TARGET" and container.ports[0].container_port == 8081
    assert spec.container_concurrency == 4 and spec.timeout_seconds == 30


async def test_service_create_wait_reports_failure(controller, capsys):
    _, address = controller
    code = await ebb(address, "service", "create", "bad", "--cmd", "python crash.py", "--wait", "--wait-timeout", "10")
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines()[-1] == (
        "ebb: service bad failed to become ready: revision bad-00001: ExitCode1: Container failed with exit code 1"
    )


async def test_service_create_wait_tolerates_a_short_false_then_fails(controller, capsys):
    _, address = controller
    started = asyncio.get_running_loop().time()
    code = await ebb(address, "service", "create", "odd", "--cmd", "routefail", "--wait", "--wait-timeout", "10")
    elapsed = asyncio.get_running_loop().time() - started
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ebb: service odd failed to become ready: IngressNotConfigured: gateway rejected the route"
    )
    assert elapsed >= 2.0  # the failure window


async def test_service_create_wait_times_out(capsys):
    fake = FakeServing(ready_after_s=30)
    core = await _serve(fake)
    try:
        code = await ebb(core.address, "service", "create", "slow", "--cmd", "x", "--wait", "--wait-timeout", "0.5")
    finally:
        await _stop(core, fake)
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ebb: service slow not ready after 0.5s (last reason: revision slow-00001: Deploying)"
    )


async def test_service_create_refuses_to_overwrite(controller, capsys):
    _, address = controller
    assert await ebb(address, "service", "create", "hello", "--cmd", "x") == 0
    capsys.readouterr()
    assert await ebb(address, "service", "create", "hello", "--cmd", "y") == 1
    assert capsys.readouterr().err == (
        'ebb: service "hello" already exists in namespace default (use --force to replace it)\n'
    )
    assert await ebb(address, "service", "create", "hello", "--cmd", "y", "--force") == 0
    assert capsys.readouterr().out == "service.serving.knative.dev/hello configured\n"


async def test_service_list_describe_delete(controller, capsys):
    fake, address = controller
    assert await ebb(address, "service", "create", "hello", "--cmd", "python app.py", "--wait") == 0
    assert await ebb(address, "service", "create", "other", "--cmd", "x", "-n", "team") == 0
    capsys.readouterr()

    assert await ebb(address, "service", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "URL", "LATEST", "READY", "REASON"]
    assert lines[1].split() == ["hello", "http://hello.default.localhost:8080", "hello-00001", "True"]
    assert len(lines) == 2

    assert await ebb(address, "service", "list", "-A") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "NAMESPACE" and len(lines) == 3
    assert lines[2].split()[:2] == ["team", "other"]

    assert await ebb(address, "service", "list", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [item["metadata"]["name"] for item in data] == ["hello"]
    assert data[0]["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "app.py"]

    assert await ebb(address, "service", "describe", "hello") == 0
    text = capsys.readouterr().out
    assert "Name:            hello" in text and "URL:             http://hello.default.localhost:8080" in text
    assert "Command:         python app.py" in text and "Conditions:" in text and "hello-00001" in text
    # The revisions table carries the live load and instance counts the controller stores.
    revisions = text.splitlines()[text.splitlines().index("Revisions:") + 1:]
    assert revisions[0].split()[4:9] == ["ACTUAL", "READY-INSTANCES", "MODE", "CONCURRENCY", "RPS"]
    assert revisions[1].split()[-5:] == ["1", "1", "serve", "0.50", "7.5"]

    assert await ebb(address, "service", "describe", "hello", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metadata"]["name"] == "hello" and data["status"]["url"].startswith("http://hello.")

    assert await ebb(address, "service", "describe", "nope") == 1
    assert capsys.readouterr().err == 'ebb: service "nope" not found in namespace default\n'

    assert await ebb(address, "service", "delete", "hello") == 0
    assert capsys.readouterr().out == "service.serving.knative.dev/hello deleted\n"
    assert await ebb(address, "service", "delete", "hello") == 1
    assert capsys.readouterr().err == 'ebb: service "hello" not found in namespace default\n'


async def test_revision_and_route_lists(capsys):
    fake = FakeServing(ready_after_s=60)  # every revision stays Deploying here
    core = await _serve(fake)
    try:
        await _revision_and_route_lists(core.address, capsys)
    finally:
        await _stop(core, fake)


async def _revision_and_route_lists(address, capsys):
    assert await ebb(address, "service", "create", "hello", "--cmd", "x") == 0
    assert await ebb(address, "service", "create", "other", "--cmd", "x") == 0
    capsys.readouterr()
    assert await ebb(address, "revision", "list", "--service", "hello") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SERVICE", "GENERATION", "READY", "DESIRED", "ACTUAL", "READY-INSTANCES",
                                "MODE", "CONCURRENCY(stable/panic)", "RPS", "PANIC", "REASON"]
    assert lines[1].split() == ["hello-00001", "hello", "1", "Unknown", "1", "1", "1", "serve", "0.50/1.00", "7.5",
                                "no", "Deploying"]
    assert len(lines) == 2
    assert await ebb(address, "revision", "list", "-o", "json") == 0
    revisions = json.loads(capsys.readouterr().out)
    assert [r["metadata"]["name"] for r in revisions] == ["hello-00001", "other-00001"]
    assert revisions[0]["status"]["readyReplicas"] == 1
    assert await ebb(address, "revision", "describe", "hello-00001") == 0
    assert "Instances:       desired 1, actual 1, ready 1" in capsys.readouterr().out
    assert await ebb(address, "route", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "URL", "TRAFFIC", "READY", "REASON"]
    assert lines[1].split()[:4] == ["hello", "http://hello.default.localhost:8080", "100%", "hello"]  # spec: not resolved yet
    assert await ebb(address, "revision", "list", "--service", "none") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "No revisions of service none found" in captured.err


async def test_unreachable_controller_is_one_line(capsys):
    core = ServiceCore("gone", port=0)
    await core.start()
    address = core.address
    await core.shutdown()
    assert await ebb(address, "service", "list") == 1
    assert capsys.readouterr().err == f"ebb: cannot reach the controller at {address} (is `ebb up` running?)\n"


async def test_status_checks_health(controller, tmp_path, capsys):
    _, address = controller
    assert await ebb(address, "status") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["controller", address, "SERVING"]
    # A mesh.json with one component down: status says which, exit 1.
    core = ServiceCore("gone", port=0)
    await core.start()
    dead = core.address
    await core.shutdown()
    (tmp_path / "mesh.json").write_text(json.dumps(
        {"controller": address, "webhook": dead, "pid": os.getpid(), "data_dir": str(tmp_path)}))
    code = await asyncio.to_thread(cli.main, ["status", "-o", "json", "--data-dir", str(tmp_path)], {})
    captured = capsys.readouterr()
    assert code == 1
    data = json.loads(captured.out)
    assert data["components"]["controller"]["status"] == "SERVING"
    assert data["components"]["webhook"]["status"] == "UNREACHABLE"
    assert captured.err == "ebb: not healthy: webhook\n"


async def test_up_sample_applies_hello_and_reports_ready(controller, tmp_path, monkeypatch):
    from ebb.cli import up

    fake, address = controller
    app = tmp_path / "samples" / "hello" / "app.py"
    app.parent.mkdir(parents=True)
    app.write_text("print('hello')\n")
    monkeypatch.setattr(up, "REPO_ROOT", tmp_path)
    ports = dict(up.DEFAULT_PORTS, controller=int(address.rsplit(":", 1)[1]), gateway=18080)
    settings = up.UpSettings(data_dir=tmp_path, ports=ports)
    out, err = io.StringIO(), io.StringIO()
    tick = await asyncio.to_thread(up.start_sample, settings, out, err)
    assert tick is not None
    for _ in range(100):
        await asyncio.to_thread(tick)
        if "is ready" in out.getvalue():
            break
        await asyncio.sleep(0.05)
    text = out.getvalue()
    assert "curl -H 'Host: hello.default.localhost' http://127.0.0.1:18080/" in text
    assert "curl http://hello.default.localhost:18080/" in text
    assert "Sample service hello is ready at http://hello.default.localhost:8080" in text
    container = fake.store[("service", "default", "hello")].service.spec.template.spec.containers[0]
    assert list(container.command) == [sys.executable, str(app)]
    assert container.working_dir == str(tmp_path)
    assert err.getvalue() == ""
