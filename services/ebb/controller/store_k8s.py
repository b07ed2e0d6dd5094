"""Store over the serving.knative.dev/v1 custom resources of a Kubernetes API server.

Reads are served from an in-memory cache kept by list+watch (informer-style: a thread per
resource lists, then watches from the list's resourceVersion, and lists again on 410 Gone).
Writes go to the API server synchronously, as `SqliteStore`'s do, and their answers are
written through to the cache, so a reconcile pass reads its own writes. The cache keeps the
newer of two versions of an object by resourceVersion, so a late watch event never rolls a
written-through object back. (The API conventions call resourceVersions opaque; every
etcd-backed API server hands out integers, which is what the comparison relies on — two
versions that are not integers are taken in arrival order.)

Deletion: a Revision carries the finalizer `serving.knative.dev/ebb-controller` while the
controller may still run instances of it. Deleting it then only sets its deletionTimestamp;
from that moment the store reports it DELETED and hides it (terminating objects are gone
for the reconcilers, as in Knative's listers), the reconcile loop stops routing to it and
the runtime deletes its Deployment and Service; once `finalizer_check(key)` says so, the
store removes the finalizer and the API server deletes the Revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from ebb.controller import k8s_objects as ko
from ebb.controller.resources import DEFAULT_NAMESPACE, KINDS, Key, Object, key_of
from ebb.controller.store import Conflict, Event, NotFound

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # one watch request's server-side timeout; then it resumes from its version
REQUEST_TIMEOUT_S = 30.0
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
STOP_TIMEOUT_S = 5.0
FINALIZE_PERIOD_S = 1.0
CONFLICT_RETRIES = 3
MERGE_PATCH = "application/merge-patch+json"


def api_client_from_environment(kubeconfig: str | None = None) -> client.ApiClient:
    """The pod's service account inside a cluster, else the kubeconfig (`kubeconfig` or
    $KUBECONFIG or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def call_raw(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
    """Call a client method and return the response's JSON as a dict (no model classes)."""
    resp = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    try:
        data = resp.read()
    finally:
        resp.release_conn()
    return json.loads(data) if data else {}


# ----------------------------------------------------------------- resourceVersions


def rv_of(raw: dict | None) -> str:
    return ((raw or {}).get("metadata") or {}).get("resourceVersion", "") or ""


def rv_newer(new: str, old: str) -> bool:
    """True when `new` is a later resourceVersion than `old`."""
    if new.isdigit() and old.isdigit():
        return int(new) > int(old)
    return new != old


def name_key(raw: dict) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    return meta.get("namespace", "") or "", meta.get("name", "") or ""


@dataclass(frozen=True)
class Change:
    old: dict | None
    new: dict | None


class ObjectCache:
    """Raw objects by (namespace, name); a version only replaces an older one, and a deleted
    object's tombstone stops a late event from bringing it back."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self._tombstones: dict[tuple[str, str], str] = {}

    def get(self, namespace: str, name: str) -> dict | None:
        return self.objects.get((namespace, name))

    def upsert(self, raw: dict) -> Change | None:
        key, rv = name_key(raw), rv_of(raw)
        old = self.objects.get(key)
        if old is not None and not rv_newer(rv, rv_of(old)):
            return None
        tomb = self._tombstones.get(key)
        if old is None and tomb is not None and not rv_newer(rv, tomb):
            return None
        self._tombstones.pop(key, None)
        self.objects[key] = raw
        return Change(old, raw)

    def remove(self, key: tuple[str, str], rv: str = "") -> Change | None:
        old = self.objects.get(key)
        if old is None:
            if rv and (key not in self._tombstones or rv_newer(rv, self._tombstones[key])):
                self._tombstones[key] = rv
            return None
        if rv and rv_newer(rv_of(old), rv):
            return None  # the object was written again after this deletion
        del self.objects[key]
        self._tombstones[key] = rv if rv and rv_newer(rv, rv_of(old)) else rv_of(old)
        return Change(old, None)

    def replace(self, items: Iterable[dict], list_rv: str) -> list[Change]:
        """A fresh list at `list_rv`: what it lacks is gone unless written after it."""
        changes = []
        seen = set()
        for raw in items:
            seen.add(name_key(raw))
            change = self.upsert(raw)
            if change:
                changes.append(change)
        for key, raw in list(self.objects.items()):
            if key not in seen and not rv_newer(rv_of(raw), list_rv):
                change = self.remove(key, list_rv)
                if change:
                    changes.append(change)
        self.forget_tombstones(list_rv)
        return changes

    def forget_tombstones(self, up_to_rv: str) -> None:
        """Once the watch has passed a version, no event older than it can arrive."""
        for key, rv in list(self._tombstones.items()):
            if not rv_newer(rv, up_to_rv):
                del self._tombstones[key]


# ----------------------------------------------------------------- informer


class Informer:
    """List, then watch from the list's resourceVersion, in a thread; list again on 410 Gone.

    `on_list(items, resource_version)` and `on_event(type, object)` run on the event loop
    (handed over with call_soon_threadsafe), so caches are only touched on the loop thread.
    (kubernetes.informer.SharedInformer was not used: it expects model objects with an
    `.items` attribute from the list call, which custom resources do not return, and calls
    back on its own thread.)
    """

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        *,
        on_list: Callable[[list[dict], str], None],
        on_event: Callable[[str, dict], None],
        label_selector: str = "",
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._on_list = on_list
        self._on_event = on_event
        self._selector = {"label_selector": label_selector} if label_selector else {}
        self._watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced: asyncio.Future | None = None
        self.lists = 0  # lists done (1 + re-lists), for tests and logs
        self.resource_version = ""

    @property
    def synced(self) -> bool:
        return self._synced is not None and self._synced.done()

    async def start(self) -> None:
        """Start the thread and wait for the first list to reach the cache."""
        self._loop = asyncio.get_running_loop()
        self._synced = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        await asyncio.shield(self._synced)

    async def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        while thread.is_alive() and loop.time() < deadline:
            w = self._watch
            if w is not None:
                w.stop()  # shuts the socket down under the blocked read
            await asyncio.sleep(0.02)
        if thread.is_alive():
            log.warning("informer thread did not stop", extra={"informer": self.name})

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._stop.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn, *args)

    def _deliver_list(self, items: list[dict], rv: str) -> None:
        self.lists += 1
        self._on_list(items, rv)
        if self._synced is not None and not self._synced.done():
            self._synced.set_result(None)

    def _run(self) -> None:
        rv = ""
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                if not rv:
                    body = call_raw(self._list_call, **self._selector)
                    rv = rv_of(body) or "0"
                    self._post(self._deliver_list, body.get("items") or [], rv)
                w = watch.Watch(return_type="object")
                self._watch = w
                if self._stop.is_set():
                    break
                for event in w.stream(
                    self._list_call,
                    resource_version=rv,
                    timeout_seconds=self._watch_timeout_s,
                    allow_watch_bookmarks=True,
                    _request_timeout=self._watch_timeout_s + REQUEST_TIMEOUT_S,
                    **self._selector,
                ):
                    raw = event.get("raw_object") or {}
                    rv = rv_of(raw) or rv
                    self.resource_version = rv
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._post(self._on_event, event["type"], raw)
                    if self._stop.is_set():
                        break
                backoff = BACKOFF_MIN_S
            except ApiException as exc:
                if self._stop.is_set():
                    break
                if exc.status == 410:
                    log.info("watch expired (410 Gone): listing again", extra={"informer": self.name})
                    rv = ""
                    continue
                log.warning("watch failed", extra={"informer": self.name, "status": exc.status, "reason": exc.reason})
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
            except Exception as exc:  # a broken connection, an unreachable server: try again
                if self._stop.is_set():
                    break
                log.warning("watch broken", extra={"informer": self.name, "error": repr(exc)})
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
            finally:
                self._watch = None


# ----------------------------------------------------------------- the store


@dataclass
class _Entry:
    raw: dict
    obj: Object

    @property
    def terminating(self) -> bool:
        return bool(self.raw.get("metadata", {}).get("deletionTimestamp"))

    @property
    def finalizers(self) -> list[str]:
        return list(self.raw.get("metadata", {}).get("finalizers") or [])


def _copy(obj: Object) -> Object:
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def _owner_refs(obj: Object) -> list:
    return [o.SerializeToString(deterministic=True) for o in obj.metadata.owner_references]


class KubernetesStore:
    """The Store interface over custom resources; see the module docstring.

    `namespace` limits it to one namespace (None: all). `finalizer_check(key)` is asked
    whether a terminating Revision's instances are gone; without it no finalizer is added.
    Call `await start()` before use (it returns once every kind is listed) and
    `await close()` at the end.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str | None = None,
        finalizer_check: Callable[[Key], bool] | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        finalize_period_s: float = FINALIZE_PERIOD_S,
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._namespace = namespace
        self._finalizer_check = finalizer_check
        self._finalize_period_s = finalize_period_s
        self._caches = {kind: ObjectCache() for kind in KINDS}
        self._parsed: dict[Key, _Entry] = {}
        self._subscribers: list[Callable[[Event], None]] = []
        self._informers = {
            kind: Informer(
                ko.PLURALS[kind],
                self._list_call(kind),
                on_list=functools.partial(self._on_list, kind),
                on_event=functools.partial(self._on_event, kind),
                watch_timeout_s=watch_timeout_s,
            )
            for kind in KINDS
        }
        self._wake: asyncio.Event | None = None
        self._finalizer_task: asyncio.Task | None = None
        self.finalizers_removed = 0

    def _list_call(self, kind: str) -> Callable[..., Any]:
        plural = ko.PLURALS[kind]
        if self._namespace:
            return functools.partial(
                self._api.list_namespaced_custom_object, ko.GROUP, ko.VERSION, self._namespace, plural
            )
        return functools.partial(self._api.list_custom_object_for_all_namespaces, ko.GROUP, ko.VERSION, plural)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._wake = asyncio.Event()
        await asyncio.gather(*(i.start() for i in self._informers.values()))
        if self._finalizer_check is not None:
            self._finalizer_task = asyncio.ensure_future(self._finalize_loop())

    async def close(self) -> None:
        if self._finalizer_task is not None:
            self._finalizer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._finalizer_task
        await asyncio.gather(*(i.stop() for i in self._informers.values()))

    @property
    def informers(self) -> dict[str, Informer]:
        return self._informers

    # ------------------------------------------------------------ reads

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        entry = self._parsed.get(Key(kind, namespace or DEFAULT_NAMESPACE, name))
        if entry is None or entry.terminating:
            return None
        return _copy(entry.obj)

    def list(self, kind: str, namespace: str | None = None) -> list[Object]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        keys = sorted(
            k for k, e in self._parsed.items() if k.kind == kind and not e.terminating and (not namespace or k.namespace == namespace)
        )
        return [_copy(self._parsed[k].obj) for k in keys]

    # ------------------------------------------------------------ writes

    def _finalizers(self, kind: str) -> tuple[str, ...]:
        return (ko.FINALIZER,) if kind == "Revision" and self._finalizer_check is not None else ()

    def put(self, obj: Object, *, now_s: float) -> tuple[Object, bool]:
        """Create the resource or replace its spec, labels, annotations and owner references
        (status, finalizers and server-owned metadata are kept). The API server stamps uid,
        creationTimestamp and resourceVersion, and bumps metadata.generation on a spec change
        (custom resources with the status subresource). An identical write sends nothing,
        and neither does a write to a resource that is being deleted (it is returned as is)."""
        del now_s  # the API server keeps the time
        obj = _copy(obj)
        obj.metadata.namespace = obj.metadata.namespace or DEFAULT_NAMESPACE
        key = key_of(obj)
        plural, finalizers = ko.PLURALS[key.kind], self._finalizers(key.kind)
        for _ in range(CONFLICT_RETRIES):
            entry = self._parsed.get(key)
            try:
                if entry is None:
                    raw = call_raw(
                        self._api.create_namespaced_custom_object,
                        ko.GROUP,
                        ko.VERSION,
                        key.namespace,
                        plural,
                        ko.resource_body(obj, finalizers=finalizers),
                    )
                    self._apply(key.kind, raw)
                    return ko.from_k8s(key.kind, raw), True
                if entry.terminating:
                    # Its finalizer still holds it: the write has to wait for the deletion
                    # to finish (a later pass makes it again). Failing here would stop the
                    # very pass that lets the deletion finish.
                    log.info("write deferred: the resource is being deleted", extra={"resource": str(key)})
                    return _copy(entry.obj), False
                old = entry.obj
                same = (
                    old.spec.SerializeToString(deterministic=True) == obj.spec.SerializeToString(deterministic=True)
                    and dict(old.metadata.labels) == dict(obj.metadata.labels)
                    and dict(old.metadata.annotations) == dict(obj.metadata.annotations)
                    and (not obj.metadata.owner_references or _owner_refs(old) == _owner_refs(obj))
                    and all(f in entry.finalizers for f in finalizers)
                )
                if same:
                    return _copy(old), False
                raw = call_raw(
                    self._api.replace_namespaced_custom_object,
                    ko.GROUP,
                    ko.VERSION,
                    key.namespace,
                    plural,
                    key.name,
                    ko.replacement_body(entry.raw, obj, finalizers=finalizers),
                )
                self._apply(key.kind, raw)
                return ko.from_k8s(key.kind, raw), rv_of(raw) != rv_of(entry.raw)
            except ApiException as exc:
                if exc.status in (404, 409):  # the cache was behind the server: read and retry
                    self._refresh(key)
                    continue
                raise
        raise Conflict(f"{key}: still conflicting after {CONFLICT_RETRIES} attempts")

    def put_status(self, obj: Object) -> Object:
        """Replace the status through the status subresource."""
        key = key_of(obj)
        for _ in range(CONFLICT_RETRIES):
            entry = self._parsed.get(key)
            if entry is None:
                raise NotFound(str(key))
            if entry.obj.status.SerializeToString(deterministic=True) == obj.status.SerializeToString(deterministic=True):
                return _copy(entry.obj)
            try:
                raw = call_raw(
                    self._api.replace_namespaced_custom_object_status,
                    ko.GROUP,
                    ko.VERSION,
                    key.namespace,
                    ko.PLURALS[key.kind],
                    key.name,
                    ko.status_body(entry.raw, obj),
                )
            except ApiException as exc:
                if exc.status in (404, 409):
                    self._refresh(key)
                    continue
                raise
            self._apply(key.kind, raw)
            return ko.from_k8s(key.kind, raw)
        raise Conflict(f"{key}: status still conflicting after {CONFLICT_RETRIES} attempts")

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        """Delete the resource (children go by their owner references). With finalizers the
        server only marks it; the store reports it DELETED either way."""
        key = Key(kind, namespace or DEFAULT_NAMESPACE, name)
        entry = self._parsed.get(key)
        if entry is not None and entry.terminating:
            return None
        try:
            raw = call_raw(
                self._api.delete_namespaced_custom_object,
                ko.GROUP,
                ko.VERSION,
                key.namespace,
                ko.PLURALS[kind],
                name,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status == 404:
                self._remove(kind, key, "")
                return None
            raise
        if raw.get("kind") == kind and (raw.get("metadata") or {}).get("deletionTimestamp"):
            self._apply(kind, raw)
        else:
            self._remove(kind, key, rv_of(raw) if raw.get("kind") == kind else "")
        return _copy(entry.obj) if entry is not None else None

    def _refresh(self, key: Key) -> None:
        try:
            raw = call_raw(
                self._api.get_namespaced_custom_object, ko.GROUP, ko.VERSION, key.namespace, ko.PLURALS[key.kind], key.name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._remove(key.kind, key, "")
            return
        self._apply(key.kind, raw)

    # ------------------------------------------------------------ cache and events

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` on every change seen (writes, then watch events)."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _notify(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("store subscriber failed")

    def _on_list(self, kind: str, items: list[dict], rv: str) -> None:
        for change in self._caches[kind].replace(items, rv):
            self._changed(kind, change)

    def _on_event(self, kind: str, type_: str, raw: dict) -> None:
        if type_ == "DELETED":
            change = self._caches[kind].remove(name_key(raw), rv_of(raw))
        else:
            change = self._caches[kind].upsert(raw)
        if change:
            self._changed(kind, change)
        self._caches[kind].forget_tombstones(rv_of(raw))

    def _apply(self, kind: str, raw: dict) -> None:
        change = self._caches[kind].upsert(raw)
        if change:
            self._changed(kind, change)

    def _remove(self, kind: str, key: Key, rv: str) -> None:
        change = self._caches[kind].remove((key.namespace, key.name), rv)
        if change:
            self._changed(kind, change)

    def _changed(self, kind: str, change: Change) -> None:
        raw = change.new or change.old
        ns, name = name_key(raw)
        key = Key(kind, ns, name)
        old = self._parsed.get(key)
        if change.new is None:
            self._parsed.pop(key, None)
            if old is not None and not old.terminating:
                self._notify(Event("DELETED", _copy(old.obj)))
            return
        try:
            entry = _Entry(change.new, ko.from_k8s(kind, change.new))
        except (json_format.ParseError, ValueError, TypeError) as exc:
            log.warning("resource ignored: cannot parse it", extra={"resource": str(key), "error": str(exc)})
            self._parsed.pop(key, None)
            if old is not None and not old.terminating:
                self._notify(Event("DELETED", _copy(old.obj)))
            return
        self._parsed[key] = entry
        was_visible = old is not None and not old.terminating
        if not entry.terminating:
            self._notify(Event("MODIFIED" if was_visible else "ADDED", _copy(entry.obj)))
        elif was_visible:
            self._notify(Event("DELETED", _copy(entry.obj)))
        if entry.terminating and ko.FINALIZER in entry.finalizers and self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------ finalizers

    def release_finalizers(self) -> None:
        """Look at terminating Revisions now rather than at the next tick."""
        if self._wake is not None:
            self._wake.set()

    async def _finalize_loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._finalize_period_s)
            self._wake.clear()
            for key, entry in list(self._parsed.items()):
                if not entry.terminating or ko.FINALIZER not in entry.finalizers:
                    continue
                try:
                    if not self._finalizer_check(key):
                        continue
                    raw = await asyncio.to_thread(
                        call_raw,
                        self._api.patch_namespaced_custom_object,
                        ko.GROUP,
                        ko.VERSION,
                        key.namespace,
                        ko.PLURALS[key.kind],
                        key.name,
                        ko.finalizers_patch(entry.raw, ko.FINALIZER),
                        _content_type=MERGE_PATCH,
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        self._remove(key.kind, key, "")
                    elif exc.status != 409:  # 409: a newer version is on its way through the watch
                        log.warning("cannot remove finalizer", extra={"resource": str(key), "status": exc.status})
                    continue
                except Exception:
                    log.exception("finalizer check failed", extra={"resource": str(key)})
                    continue
                self.finalizers_removed += 1
                log.info("finalizer removed", extra={"resource": str(key)})
                if (raw.get("metadata") or {}).get("finalizers"):
                    self._apply(key.kind, raw)
                else:  # the API server deletes an object whose last finalizer is gone
                    self._remove(key.kind, key, rv_of(raw))
