"""SqliteStore: create/update semantics, generations, status writes, events, persistence."""

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller.resources import new
from ebb.controller.store import SqliteStore


def _service(name="hello", cmd="python app.py"):
    svc = new("Service")
    svc.metadata.name = name
    svc.spec.template.spec.containers.add(command=cmd.split())
    return svc


def test_create_assigns_identity_and_generation(tmp_path):
    store = SqliteStore(tmp_path / "db")
    stored, changed = store.put(_service(), now_s=100.0)
    assert changed
    assert stored.metadata.namespace == "default"
    assert stored.metadata.generation == 1
    assert stored.metadata.uid
    assert stored.metadata.creation_timestamp.seconds == 100
    assert store.get("Service", "default", "hello") == stored


def test_identical_put_changes_nothing(tmp_path):
    store = SqliteStore(tmp_path / "db")
    first, _ = store.put(_service(), now_s=1.0)
    again, changed = store.put(_service(), now_s=2.0)
    assert not changed
    assert again.metadata.resource_version == first.metadata.resource_version


def test_spec_change_bumps_generation_metadata_change_does_not(tmp_path):
    store = SqliteStore(tmp_path / "db")
    store.put(_service(), now_s=1.0)
    labelled = _service()
    labelled.metadata.labels["team"] = "a"
    stored, changed = store.put(labelled, now_s=2.0)
    assert changed and stored.metadata.generation == 1
    stored, changed = store.put(_service(cmd="python other.py"), now_s=3.0)
    assert changed and stored.metadata.generation == 2
    assert stored.metadata.labels == {}  # labels are replaced, not merged


def test_put_keeps_status_and_put_status_keeps_spec(tmp_path):
    store = SqliteStore(tmp_path / "db")
    stored, _ = store.put(_service(), now_s=1.0)
    stored.status.url = "http://hello.default.localhost:8080"
    store.put_status(stored)
    updated, _ = store.put(_service(cmd="python v2.py"), now_s=2.0)
    assert updated.status.url == "http://hello.default.localhost:8080"
    assert list(updated.spec.template.spec.containers[0].command) == ["python", "v2.py"]


def test_events_and_delete(tmp_path):
    store = SqliteStore(tmp_path / "db")
    events = []
    store.subscribe(lambda e: events.append((e.type, e.obj.metadata.name)))
    stored, _ = store.put(_service(), now_s=1.0)
    stored.status.url = "x"
    store.put_status(stored)
    store.put_status(stored)  # identical: no event
    assert store.delete("Service", "default", "hello") is not None
    assert store.delete("Service", "default", "hello") is None
    assert events == [("ADDED", "hello"), ("MODIFIED", "hello"), ("DELETED", "hello")]


def test_survives_reopen(tmp_path):
    store = SqliteStore(tmp_path / "db")
    store.put(_service("a"), now_s=1.0)
    store.put(_service("b"), now_s=1.0)
    store.close()
    reopened = SqliteStore(tmp_path / "db")
    assert [s.metadata.name for s in reopened.list("Service")] == ["a", "b"]
    assert isinstance(reopened.list("Service")[0], r.Service)
