"""`ebb service update` as a pure edit: flag parsing, the template edit, kn's traffic
computation, and what the real webhook (pure admission) says about the result."""

from __future__ import annotations

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict

from ebb.api.serving.v1 import resources_pb2
from ebb.cli.errors import CliError
from ebb.cli.update import (
    KeyEdits,
    TrafficEdits,
    UpdateArgs,
    compute_traffic,
    edit_service,
    new_revision_refs,
    parse_key_edits,
    parse_tags,
    parse_traffic,
    revision_name_for,
    template_changed,
)
from ebb.webhook.admission import admit

T = resources_pb2.TrafficTarget


def stored_service(**spec_extra) -> resources_pb2.Service:
    """A Service as the controller stores it (defaulted by the webhook, with status)."""
    body = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default", "uid": "u-1", "generation": "3",
                     "resourceVersion": "17", "labels": {"team": "a"}, "annotations": {"note": "x"}},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}},
                "spec": {"containerConcurrency": "0", "timeoutSeconds": "300", "containers": [{
                    "name": "user-container", "image": "local", "command": ["python", "app.py"],
                    "args": ["--v1"], "workingDir": "/srv",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "readinessProbe": {"tcpSocket": {}, "successThreshold": 1},
                }]},
            },
            "traffic": [{"latestRevision": True, "percent": "100"}],
        },
        "status": {"observedGeneration": "3", "url": "http://hello.default.localhost:8080",
                   "latestReadyRevisionName": "hello-00003"},
    }
    body["spec"].update(spec_extra)
    return ParseDict(body, resources_pb2.Service())


def targets(*items: dict) -> list[resources_pb2.TrafficTarget]:
    return [ParseDict(item, T()) for item in items]


def as_dicts(ts) -> list[dict]:
    return [MessageToDict(t) for t in ts]


def webhook(service: resources_pb2.Service, old: resources_pb2.Service | None = None) -> list[str]:
    """What Ebb's webhook (the pure admission function) says about applying `service`."""
    obj = MessageToDict(service)
    old_obj = MessageToDict(old) if old is not None else None
    _, errors = admit(obj, old_obj, "UPDATE" if old is not None else "CREATE")
    return [str(e) for e in errors]


# ---- flags ----


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["A=1", "B=x=y", "C="], KeyEdits((("A", "1"), ("B", "x=y"), ("C", "")), ())),
        (["A-", "B=2"], KeyEdits((("B", "2"),), ("A",))),
        (["autoscaling.knative.dev/min-scale-"], KeyEdits((), ("autoscaling.knative.dev/min-scale",))),
        (None, KeyEdits()),
    ],
)
def test_parse_key_edits(values, expected):
    assert parse_key_edits(values, "--env") == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["A"], "--env 'A': expected KEY=VALUE or KEY- (to remove KEY)"),
        (["-"], "--env '-': expected KEY=VALUE or KEY- (to remove KEY)"),
        (["=1"], "--env '=1': expected KEY=VALUE or KEY-"),
        (["A=1", "A-"], "--env: A is both set and removed"),
    ],
)
def test_parse_key_edits_errors(values, message):
    with pytest.raises(CliError) as err:
        parse_key_edits(values, "--env")
    assert str(err.value) == message


def test_parse_traffic_and_tags():
    assert parse_traffic(None) is None
    assert parse_traffic(["hello-00001=50", "@latest=50%", "old=0"]) == (
        ("hello-00001", 50), ("@latest", 50), ("old", 0))
    # Ranges are the webhook's to judge (its message names the field path).
    assert parse_traffic(["a=150", "b=-50"]) == (("a", 150), ("b", -50))
    assert parse_tags(["hello-00001=old", "@latest=current"]) == (("hello-00001", "old"), ("@latest", "current"))


