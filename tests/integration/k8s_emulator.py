"""A small, honest emulator of the Kubernetes REST API paths Ebb's cluster backend uses.

No API server can run where Ebb is tested, and the emulator packages on PyPI do not keep
the semantics the backend relies on (kmock 0.8 merges every write into the stored dict,
keeps no resourceVersion or generation, ignores label selectors, cannot replay a watch from
a resourceVersion nor answer 410 Gone, and has no status or scale subresources). So this
one serves real HTTP on 127.0.0.1 for the real `kubernetes` client, and implements:

- list, get, create (POST), replace (PUT), merge patch (PATCH, RFC 7386), delete, for
  namespaced resources, in one namespace or across all;
- watch with `resourceVersion` (replay from the event log), `timeoutSeconds`, label
  selectors (an object that stops matching is sent as DELETED), and `410 Gone` once the
  log has been compacted past the requested version;
- a global resourceVersion counter; uid, creationTimestamp; `metadata.generation` bumped
  on every change outside metadata and status (custom resources and Deployments);
- optimistic concurrency: PUT needs the current resourceVersion (custom resources must
  send one), a merge patch carrying one is conditional; both answer 409 Conflict;
- the status subresource (PUT/PATCH change only status) and the Deployment scale
  subresource (autoscaling/v1 Scale);
- finalizers: DELETE of an object with finalizers sets deletionTimestamp; an update that
  empties them removes it; no new finalizer may be added while deleting;
- validation of every stored object: custom resources against the chart's CRD schemas
  (unknown fields rejected, as strict field validation does), built-in kinds against the
  Kubernetes OpenAPI schemas (`kubernetes-validate`, strict).

It is not a cluster: no controllers run (no ReplicaSets, pods or EndpointSlices appear by
themselves, no garbage collector follows ownerReferences), no admission webhooks, no
defaulting, no strategic merge or JSON patch (they are refused with 415). Tests write what
the cluster's controllers would (EndpointSlices, Deployment status, pods) with `apply()`.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.utils.latest_version()


def _strict(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema that rejects fields it does not name."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def _crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    out = {}
    for path in sorted((REPO / "helm" / "ebb" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = crd["spec"]["versions"]
        out[crd["spec"]["names"]["plural"]] = jsonschema.Draft7Validator(
            _strict(version["schema"]["openAPIV3Schema"])
        )
    return out


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    custom: bool = False  # a custom resource (CRD) rather than a built-in kind
    status: bool = False  # has the status subresource
    scale: bool = False  # has the scale subresource (Deployments)
    generation: bool = False  # metadata.generation tracks spec changes

    @property
    def name(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}" if self.group else f"{self.version}/{self.plural}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


TYPES = [
    *(
        ResourceType("serving.knative.dev", "v1", plural, kind, custom=True, status=True, generation=True)
        for plural, kind in (
            ("services", "Service"),
            ("configurations", "Configuration"),
            ("revisions", "Revision"),
            ("routes", "Route"),
        )
    ),
    ResourceType("apps", "v1", "deployments", "Deployment", status=True, scale=True, generation=True),
    ResourceType("", "v1", "services", "Service", status=True),
    ResourceType("", "v1", "pods", "Pod", status=True),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
]
BY_NAME = {t.name: t for t in TYPES}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """Equality-based label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-joined."""
    terms = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if " in " in part or " notin " in part or "(" in part:
            raise ApiError(400, "BadRequest", f"set-based selector {part!r} is not emulated")
        if "!=" in part:
            k, v = part.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "==" in part or "=" in part:
            k, v = part.replace("==", "=").split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            terms.append(("!", part[1:].strip(), ""))
        else:
            terms.append(("exists", part, ""))
    return terms


def matches(terms: list[tuple[str, str, str]], obj: dict | None) -> bool:
    if obj is None:
        return False
    labels = obj.get("metadata", {}).get("labels") or {}
    for op, key, value in terms:
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


@dataclass
class Event:
    rv: int
    rtype: ResourceType
    type: str
    obj: dict
    old: dict | None


@dataclass
class Write:
    """One mutating request, as the client sent it."""

    method: str
    resource: str
    namespace: str
    name: str
    subresource: str
    content_type: str
    body: Any
    query: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubernetesEmulator:
    """In-memory API server state behind a ThreadingHTTPServer on 127.0.0.1."""

    def __init__(self, *, validate: bool = True) -> None:
        self._lock = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict] = {}  # (type name, ns, name) -> object
        self._events: list[Event] = []
        self._rv = 100
        self._compacted = 0
        self._closing = False
        self._watch_generation = 0  # bump to end every open watch
        self._validate = validate
        self._crd_validators = _crd_validators() if validate else {}
        self.writes: list[Write] = []
        self.watches_started = 0
        self.lists_served = 0
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="k8s-emulator", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------ test controls

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (t, ns, _), o in sorted(self._objects.items())
                if t == resource and (namespace is None or ns == namespace)
            ]

    def apply(self, resource: str, obj: dict) -> dict:
        """Create or replace `obj` as one of the cluster's own controllers would (no
        resourceVersion check); status in `obj` is stored too."""
        rtype = BY_NAME[resource]
        meta = obj["metadata"]
        with self._lock:
            current = self._objects.get((resource, meta["namespace"], meta["name"]))
            if current is None:
                return self._create(rtype, meta["namespace"], copy.deepcopy(obj))
            new = copy.deepcopy(obj)
            new["metadata"] = {**current["metadata"], **copy.deepcopy(meta)}
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self._update(rtype, current, new, keep_status=False)

    def set_status(self, resource: str, namespace: str, name: str, status: dict) -> dict:
        with self._lock:
            current = self._objects[(resource, namespace, name)]
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(status)
            return self._update(BY_NAME[resource], current, new, keep_status=False)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        """What `kubectl delete` does: honours finalizers."""
        with self._lock:
            self._delete(BY_NAME[resource], namespace, name)

    def compact(self) -> None:
        """Forget the event log: a watch resuming from an older resourceVersion gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._events.clear()

    def break_watches(self) -> None:
        """End every open watch stream, as an API server restart or a load balancer would."""
        with self._lock:
            self._watch_generation += 1
            self._lock.notify_all()

    def writes_to(self, resource: str, *, name: str | None = None) -> list[Write]:
        return [w for w in self.writes if w.resource == resource and (name is None or w.name == name)]

    # ------------------------------------------------------------ state (lock held)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, rtype: ResourceType, type_: str, obj: dict, old: dict | None) -> None:
        self._events.append(Event(int(obj["metadata"]["resourceVersion"]), rtype, type_, copy.deepcopy(obj), old))
        self._lock.notify_all()

    def _check(self, rtype: ResourceType, obj: dict) -> None:
        if not self._validate:
            return
        if rtype.custom:
            errors = sorted(
                self._crd_validators[rtype.plural].iter_errors(obj), key=lambda e: list(e.absolute_path)
            )
            if errors:
                err = errors[0]
                path = ".".join(str(p) for p in err.absolute_path)
                raise ApiError(422, "Invalid", f"{rtype.kind}.{rtype.group} is invalid: {path}: {err.message}")
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                raise ApiError(422, "Invalid", f"{rtype.kind} is invalid: {path}: {exc.message}") from None

    def _create(self, rtype: ResourceType, namespace: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
        key = (rtype.name, namespace, name)
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        for server_owned in ("deletionTimestamp", "generation"):
            meta.pop(server_owned, None)
        if rtype.generation:
            meta["generation"] = 1
        if rtype.status and rtype.custom:
            obj.pop("status", None)
        meta["resourceVersion"] = self._next_rv()
        self._check(rtype, obj)
        self._objects[key] = obj
        self._emit(rtype, "ADDED", obj, None)
        return copy.deepcopy(obj)

    def _update(self, rtype: ResourceType, current: dict, new: dict, *, keep_status: bool, status_only: bool = False) -> dict:
        meta, cur_meta = new.setdefault("metadata", {}), current["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != cur_meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.plural}.{rtype.group} "{cur_meta["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if status_only:
            merged = copy.deepcopy(current)
            merged["status"] = copy.deepcopy(new.get("status", {}))
            new = merged
        else:
            for server_owned in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "namespace", "name"):
                if server_owned in cur_meta:
                    meta[server_owned] = cur_meta[server_owned]
                else:
                    meta.pop(server_owned, None)
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            if keep_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            if cur_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers", [])) - set(cur_meta.get("finalizers", []))
                if added:
                    raise ApiError(422, "Invalid", "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted")
        meta = new["metadata"]
        meta["resourceVersion"] = cur_meta["resourceVersion"]
        for optional in ("finalizers", "labels", "annotations", "ownerReferences"):
            if optional in meta and not meta[optional]:
                del meta[optional]
        if new == current:
            return copy.deepcopy(current)  # a no-op write changes nothing, not even the version
        if rtype.generation and not status_only:
            def body(o: dict) -> dict:
                return {k: v for k, v in o.items() if k not in ("metadata", "status")}

            if body(new) != body(current):
                meta["generation"] = cur_meta.get("generation", 0) + 1
        meta["resourceVersion"] = self._next_rv()
        self._check(rtype, new)
        key = (rtype.name, meta["namespace"], meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._objects[key]
            self._emit(rtype, "DELETED", new, current)
            return copy.deepcopy(new)
        self._objects[key] = new
        self._emit(rtype, "MODIFIED", new, current)
        return copy.deepcopy(new)

    def _delete(self, rtype: ResourceType, namespace: str, name: str) -> dict:
        key = (rtype.name, namespace, name)
        current = self._objects.get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{rtype.plural}.{rtype.group} "{name}" not found')
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(current)
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if rtype.generation:
                new["metadata"]["generation"] = current["metadata"].get("generation", 0) + 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._objects[key] = new
            self._emit(rtype, "MODIFIED", new, current)
            return copy.deepcopy(new)
        del self._objects[key]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(rtype, "DELETED", gone, current)
        return gone

    # ------------------------------------------------------------ requests

    def handle(self, method: str, path: str, query: dict, content_type: str, body: Any) -> tuple[int, Any]:
        rtype, namespace, name, sub = _route(path)
        if method != "GET":
            self.writes.append(
                Write(method, rtype.name, namespace or "", name or "", sub or "", content_type, copy.deepcopy(body), query)
            )
        with self._lock:
            if method == "GET" and name is None:
                return 200, self._list(rtype, namespace, query)
            if namespace is None:
                raise ApiError(405, "MethodNotAllowed", "only list and watch work across namespaces")
            if method == "POST" and name is None:
                return 201, self._create(rtype, namespace, body)
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} needs a name")
            current = self._objects.get((rtype.name, namespace, name))
            if method == "DELETE":
                gone = self._delete(rtype, namespace, name)
                if rtype.custom or gone["metadata"].get("deletionTimestamp"):
                    return 200, gone
                return 200, {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success",
                             "details": {"name": name, "kind": rtype.plural, "uid": gone["metadata"]["uid"]}}
            if current is None:
                raise ApiError(404, "NotFound", f'{rtype.plural}.{rtype.group} "{name}" not found')
            if sub == "scale":
                return 200, self._scale(rtype, current, method, content_type, body)
            if sub not in (None, "status") or (sub == "status" and not rtype.status):
                raise ApiError(404, "NotFound", f"no subresource {sub!r}")
            if method == "GET":
                return 200, copy.deepcopy(current)
            if method == "PUT":
                if rtype.custom and not body.get("metadata", {}).get("resourceVersion"):
                    raise ApiError(422, "Invalid", "metadata.resourceVersion: Invalid value: 0: must be specified for an update")
                return 200, self._update(rtype, current, copy.deepcopy(body), keep_status=rtype.status, status_only=sub == "status")
            if method == "PATCH":
                if content_type != "application/merge-patch+json":
                    raise ApiError(415, "UnsupportedMediaType", f"the emulator only applies merge patches, not {content_type}")
                patched = merge_patch(current, body)
                if "resourceVersion" not in (body.get("metadata") or {}):
                    patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                return 200, self._update(rtype, current, patched, keep_status=rtype.status, status_only=sub == "status")
            raise ApiError(405, "MethodNotAllowed", method)

    def _scale(self, rtype: ResourceType, current: dict, method: str, content_type: str, body: Any) -> dict:
        if not rtype.scale:
            raise ApiError(404, "NotFound", "no scale subresource")

        def as_scale(obj: dict) -> dict:
            meta = obj["metadata"]
            labels = obj["spec"]["selector"]["matchLabels"]
            return {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {
                    "replicas": (obj.get("status") or {}).get("replicas", 0),
                    "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                },
            }

        if method == "GET":
            return as_scale(current)
        if method == "PATCH":
            if content_type != "application/merge-patch+json":
                raise ApiError(415, "UnsupportedMediaType", f"the emulator only applies merge patches, not {content_type}")
            scale = merge_patch(as_scale(current), body)
        elif method == "PUT":
            scale = body
        else:
            raise ApiError(405, "MethodNotAllowed", method)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        new = copy.deepcopy(current)
        new["spec"]["replicas"] = scale["spec"]["replicas"]
        new["metadata"]["resourceVersion"] = rv or current["metadata"]["resourceVersion"]
        return as_scale(self._update(rtype, current, new, keep_status=True))

    def _list(self, rtype: ResourceType, namespace: str | None, query: dict) -> dict:
        terms = parse_selector(query.get("labelSelector", ""))
        self.lists_served += 1
        items = [
            copy.deepcopy(o)
            for (t, ns, _), o in sorted(self._objects.items())
            if t == rtype.name and (namespace is None or ns == namespace) and matches(terms, o)
        ]
        return {
            "apiVersion": rtype.api_version,
            "kind": f"{rtype.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def watch(self, path: str, query: dict, write_line) -> None:
        rtype, namespace, name, _ = _route(path)
        terms = parse_selector(query.get("labelSelector", ""))
        timeout_s = float(query.get("timeoutSeconds") or 60)
        deadline = time.monotonic() + timeout_s
        since = query.get("resourceVersion") or ""
        with self._lock:
            self.watches_started += 1
            generation = self._watch_generation
            if since in ("", "0"):
                cursor = self._rv
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (t, ns, n), o in sorted(self._objects.items())
                    if t == rtype.name and namespace in (None, ns) and name in (None, n) and matches(terms, o)
                ]
            else:
                cursor = int(since)
                initial = []
                if cursor < self._compacted:
                    initial = [{"type": "ERROR", "object": ApiError(
                        410, "Expired", f"too old resource version: {cursor} ({self._compacted})").status()}]
                    cursor = -1
        for line in initial:
            write_line(line)
        if cursor < 0:
            return
        while True:
            with self._lock:
                while True:
                    if self._closing or generation != self._watch_generation:
                        return
                    pending = [e for e in self._events if e.rv > cursor]
                    if pending:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._lock.wait(min(left, 0.5))
            for e in pending:
                cursor = e.rv
                if e.rtype != rtype:
                    continue
                meta = e.obj["metadata"]
                if namespace not in (None, meta["namespace"]) or name not in (None, meta["name"]):
                    continue
                now, before = matches(terms, e.obj), matches(terms, e.old)
                if e.type == "DELETED":
                    type_ = "DELETED" if before or now else None
                elif now and not before:
                    type_ = "ADDED"
                elif before and not now:
                    type_ = "DELETED"
                elif now:
                    type_ = e.type
                else:
                    type_ = None
                if type_:
                    write_line({"type": type_, "object": e.obj})


def _route(path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if not rest:
        raise ApiError(404, "NotFound", path)
    plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, "/".join(rest[2:]) or None
    rtype = BY_NAME.get(f"{group}/{version}/{plural}" if group else f"{version}/{plural}")
    if rtype is None:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    return rtype, namespace, name, sub


class _Handler(BaseHTTPRequestHandler):
    emu: KubernetesEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _send_json(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            if method == "DELETE" and isinstance(body, dict) and body.get("propagationPolicy"):
                query.setdefault("propagationPolicy", body["propagationPolicy"])
            if method == "GET" and query.get("watch") in ("true", "1"):
                self._watch(url.path, query)
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            code, payload = self.emu.handle(method, url.path, query, content_type, body)
        except ApiError as exc:
            code, payload = exc.code, exc.status()
        except (ValueError, KeyError, TypeError) as exc:
            code, payload = 400, ApiError(400, "BadRequest", f"{type(exc).__name__}: {exc}").status()
        self._send_json(code, payload)

    def _watch(self, path: str, query: dict) -> None:
        try:
            _route(path)
        except ApiError as exc:
            self._send_json(exc.code, exc.status())
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write_line(event: dict) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            self.emu.watch(path, query, write_line)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")
