"""Knative manifests (YAML) to `ebb.api.serving.v1` messages, with errors that name the field path.

Parsing is strict like the Kubernetes API server: an unknown field, a wrong type or a bad
apiVersion/kind is an error naming the document and the field path, e.g.
`service.yaml: spec.template.spec.containerz: unknown field (did you mean containers?)`.
The proto3 JSON names of the messages equal Knative's field names, so once a document
passes the checks here `json_format.ParseDict` takes it as is. We check the tree ourselves
(rather than parse protobuf's `ParseError` text) because protobuf's messages lose the path
for some errors (wrong scalar types in maps, element indexes).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ebb.api.serving.v1 import resources_pb2

API_VERSION = "serving.knative.dev/v1"
GROUP = "serving.knative.dev"

# kind -> (message class, Resource oneof field, Kind enum value)
KINDS: dict[str, tuple[type, str, int]] = {
    "Service": (resources_pb2.Service, "service", resources_pb2.KIND_SERVICE),
    "Configuration": (resources_pb2.Configuration, "configuration", resources_pb2.KIND_CONFIGURATION),
    "Route": (resources_pb2.Route, "route", resources_pb2.KIND_ROUTE),
    "Revision": (resources_pb2.Revision, "revision", resources_pb2.KIND_REVISION),
}
APPLICABLE = ("Service", "Configuration", "Route")

_INT32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
_UINT32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
_UINT64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
_RANGES = {
    **{t: (-(2**31), 2**31 - 1) for t in _INT32},
    **{t: (0, 2**32 - 1) for t in _UINT32},
    **{t: (-(2**63), 2**63 - 1) for t in _INT64},
    **{t: (0, 2**64 - 1) for t in _UINT64},
}
_INTEGER_TEXT = re.compile(r"^-?\d+$")


class ManifestError(ValueError):
    """A manifest cannot be used; str() is one line: `SOURCE: [document N: ]PATH: problem`."""


@dataclass(frozen=True)
class Document:
    """One parsed resource of a manifest file."""

    source: str  # file name as given, `<stdin>` for `-`
    index: int  # 1-based position among the non-empty documents of the source
    kind: str  # `Service`, `Configuration`, `Route`
    resource: resources_pb2.Resource

    @property
    def message(self):
        """The Service/Configuration/Route message inside the Resource."""
        return getattr(self.resource, self.resource.WhichOneof("kind"))


def load_documents(text: str, source: str, *, namespace: str | None = None) -> list[Document]:
    """Every non-empty YAML document of `text` as a Resource; ManifestError on the first problem.

    `namespace` (from `--namespace`) fills in documents without one and must match the rest.
    """
    raw_docs = _load_yaml(text, source)
    if not raw_docs:
        raise ManifestError(f"{source}: no resources found")
    many = len(raw_docs) > 1
    documents = []
    for index, raw in enumerate(raw_docs, start=1):
        where = f"{source}: document {index}" if many else source
        documents.append(parse_resource(raw, where, source=source, index=index, namespace=namespace))
    return documents


def _load_yaml(text: str, source: str) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            raise ManifestError(f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}") from None
        raise ManifestError(f"{source}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {exc}") from None


def parse_resource(
    raw: Any, where: str, *, source: str = "", index: int = 1, namespace: str | None = None
) -> Document:
    """One decoded YAML document (a mapping) as a Document; `where` prefixes error messages."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping with apiVersion and kind, got {_type_name(raw)}")
    api_version = raw.get("apiVersion")
    kind = raw.get("kind")
    if not api_version:
        raise ManifestError(f"{where}: apiVersion: required (want {API_VERSION})")
    if not kind:
        raise ManifestError(f"{where}: kind: required (one of {', '.join(APPLICABLE)})")
    if api_version != API_VERSION:
        if isinstance(api_version, str) and api_version.startswith(GROUP + "/"):
            raise ManifestError(f"{where}: apiVersion: {api_version} is not supported, use {API_VERSION}")
        raise ManifestError(
            f"{where}: apiVersion: {api_version} {kind} is not an Ebb resource (want {API_VERSION})"
        )
    if kind == "Revision":
        raise ManifestError(f"{where}: kind: Revision cannot be applied; revisions are stamped from a Configuration or Service")
    if kind not in APPLICABLE:
        raise ManifestError(f"{where}: kind: {kind} is not supported (one of {', '.join(APPLICABLE)})")
    message_cls, oneof_field, _ = KINDS[kind]
    # Status belongs to the controller: drop it, as the API server does on apply.
    body = {key: value for key, value in raw.items() if key != "status"}
    metadata = body.get("metadata")
    if metadata is None or not isinstance(metadata, dict) or not metadata.get("name"):
        if metadata is not None and not isinstance(metadata, dict):
            raise ManifestError(f"{where}: metadata: expected a mapping, got {_type_name(metadata)}")
        raise ManifestError(f"{where}: metadata.name: required")
    clean = check_tree(message_cls.DESCRIPTOR, body, "", where)
    if namespace:
        current = clean["metadata"].get("namespace")
        if current and current != namespace:
            raise ManifestError(
                f"{where}: metadata.namespace: {current} does not match --namespace {namespace}"
            )
        clean["metadata"]["namespace"] = namespace
    message = message_cls()
    try:
        json_format.ParseDict(clean, message)
    except json_format.ParseError as exc:  # a case check_tree does not know; keep protobuf's words
        raise ManifestError(f"{where}: {translate_parse_error(str(exc))}") from None
    return Document(source=source or where, index=index, kind=kind, resource=resources_pb2.Resource(**{oneof_field: message}))