@pytest.mark.parametrize(
    ("parse", "values", "message"),
    [
        (parse_traffic, ["hello-00001"], "--traffic 'hello-00001': expected REVISION=PERCENT, TAG=PERCENT or @latest=PERCENT"),
        (parse_traffic, ["=50"], "--traffic '=50': expected REVISION=PERCENT, TAG=PERCENT or @latest=PERCENT"),
        (parse_traffic, ["a=half"], "--traffic 'a=half': 'half' is not a whole percent"),
        (parse_traffic, ["a=12.5"], "--traffic 'a=12.5': '12.5' is not a whole percent"),
        (parse_traffic, ["a=50", "a=50"], "--traffic: a is given more than once"),
        (parse_tags, ["hello-00001"], "--tag 'hello-00001': expected REVISION=TAG or @latest=TAG"),
        (parse_tags, ["a=x", "b=x"], "--tag: tag x is given more than once"),
    ],
)
def test_parse_errors(parse, values, message):
    with pytest.raises(CliError) as err:
        parse(values)
    assert str(err.value) == message


# ---- the template edit ----


def test_nothing_to_update_is_an_error():
    with pytest.raises(CliError, match="nothing to update: give at least one of --cmd"):
        edit_service(stored_service(), UpdateArgs())


def test_env_edit_keeps_order_sets_in_place_appends_and_removes():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(env=parse_key_edits(["B=20", "C=3", "A-", "NOPE-"], "--env")))
    assert [(e.name, e.value) for e in desired.spec.template.spec.containers[0].env] == [("B", "20"), ("C", "3")]
    assert template_changed(current, desired)
    assert webhook(desired, current) == []


def test_only_what_apply_takes_is_sent():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(env=parse_key_edits(["A=2"], "--env")))
    assert not desired.HasField("status")
    meta = desired.metadata
    assert (meta.name, meta.namespace, dict(meta.labels), dict(meta.annotations)) == (
        "hello", "default", {"team": "a"}, {"note": "x"})
    assert not meta.uid and not meta.generation and not meta.resource_version
    # The stored object is left alone.
    assert current.spec.template.spec.containers[0].env[0].value == "1"


def test_cmd_replaces_command_and_args_and_keeps_the_rest():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(cmd="python -c 'import sys; sys.exit(3)'"))
    container = desired.spec.template.spec.containers[0]
    assert list(container.command) == ["python", "-c", "import sys; sys.exit(3)"]
    assert list(container.args) == []
    assert container.working_dir == "/srv" and container.name == "user-container"


@pytest.mark.parametrize(("cmd", "message"), [("", "--cmd: must not be empty"),
                                              ("python 'x", "--cmd \"python 'x\": No closing quotation")])
def test_cmd_errors(cmd, message):
    with pytest.raises(CliError) as err:
        edit_service(stored_service(), UpdateArgs(cmd=cmd))
    assert str(err.value) == message


def test_annotations_autoscaling_on_the_template_only():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(annotations=parse_key_edits(
        ["autoscaling.knative.dev/max-scale=3", "owner=me", "note-", "autoscaling.knative.dev/min-scale-"],
        "--annotation")))
    assert dict(desired.metadata.annotations) == {"owner": "me"}
    assert dict(desired.spec.template.metadata.annotations) == {
        "autoscaling.knative.dev/max-scale": "3", "owner": "me"}
    assert webhook(desired, current) == []


def test_concurrency_and_timeout():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(concurrency_limit=4, timeout_s=30))
    spec = desired.spec.template.spec
    assert (spec.container_concurrency, spec.timeout_seconds) == (4, 30)
    assert template_changed(current, desired)


def test_webhook_still_judges_the_values():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(timeout_s=601, env=parse_key_edits(["PORT=1"], "--env")))
    assert webhook(desired, current) == [
        'spec.template.spec.containers[0].env[2].name: "PORT" is a reserved environment variable',
        "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600",
    ]


def test_revision_name_is_prefixed_like_kn():
    assert revision_name_for("hello", "v2") == "hello-v2"
    assert revision_name_for("hello", "hello-v2") == "hello-v2"
    current = stored_service()
    desired = edit_service(current, UpdateArgs(revision_name="v2", env=parse_key_edits(["A=2"], "--env")))
    assert desired.spec.template.metadata.name == "hello-v2"
    assert webhook(desired, current) == []


