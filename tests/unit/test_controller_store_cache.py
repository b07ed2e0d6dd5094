"""SqliteStore's parse cache: copies out, never stale, bounded."""

from __future__ import annotations

import json

from ebb.controller import store as store_mod
from ebb.controller.resources import from_json
from ebb.controller.store import SqliteStore

SERVICE = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Service",
    "metadata": {"name": "hello", "namespace": "default"},
    "spec": {"template": {"spec": {"containers": [{"image": "hello"}]}}},
}


def new_store(tmp_path) -> SqliteStore:
    store = SqliteStore(tmp_path / "ebb.db")
    store.put(from_json("Service", json.dumps(SERVICE)), now_s=0.0)
    return store


def test_every_read_is_a_copy_of_its_own(tmp_path):
    store = new_store(tmp_path)
    first = store.get("Service", "default", "hello")
    first.metadata.labels["changed"] = "by the caller"
    again = store.get("Service", "default", "hello")
    assert "changed" not in again.metadata.labels
    assert store.list("Service")[0] == again and store.list("Service")[0] is not again


def test_a_write_is_seen_at_once(tmp_path):
    store = new_store(tmp_path)
    obj = store.get("Service", "default", "hello")
    obj.status.url = "http://hello.default.localhost"
    store.put_status(obj)
    assert store.get("Service", "default", "hello").status.url == "http://hello.default.localhost"
    assert store.list("Service")[0].status.url == "http://hello.default.localhost"


def test_the_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "PARSED_CACHE_MAX", 2)
    store = new_store(tmp_path)
    for i in range(5):
        obj = store.get("Service", "default", "hello")
        obj.status.url = f"http://{i}"
        store.put_status(obj)
        store.list("Service")
    assert len(store._parsed) <= 2
    assert store.get("Service", "default", "hello").status.url == "http://4"
