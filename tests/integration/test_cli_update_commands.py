"""`ebb service update`, `ebb revision describe|delete` and `ebb route list|describe` against
the in-process fake ServingService of test_cli_fake_controller (grpc.aio, port 0)."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli_fake_controller import FakeServing, _serve, _stop, ebb

from ebb.api.serving.v1 import resources_pb2


@pytest.fixture
async def hello(capsys):
    """A fake controller with service hello at hello-00001 (Ready)."""
    fake = FakeServing(ready_after_s=0.05)
    core = await _serve(fake)
    try:
        assert await ebb(core.address, "service", "create", "hello", "--cmd", "python app.py", "--wait") == 0
        capsys.readouterr()
        yield fake, core.address
    finally:
        await _stop(core, fake)


def service(fake: FakeServing) -> resources_pb2.Service:
    return fake.store[("service", "default", "hello")].service


def revisions(fake: FakeServing) -> list[str]:
    return sorted(name for kind, _, name in fake.store if kind == "revision")


def traffic(fake: FakeServing) -> list[tuple[str, int, str]]:
    return [(t.revision_name, t.percent, t.tag) for t in service(fake).status.traffic]


async def test_update_env_makes_a_new_revision_and_moves_traffic(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--env", "A=1", "--wait") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "service.serving.knative.dev/hello configured", "http://hello.default.localhost:8080"]
    assert "Waiting for service hello to become ready with its new revision" in captured.err
    assert revisions(fake) == ["hello-00001", "hello-00002"]
    assert traffic(fake) == [("hello-00002", 100, "")]
    sent = fake.applied[-1].service
    assert [(e.name, e.value) for e in sent.spec.template.spec.containers[0].env] == [("A", "1")]
    assert not sent.HasField("status") and not sent.metadata.uid


async def test_split_and_tags_make_no_revision(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--env", "A=1", "--wait") == 0
    capsys.readouterr()
    assert await ebb(address, "service", "update", "hello", "--traffic", "hello-00001=50",
                     "--traffic", "hello-00002=50", "--tag", "hello-00001=old", "--wait") == 0
    captured = capsys.readouterr()
    assert "with the change" in captured.err
    assert revisions(fake) == ["hello-00001", "hello-00002"]  # traffic only: no revision
    assert traffic(fake) == [("hello-00001", 50, "old"), ("hello-00002", 50, "")]

    assert await ebb(address, "service", "describe", "hello") == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("Traffic:")
    assert [line.split() for line in lines[at + 1: at + 4]] == [
        ["PERCENT", "REVISION", "LATEST", "TAG", "URL"],
        ["50%", "hello-00001", "old", "http://old-hello.default.localhost:8080"],
        ["50%", "hello-00002"],
    ]
    assert "Latest created:  hello-00002" in lines and "Latest ready:    hello-00002" in lines

    assert await ebb(address, "route", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "50% hello-00001 (old), 50% hello-00002" in lines[1]
    assert await ebb(address, "route", "describe", "hello", "-o", "json") == 0
    route = json.loads(capsys.readouterr().out)
    assert route["status"]["traffic"][0] == {"tag": "old", "revisionName": "hello-00001", "percent": 50,
                                             "url": "http://old-hello.default.localhost:8080"}
    assert await ebb(address, "route", "describe", "hello") == 0
    assert "http://old-hello.default.localhost:8080" in capsys.readouterr().out

    # Untag: the 50% share stays, the tag and its URL go.
    assert await ebb(address, "service", "update", "hello", "--untag", "old", "--wait") == 0
    capsys.readouterr()
    assert traffic(fake) == [("hello-00001", 50, ""), ("hello-00002", 50, "")]


async def test_latest_follows_a_new_revision(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--env", "A=1", "--traffic", "hello-00001=50",
                     "--traffic", "@latest=50", "--tag", "@latest=current", "--wait") == 0
    assert traffic(fake) == [("hello-00002", 50, "current"), ("hello-00001", 50, "")]
    assert await ebb(address, "service", "update", "hello", "--env", "A=2", "--wait") == 0
    assert traffic(fake) == [("hello-00003", 50, "current"), ("hello-00001", 50, "")]
    capsys.readouterr()


async def test_bad_sum_is_the_webhooks_message(hello, capsys):
    fake, address = hello
    before = len(fake.applied)
    code = await ebb(address, "service", "update", "hello", "--traffic", "hello-00001=40", "--traffic", "@latest=50")
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == "ebb: spec.traffic: Traffic targets sum to 90, want 100\n"
    assert captured.out == ""
    assert len(fake.applied) == before + 1  # sent, refused, nothing stored
    assert traffic(fake) == [("hello-00001", 100, "")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hello"], "nothing to update: give at least one of --cmd, --env, --annotation, --concurrency-limit, "
                    "--timeout, --revision-name, --traffic, --tag, --untag"),
        (["nope", "--env", "A=1"], 'service "nope" not found in namespace default'),
        (["hello", "--traffic", "hello-00009=100"], 'revision "hello-00009" not found in namespace default'),
        (["hello", "--tag", "hello-00009=x"], 'revision "hello-00009" not found in namespace default'),
        (["hello", "--untag", "x"], "--untag x: no traffic target has tag x"),
        (["hello", "--env", "A"], "--env 'A': expected KEY=VALUE or KEY- (to remove KEY)"),
    ],
)
async def test_update_errors_send_nothing(hello, capsys, argv, message):
    fake, address = hello
    before = len(fake.applied)
    assert await ebb(address, "service", "update", *argv) == 1
    assert capsys.readouterr().err == f"ebb: {message}\n"
    assert len(fake.applied) == before


async def test_a_named_revision_may_be_routed_in_the_same_update(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--revision-name", "v2", "--env", "A=1",
                     "--traffic", "hello-v2=10", "--traffic", "hello-00001=90", "--wait") == 0
    capsys.readouterr()
    assert service(fake).spec.template.metadata.name == "hello-v2"
    assert revisions(fake) == ["hello-00001", "hello-v2"]
    assert traffic(fake) == [("hello-v2", 10, ""), ("hello-00001", 90, "")]
    # The next template change without --revision-name is numbered again.
    assert await ebb(address, "service", "update", "hello", "--env", "A=2") == 0
    assert service(fake).spec.template.metadata.name == ""
    assert "hello-00003" in revisions(fake)
    capsys.readouterr()


async def test_update_wait_reports_a_failing_revision_and_the_old_one_keeps_traffic(hello, capsys):
    fake, address = hello
    code = await ebb(address, "service", "update", "hello", "--cmd", "python crash.py", "--wait", "--wait-timeout", "10")
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines()[-1] == (
        "ebb: service hello failed to become ready: revision hello-00002: ExitCode1: Container failed with exit code 1")
    assert traffic(fake) == [("hello-00001", 100, "")]
    assert await ebb(address, "revision", "list") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[3], r[-1]) for r in rows] == [("hello-00001", "True", "no"), ("hello-00002", "False", "ExitCode1")]
    assert await ebb(address, "revision", "describe", "hello-00002") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split()[:3] == ["Ready", "False", "ExitCode1"]
    assert await ebb(address, "revision", "describe", "hello-00002", "-o", "yaml") == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["status"]["conditions"][0]["reason"] == "ExitCode1"


async def test_annotations_on_update(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--annotation", "autoscaling.knative.dev/min-scale=2",
                     "--annotation", "owner=me", "--concurrency-limit", "3", "--timeout", "20") == 0
    capsys.readouterr()
    sent = fake.applied[-1].service
    assert dict(sent.metadata.annotations) == {"owner": "me"}
    assert dict(sent.spec.template.metadata.annotations) == {"autoscaling.knative.dev/min-scale": "2", "owner": "me"}
    assert (sent.spec.template.spec.container_concurrency, sent.spec.template.spec.timeout_seconds) == (3, 20)


async def test_revision_delete_refuses_what_would_break(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--env", "A=1", "--wait") == 0
    assert await ebb(address, "service", "update", "hello", "--tag", "hello-00001=old", "--wait") == 0
    capsys.readouterr()

    assert await ebb(address, "revision", "delete", "hello-00001") == 1
    assert capsys.readouterr().err == (
        'ebb: revision "hello-00001" is routed by route hello (0% tag old): move its traffic first with '
        "`ebb service update hello --traffic/--untag`, or use --force\n")
    assert await ebb(address, "revision", "delete", "hello-00002") == 1
    assert capsys.readouterr().err.startswith('ebb: revision "hello-00002" is routed by route hello (100%)')

    assert await ebb(address, "service", "update", "hello", "--untag", "old", "--wait") == 0
    capsys.readouterr()
    assert await ebb(address, "revision", "delete", "hello-00001") == 0
    assert capsys.readouterr().out == "revision.serving.knative.dev/hello-00001 deleted\n"
    assert revisions(fake) == ["hello-00002"]
    assert await ebb(address, "revision", "delete", "hello-00001") == 1
    assert capsys.readouterr().err == 'ebb: revision "hello-00001" not found in namespace default\n'


async def test_revision_delete_of_the_latest_and_force(hello, capsys):
    fake, address = hello
    assert await ebb(address, "service", "update", "hello", "--cmd", "python crash.py", "--wait") == 1
    capsys.readouterr()
    assert await ebb(address, "revision", "delete", "hello-00002") == 1
    assert capsys.readouterr().err == (
        'ebb: revision "hello-00002" is the latest revision of configuration hello and would be created again: '
        "update the configuration instead, or use --force\n")
    assert await ebb(address, "revision", "delete", "hello-00002", "--force") == 0
    assert capsys.readouterr().out == "revision.serving.knative.dev/hello-00002 deleted\n"
    assert "Delete" in fake.calls