def test_template_change_drops_a_chosen_name_so_knative_accepts_it():
    named = stored_service()
    named.spec.template.metadata.name = "hello-v2"
    desired = edit_service(named, UpdateArgs(env=parse_key_edits(["A=2"], "--env")))
    assert desired.spec.template.metadata.name == ""
    assert webhook(desired, named) == []
    # Had the name been kept, Knative's rule would refuse the change:
    kept = resources_pb2.Service()
    kept.CopyFrom(desired)
    kept.spec.template.metadata.name = "hello-v2"
    errors = webhook(kept, named)
    assert len(errors) == 1
    assert errors[0].startswith("spec.template.metadata.name: Saw the following changes without a name change")


def test_traffic_only_change_keeps_the_template_and_its_name():
    named = stored_service()
    named.spec.template.metadata.name = "hello-v2"
    desired = edit_service(named, UpdateArgs(traffic=TrafficEdits(tags=(("@latest", "current"),))))
    assert not template_changed(named, desired)
    assert desired.spec.template.metadata.name == "hello-v2"
    assert as_dicts(desired.spec.traffic) == [{"latestRevision": True, "percent": "100", "tag": "current"}]


def test_missing_traffic_block_counts_as_all_to_latest():
    current = stored_service()
    del current.spec.traffic[:]
    desired = edit_service(current, UpdateArgs(traffic=TrafficEdits(percents=(("hello-00001", 100),))))
    assert as_dicts(desired.spec.traffic) == [
        {"revisionName": "hello-00001", "latestRevision": False, "percent": "100"}]


# ---- kn's traffic computation ----

LATEST_100 = {"latestRevision": True, "percent": "100"}


@pytest.mark.parametrize(
    ("before", "edits", "after"),
    [
        pytest.param(
            [LATEST_100], TrafficEdits(percents=(("hello-00001", 50), ("hello-00002", 50))),
            [{"revisionName": "hello-00001", "latestRevision": False, "percent": "50"},
             {"revisionName": "hello-00002", "latestRevision": False, "percent": "50"}],
            id="split between two revisions drops the untagged latest target",
        ),
        pytest.param(
            [LATEST_100], TrafficEdits(percents=(("hello-00001", 50), ("@latest", 50))),
            [{"latestRevision": True, "percent": "50"},
             {"revisionName": "hello-00001", "latestRevision": False, "percent": "50"}],
            id="@latest keeps following",
        ),
        pytest.param(
            [LATEST_100], TrafficEdits(tags=(("hello-00001", "old"),)),
            [LATEST_100, {"revisionName": "hello-00001", "latestRevision": False, "percent": "0", "tag": "old"}],
            id="tagging a revision without traffic adds a 0% target",
        ),
        pytest.param(
            [LATEST_100], TrafficEdits(tags=(("@latest", "current"),)),
            [{"latestRevision": True, "percent": "100", "tag": "current"}],
            id="tagging @latest tags its untagged target",
        ),
        pytest.param(
            [{"revisionName": "hello-00001", "percent": "100"}], TrafficEdits(tags=(("hello-00001", "v1"),)),
            [{"revisionName": "hello-00001", "percent": "100", "tag": "v1"}],
            id="tagging a routed revision tags its target",
        ),
        pytest.param(
            [{"revisionName": "hello-00001", "percent": "100", "tag": "v1"}],
            TrafficEdits(tags=(("hello-00001", "blue"),)),
            [{"revisionName": "hello-00001", "percent": "100", "tag": "v1"},
             {"revisionName": "hello-00001", "latestRevision": False, "percent": "0", "tag": "blue"}],
            id="a second tag for a revision is a second target",
        ),
        pytest.param(
            [LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "old"}],
            TrafficEdits(untags=("old",)),
            [LATEST_100],
            id="untagging a 0% target drops it",
        ),
        pytest.param(
            [{"latestRevision": True, "percent": "50"}, {"revisionName": "hello-00001", "percent": "50", "tag": "old"}],
            TrafficEdits(untags=("old",)),
            [{"latestRevision": True, "percent": "50"}, {"revisionName": "hello-00001", "percent": "50"}],
            id="untagging keeps the share",
        ),
        pytest.param(
            [LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "old"}],
            TrafficEdits(percents=(("old", 30), ("@latest", 70))),
            [{"latestRevision": True, "percent": "70"},
             {"revisionName": "hello-00001", "percent": "30", "tag": "old"}],
            id="a tag names its target",
        ),
        pytest.param(
            [{"latestRevision": True, "percent": "50"}, {"revisionName": "hello-00001", "percent": "50", "tag": "old"}],
            TrafficEdits(percents=(("hello-00002", 100),)),
            [{"revisionName": "hello-00001", "percent": "0", "tag": "old"},
             {"revisionName": "hello-00002", "latestRevision": False, "percent": "100"}],
            id="tagged targets stay at 0%",
        ),
        pytest.param(
            [{"latestRevision": True, "percent": "100", "tag": "current"}],
            TrafficEdits(percents=(("@latest", 100),)),
            [{"latestRevision": True, "percent": "100", "tag": "current"}],
            id="@latest may be the tagged latest target",
        ),
        pytest.param(
            [LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "old"}],
            TrafficEdits(percents=(("@latest", 100),), tags=(("hello-00001", "blue"),), untags=("old",)),
            [LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "blue"}],
            id="untag, tag, then percents (kn's order): a tag moves",
        ),
        pytest.param(
            [LATEST_100], TrafficEdits(percents=(("hello-00001", 40), ("@latest", 50))),
            [{"latestRevision": True, "percent": "50"},
             {"revisionName": "hello-00001", "latestRevision": False, "percent": "40"}],
            id="a bad sum is left for the webhook",
        ),
    ],
)
def test_compute_traffic(before, edits, after):
    assert as_dicts(compute_traffic(targets(*before), edits)) == after


