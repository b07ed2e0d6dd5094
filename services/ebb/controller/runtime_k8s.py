"""Kubernetes runtime: each revision is a Deployment whose pods carry the queue sidecar.

`ensure()` creates the revision's Service (so that EndpointSlices exist) and Deployment, then
only moves `spec.replicas` through the scale subresource (and replaces the pod template if
the controller's idea of it changed, e.g. a new queue image). What the cluster does about it
is watched: Deployments (status: replicas, readyReplicas), pods (why containers fail) and
EndpointSlices (which pods are ready, on which address). Every list+watch runs in an
`Informer` thread and lands in loop-side caches; API calls run in worker threads.

Instances outlive the controller: `close()` never scales anything down, whatever it is
asked, because a controller restart must not take apps down with it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller import k8s_objects as ko
from ebb.controller.reconcile import InstanceView
from ebb.controller.runtime import Address, InstanceSpec, RevisionKey
from ebb.controller.store_k8s import (
    MERGE_PATCH,
    WATCH_TIMEOUT_S,
    Change,
    Informer,
    ObjectCache,
    call_raw,
    name_key,
    rv_of,
)

log = logging.getLogger(__name__)


def _revision_label(raw: dict) -> str:
    return ((raw.get("metadata") or {}).get("labels") or {}).get(ko.LABEL_REVISION, "")


class _Index:
    """A cache of one kind plus an index by revision (from the revision label)."""

    def __init__(self) -> None:
        self.cache = ObjectCache()
        self.by_revision: dict[RevisionKey, dict[str, dict]] = {}

    def apply(self, change: Change) -> None:
        for raw, present in ((change.old, False), (change.new, True)):
            if raw is None:
                continue
            ns, name = name_key(raw)
            key = RevisionKey(ns, _revision_label(raw))
            if not key.name:
                continue
            if present:
                self.by_revision.setdefault(key, {})[name] = raw
            else:
                bucket = self.by_revision.get(key, {})
                bucket.pop(name, None)
                if not bucket:
                    self.by_revision.pop(key, None)

    def of(self, key: RevisionKey) -> list[dict]:
        return list(self.by_revision.get(key, {}).values())


class KubernetesRuntime:
    """The Runtime interface over Deployments, Services, pods and EndpointSlices.

    `revision_of(key)` returns the stored Revision (its image, command, args, ports, probes,
    resources, labels, annotations and uid build the pods); `autoscaler` is the address the
    queues stream stats to (the autoscaler's stats port); `namespace` limits watches to one
    namespace (None: all).
    Call `await start()` before use.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        sidecar: ko.QueueSidecar,
        revision_of: Callable[[RevisionKey], r.Revision | None],
        autoscaler: str = "",
        namespace: str | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._sidecar = sidecar
        self._revision_of = revision_of
        self._autoscaler = autoscaler
        self._namespace = namespace
        self._listener: Callable[[], None] = lambda: None
        self._desired: dict[RevisionKey, int] = {}
        self._index = {kind: _Index() for kind in ("deployments", "services", "pods", "endpointslices")}
        calls = {
            "deployments": (self._apps.list_namespaced_deployment, self._apps.list_deployment_for_all_namespaces),
            "services": (self._core.list_namespaced_service, self._core.list_service_for_all_namespaces),
            "pods": (self._core.list_namespaced_pod, self._core.list_pod_for_all_namespaces),
            "endpointslices": (
                self._discovery.list_namespaced_endpoint_slice,
                self._discovery.list_endpoint_slice_for_all_namespaces,
            ),
        }
        self._informers = {
            kind: Informer(
                kind,
                functools.partial(namespaced, namespace) if namespace else every,
                on_list=functools.partial(self._on_list, kind),
                on_event=functools.partial(self._on_event, kind),
                # Everything Ebb creates carries the revision label; the EndpointSlice
                # controller copies the Service's labels onto its slices.
                label_selector=ko.LABEL_REVISION,
                watch_timeout_s=watch_timeout_s,
            )
            for kind, (namespaced, every) in calls.items()
        }

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.gather(*(i.start() for i in self._informers.values()))

    async def close(self, *, stop_instances: bool) -> None:
        """Stop watching. Deployments belong to the cluster: `stop_instances` is ignored."""
        del stop_instances
        await asyncio.gather(*(i.stop() for i in self._informers.values()))

    @property
    def informers(self) -> dict[str, Informer]:
        return self._informers

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self._informers.values())

    # ------------------------------------------------------------ cache

    def _on_list(self, kind: str, items: list[dict], rv: str) -> None:
        for change in self._index[kind].cache.replace(items, rv):
            self._index[kind].apply(change)
        self._listener()

    def _on_event(self, kind: str, type_: str, raw: dict) -> None:
        index = self._index[kind]
        change = index.cache.remove(name_key(raw), rv_of(raw)) if type_ == "DELETED" else index.cache.upsert(raw)
        index.cache.forget_tombstones(rv_of(raw))
        if change:
            index.apply(change)
            self._listener()

    def _store(self, kind: str, raw: dict) -> None:
        change = self._index[kind].cache.upsert(raw)
        if change:
            self._index[kind].apply(change)

    def _forget(self, kind: str, namespace: str, name: str, rv: str = "") -> None:
        change = self._index[kind].cache.remove((namespace, name), rv)
        if change:
            self._index[kind].apply(change)

    def _deployment(self, key: RevisionKey) -> dict | None:
        return self._index["deployments"].cache.get(key.namespace, ko.deployment_name(key.name))

    def _service(self, key: RevisionKey) -> dict | None:
        return self._index["services"].cache.get(key.namespace, ko.service_name(key.name))

    # ------------------------------------------------------------ interface

    def set_listener(self, callback: Callable[[], None]) -> None:
        self._listener = callback

    def revisions(self) -> set[RevisionKey]:
        keys = set()
        for kind, name_of in (("deployments", ko.deployment_name), ("services", ko.service_name)):
            for key, objects in self._index[kind].by_revision.items():
                if name_of(key.name) in objects:
                    keys.add(key)
        return keys

    def released(self, key: RevisionKey) -> bool:
        """True once the revision's Deployment and Service are gone (and the caches are
        filled, so that "gone" is not "not listed yet"): the store's finalizer check."""
        return self.synced and self._deployment(key) is None and self._service(key) is None

    def view(self, key: RevisionKey) -> InstanceView:
        dep = self._deployment(key)
        if dep is None and key not in self._desired:
            return InstanceView()
        desired = self._desired.get(key, ((dep or {}).get("spec") or {}).get("replicas", 0))
        return ko.instance_view(dep, self._index["pods"].of(key), desired=desired)

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        return ko.slice_addresses(self._index["endpointslices"].of(key), key.name)[0]

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        return ko.slice_addresses(self._index["endpointslices"].of(key), key.name)[1]

    async def ensure(self, key: RevisionKey, spec: InstanceSpec, count: int, *, now_s: float) -> None:
        """Create the Service and Deployment when the revision first needs pods; then set
        the replicas (0 included: the Deployment stays, scaled to zero)."""
        del now_s
        self._desired[key] = count
        rev = self._revision_of(key)
        if rev is None:
            return  # deleted meanwhile: the loop removes it
        dep = self._deployment(key)
        if dep is None and count == 0:
            return  # nothing to run: a revision gets its Deployment when it first needs a pod
        desired = ko.revision_deployment(rev, spec, self._sidecar, replicas=count, autoscaler=self._autoscaler)
        if self._service(key) is None:
            await self._create("services", self._core.create_namespaced_service, key.namespace, ko.revision_service(rev))
        if dep is None:
            await self._create("deployments", self._apps.create_namespaced_deployment, key.namespace, desired)
            log.info("deployment created", extra={"revision": str(key), "replicas": count})
            self._listener()
            return
        name = ko.deployment_name(key.name)
        annotations = dep.get("metadata", {}).get("annotations") or {}
        if annotations.get(ko.ANNOTATION_POD_TEMPLATE_HASH) != desired["metadata"]["annotations"][ko.ANNOTATION_POD_TEMPLATE_HASH]:
            raw = await self._call(
                self._apps.replace_namespaced_deployment, name, key.namespace, ko.template_replacement(dep, desired)
            )
            if raw is not None:
                self._store("deployments", raw)
                dep = raw
                log.info("pod template replaced", extra={"revision": str(key)})
        if (dep.get("spec") or {}).get("replicas") != count:
            scale = await self._call(
                self._apps.patch_namespaced_deployment_scale,
                name,
                key.namespace,
                ko.scale_patch(count),
                _content_type=MERGE_PATCH,
            )
            current = self._deployment(key)
            if scale is not None and current is not None and rv_of(current) == rv_of(dep):
                # The watch brings the Deployment at its new version; until then the cache
                # shows the replicas asked for, so the next pass does not ask again. (If the
                # watch was quicker than this answer, the cache is newer already.)
                scaled = {**current, "spec": {**current.get("spec", {}), "replicas": count}}
                self._index["deployments"].cache.objects[name_key(current)] = scaled
                self._index["deployments"].apply(Change(current, scaled))
            if scale is not None:
                log.info("deployment scaled", extra={"revision": str(key), "replicas": count})
        ready = int(((dep.get("status") or {}).get("readyReplicas")) or 0)
        if ready > 0 and annotations.get(ko.ANNOTATION_EVER_READY) != "true":
            raw = await self._call(
                self._apps.patch_namespaced_deployment, name, key.namespace, ko.ever_ready_patch(), _content_type=MERGE_PATCH
            )
            if raw is not None:
                self._store("deployments", raw)

    async def remove(self, key: RevisionKey) -> None:
        """Delete the Deployment (its pods drain: preStop, then SIGTERM) and the Service."""
        self._desired.pop(key, None)
        for kind, name, delete in (
            ("deployments", ko.deployment_name(key.name), self._apps.delete_namespaced_deployment),
            ("services", ko.service_name(key.name), self._core.delete_namespaced_service),
        ):
            try:
                raw = await asyncio.to_thread(call_raw, delete, name, key.namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("cannot delete", extra={"revision": str(key), "kind": kind, "status": exc.status})
                    continue
                raw = {}
            rv = rv_of(raw) if raw.get("kind") not in (None, "Status") else ""
            self._forget(kind, key.namespace, name, rv)
        log.info("deployment removed", extra={"revision": str(key)})
        self._listener()

    # ------------------------------------------------------------ API calls

    async def _create(self, kind: str, method: Callable[..., Any], namespace: str, body: dict) -> None:
        try:
            raw = await asyncio.to_thread(call_raw, method, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                log.warning(
                    "cannot create",
                    extra={"kind": kind, "object": body["metadata"]["name"], "status": exc.status, "body": exc.body},
                )
                return
            read = self._apps.read_namespaced_deployment if kind == "deployments" else self._core.read_namespaced_service
            raw = await self._call(read, body["metadata"]["name"], namespace)
            if raw is None:
                return
        self._store(kind, raw)

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict | None:
        """One API call in a worker thread; a failure is logged and retried by the next pass."""
        try:
            return await asyncio.to_thread(call_raw, method, *args, **kwargs)
        except ApiException as exc:
            log.warning("kubernetes call failed", extra={"call": method.__name__, "status": exc.status, "reason": exc.reason})
            return None
