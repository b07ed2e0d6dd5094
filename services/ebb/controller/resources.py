"""Kinds, keys and small helpers over the serving.knative.dev/v1 messages (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import json_format, timestamp_pb2

from ebb.api.serving.v1 import resources_pb2 as r

API_VERSION = "serving.knative.dev/v1"
DEFAULT_NAMESPACE = "default"

Object = r.Service | r.Configuration | r.Revision | r.Route

KINDS: dict[str, type] = {
    "Service": r.Service,
    "Configuration": r.Configuration,
    "Revision": r.Revision,
    "Route": r.Route,
}
# Resource oneof field name per kind.
ONEOF_FIELD = {"Service": "service", "Configuration": "configuration", "Revision": "revision", "Route": "route"}
KIND_BY_ENUM = {1: "Service", 2: "Configuration", 3: "Revision", 4: "Route"}
ENUM_BY_KIND = {v: k for k, v in KIND_BY_ENUM.items()}

# Labels Knative puts on children, so users can select them.
LABEL_SERVICE = "serving.knative.dev/service"
LABEL_CONFIGURATION = "serving.knative.dev/configuration"
LABEL_CONFIGURATION_GENERATION = "serving.knative.dev/configurationGeneration"
LABEL_ROUTE = "serving.knative.dev/route"
ANNOTATION_TEMPLATE_HASH = "ebb.dev/template-hash"


@dataclass(frozen=True, order=True)
class Key:
    """Identity of a stored resource."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def key_of(obj: Object) -> Key:
    return Key(obj.kind or type(obj).__name__, obj.metadata.namespace or DEFAULT_NAMESPACE, obj.metadata.name)


def kind_of(obj: Object) -> str:
    return type(obj).__name__


def new(kind: str) -> Object:
    obj = KINDS[kind]()
    obj.api_version = API_VERSION
    obj.kind = kind
    return obj


def to_resource(obj: Object) -> r.Resource:
    res = r.Resource()
    getattr(res, ONEOF_FIELD[kind_of(obj)]).CopyFrom(obj)
    return res


def from_resource(res: r.Resource) -> Object | None:
    which = res.WhichOneof("kind")
    return getattr(res, which) if which else None


def to_dict(obj: Object) -> dict:
    return json_format.MessageToDict(obj)


def to_json(obj: Object) -> str:
    return json_format.MessageToJson(obj, indent=None, sort_keys=True)


def from_json(kind: str, text: str) -> Object:
    return json_format.Parse(text, KINDS[kind]())


def timestamp(now_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(now_s * 1e9))
    return ts


def condition(obj: Object, type_: str):
    for c in obj.status.conditions:
        if c.type == type_:
            return c
    return None


def set_condition(
    obj: Object, type_: str, status: str, reason: str = "", message: str = "", *, now_s: float
) -> bool:
    """Set a condition; the transition time moves only when the status changes. True if changed."""
    cond = condition(obj, type_)
    if cond is None:
        cond = obj.status.conditions.add(type=type_)
        cond.last_transition_time.CopyFrom(timestamp(now_s))
    elif cond.status != status:
        cond.last_transition_time.CopyFrom(timestamp(now_s))
    changed = (cond.status, cond.reason, cond.message) != (status, reason, message)
    cond.status, cond.reason, cond.message = status, reason, message
    return changed


def is_ready(obj: Object) -> bool:
    cond = condition(obj, "Ready")
    return cond is not None and cond.status == "True"