def test_compute_traffic_drops_status_urls():
    before = targets({"revisionName": "hello-00001", "percent": "100", "tag": "v1",
                      "url": "http://v1-hello.default.localhost:8080"})
    edits = TrafficEdits(tags=(("hello-00001", "v1"),))
    assert as_dicts(compute_traffic(before, edits)) == [{"revisionName": "hello-00001", "percent": "100", "tag": "v1"}]


@pytest.mark.parametrize(
    ("before", "edits", "message"),
    [
        ([LATEST_100], TrafficEdits(untags=("old",)), "--untag old: no traffic target has tag old"),
        ([LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "old"}],
         TrafficEdits(tags=(("hello-00002", "old"),)),
         "--tag hello-00002=old: tag old is already on hello-00001 (add --untag old to move it)"),
    ],
)
def test_compute_traffic_errors(before, edits, message):
    with pytest.raises(CliError) as err:
        compute_traffic(targets(*before), edits)
    assert str(err.value) == message


def test_the_webhook_says_what_is_wrong_with_a_sum():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(traffic=TrafficEdits(percents=(("hello-00001", 40), ("@latest", 50)))))
    assert webhook(desired, current) == ["spec.traffic: Traffic targets sum to 90, want 100"]


def test_the_webhook_accepts_a_split_with_tags():
    current = stored_service()
    desired = edit_service(current, UpdateArgs(traffic=TrafficEdits(
        percents=(("hello-00001", 50), ("hello-00002", 50)), tags=(("hello-00001", "old"),))))
    assert webhook(desired, current) == []


def test_new_revision_refs():
    before = targets(LATEST_100, {"revisionName": "hello-00001", "percent": "0", "tag": "old"})
    after = targets({"revisionName": "hello-00001", "percent": "50", "tag": "old"},
                    {"revisionName": "hello-00003", "percent": "25"},
                    {"revisionName": "hello-00003", "percent": "0", "tag": "three"},
                    {"latestRevision": True, "percent": "25"})
    assert new_revision_refs(before, after) == ["hello-00003"]