def resolve_working_dirs(resource: resources_pb2.Resource, base_dir: Path) -> None:
    """Make each container's relative `workingDir` absolute against `base_dir` (in place).

    In local mode a container is a command run on this machine; a relative working
    directory in a manifest means "next to this file" (`workingDir: .` beside the app), so
    the same manifest works from any directory. An unset or absolute one is left alone.
    """
    which = resource.WhichOneof("kind")
    if which in ("service", "configuration"):
        containers = getattr(resource, which).spec.template.spec.containers
    else:
        return
    for container in containers:
        if container.working_dir and not Path(container.working_dir).is_absolute():
            container.working_dir = str((base_dir / container.working_dir).resolve())


def check_tree(descriptor: Descriptor, value: Any, path: str, where: str) -> dict:
    """Check `value` against the message `descriptor`; returns a JSON-ready copy.

    Raises ManifestError naming the first bad field. YAML timestamps become RFC 3339 text.
    """
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {path or '(document)'}: expected a mapping, got {_type_name(value)}")
    fields = {field.json_name: field for field in descriptor.fields}
    out: dict[str, Any] = {}
    for key, item in value.items():
        child_path = _join(path, str(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ManifestError(f"{where}: {child_path}: unknown field{_suggest(str(key), fields)}")
        if item is None:
            continue  # null = unset, as in Kubernetes (`creationTimestamp: null`)
        out[key] = _check_field(field, item, child_path, where)
    return out


def _check_field(field: FieldDescriptor, value: Any, path: str, where: str) -> Any:
    if _is_map(field):
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: {path}: expected a mapping, got {_type_name(value)}")
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        result = {}
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if key_field.type == FieldDescriptor.TYPE_STRING and not isinstance(key, str):
                raise ManifestError(f"{where}: {item_path}: keys must be strings (quote {key!r})")
            if item is None:
                raise ManifestError(f"{where}: {item_path}: value must not be null")
            result[str(key)] = _check_single(value_field, item, item_path, where)
        return result
    if field.is_repeated:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: {path}: expected a list, got {_type_name(value)}")
        items = []
        for position, item in enumerate(value):
            item_path = f"{path}[{position}]"
            if item is None:
                raise ManifestError(f"{where}: {item_path}: must not be null")
            items.append(_check_single(field, item, item_path, where))
        return items
    return _check_single(field, value, path, where)


def _check_single(field: FieldDescriptor, value: Any, path: str, where: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Timestamp":
            return _timestamp(value, path, where)
        if full_name.startswith("google.protobuf."):
            return value  # other well-known types: protobuf checks them
        return check_tree(field.message_type, value, path, where)
    if kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            hint = f' (quote it: "{_yaml_scalar(value)}")' if isinstance(value, bool | int | float) else ""
            raise ManifestError(f"{where}: {path}: expected a string, got {_type_name(value)}{hint}")
        return value
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ManifestError(f"{where}: {path}: expected true or false, got {_type_name(value)}")
        return value
    if kind in _RANGES:
        number = _integer(value, path, where)
        low, high = _RANGES[kind]
        if not low <= number <= high:
            raise ManifestError(f"{where}: {path}: {number} is out of range {low}..{high}")
        return number
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ManifestError(f"{where}: {path}: expected a number, got {_type_name(value)}")
        return value
    if kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if isinstance(value, str) and value in names:
            return value
        raise ManifestError(f"{where}: {path}: expected one of {', '.join(names)}")
    return value  # bytes: protobuf checks base64


def _integer(value: Any, path: str, where: str) -> int:
    if isinstance(value, bool):
        raise ManifestError(f"{where}: {path}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.match(value.strip()):
        return int(value.strip())
    shown = f" {value!r}" if isinstance(value, str | float) else ""
    raise ManifestError(f"{where}: {path}: expected an integer, got {_type_name(value)}{shown}")


def _timestamp(value: Any, path: str, where: str) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # YAML timestamps without offset are UTC
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00Z"
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise ManifestError(f"{where}: {path}: expected an RFC 3339 time like 2024-05-01T12:00:00Z")
        return value
    raise ManifestError(f"{where}: {path}: expected an RFC 3339 time, got {_type_name(value)}")


def translate_parse_error(text: str) -> str:
    """protobuf's ParseError text as `PATH: problem` (a fallback; check_tree catches most cases).

    protobuf nests its messages as `Failed to parse spec field: Failed to parse template
    field: ... <problem> at "Service.spec.template"`; the chain of field names is the path.
    """
    chain = re.findall(r"Failed to parse (\w+) field: ", text)
    problem = re.split(r"Failed to parse \w+ field: ", text)[-1].split("\n")[0].rstrip(".").strip()
    at = re.search(r' at "?\w+\.?([\w.\[\]]*?)"?$', problem)
    if at:
        problem = problem[: at.start()]
        chain = [at.group(1)] if at.group(1) else []
    unknown = re.match(r'Message type "[\w.]+" has no field named "([^"]+)"', problem)
    if unknown:
        chain.append(unknown.group(1))
        problem = "unknown field"
    path = ".".join(part for part in chain if part)
    return f"{path}: {problem}" if path else problem


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(key: str, fields: Iterable[str]) -> str:
    names = list(fields)
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
    if camel != key and camel in names:
        return f" (did you mean {camel}?)"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
