"""How the CLI shows resources: aligned tables, JSON/YAML (MessageToDict), condition helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")

SERVICE_LABEL = "serving.knative.dev/service"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
GENERATION_LABEL = "serving.knative.dev/configurationGeneration"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, separated by three spaces (kubectl's look)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(padded).rstrip())
    return "\n".join(lines)


_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
})


def to_dict(message: Message) -> dict:
    """A resource as Knative-shaped JSON (lowerCamelCase names, unset fields left out).

    Proto3 JSON writes 64-bit integers as strings; Kubernetes writes them as numbers
    (`generation: 2`, `percent: 50`), so they are turned back into numbers here.
    """
    data = MessageToDict(message)
    _numbers(message, data)
    return data


def _numbers(message: Message, data: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        repeated = field.is_repeated
        if field.type in _INT64_TYPES:
            data[field.json_name] = [int(v) for v in value] if repeated else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name.startswith("google.protobuf.") or field.message_type.GetOptions().map_entry:
                continue  # well-known types keep their JSON form; our maps are string to string
            if repeated:
                for item, item_data in zip(getattr(message, field.name), value, strict=True):
                    _numbers(item, item_data)
            else:
                _numbers(getattr(message, field.name), value)


def dump(data: Any, fmt: str) -> str:
    """`data` as indented JSON or YAML text."""
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(data, indent=2)


def list_document(messages: Iterable[Message]) -> list[dict]:
    """Several resources as a JSON array of resources (`jq '.[].status.url'`)."""
    return [to_dict(m) for m in messages]


def condition(conditions: Iterable[Any], type_: str = "Ready") -> Any | None:
    """The condition of this type, or None."""
    for cond in conditions:
        if cond.type == type_:
            return cond
    return None


def ready_status(conditions: Iterable[Any]) -> str:
    """`True`, `False` or `Unknown` for the Ready condition (Unknown when it is missing)."""
    cond = condition(conditions)
    return cond.status if cond is not None and cond.status else "Unknown"


def ready_reason(conditions: Iterable[Any]) -> str:
    """The Ready condition's reason while it is not True, else empty."""
    cond = condition(conditions)
    if cond is None or cond.status == "True":
        return ""
    return cond.reason


def traffic_summary(targets: Iterable[Any]) -> str:
    """`80% hello-00002, 20% hello-00001 (old)`."""
    parts = []
    for target in targets:
        name = target.revision_name or target.configuration_name or ("@latest" if target.latest_revision else "?")
        tag = f" ({target.tag})" if target.tag else ""
        parts.append(f"{target.percent if target.HasField('percent') else 0}% {name}{tag}")
    return ", ".join(parts)


def revision_generation(revision: Any) -> str:
    """The configuration generation a revision was stamped from (label, else its `-0000N` suffix)."""
    label = revision.metadata.labels.get(GENERATION_LABEL)
    if label:
        return label
    tail = revision.metadata.name.rsplit("-", 1)[-1]
    return str(int(tail)) if tail.isdigit() else ""


def format_timestamp(ts: Any) -> str:
    """A protobuf Timestamp as RFC 3339 text, empty when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToJsonString()


def conditions_table(conditions: Sequence[Any]) -> str:
    rows = [
        (c.type, c.status, c.reason, c.message, format_timestamp(c.last_transition_time)) for c in conditions
    ]
    return table(["TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"], rows)


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())
