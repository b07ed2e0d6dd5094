"""Tolerant readers over the Knative dict form (ints may arrive as proto3-JSON strings)."""

from __future__ import annotations

import re
from typing import Any

_INT_TEXT = re.compile(r"^-?[0-9]+$")


def as_dict(value: Any) -> dict:
    """`value` if it is a mapping, else an empty dict (wrong types are reported elsewhere)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    """`value` if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    """`value` if it is a string, else ""."""
    return value if isinstance(value, str) else ""


def as_int(value: Any) -> int | None:
    """An integer field: ints, and decimal strings (proto3 JSON renders int64 as a string).

    Returns None for anything else, including bools (JSON true is not a number).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    return None
