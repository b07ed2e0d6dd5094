"""RFC 6902 JSON Patch: the diff that turns one JSON document into another, and its application.

Only what the mutating webhook needs: `diff` emits add / remove / replace; `apply`
understands those three (enough to check a diff round-trips). Pure, no I/O.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch operation does not fit the document."""


def escape(token: str) -> str:
    """RFC 6901 reference token: `~` -> `~0`, `/` -> `~1` (annotation keys contain `/`)."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    """Inverse of escape()."""
    return token.replace("~1", "/").replace("~0", "~")


def diff(src: Any, dst: Any) -> list[dict[str, Any]]:
    """Operations that turn `src` into `dst` (both JSON values); [] when they are equal."""
    ops: list[dict[str, Any]] = []
    _diff(src, dst, "", ops)
    return ops


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, but 1 and 1.0 are the same number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _diff(src: Any, dst: Any, path: str, ops: list[dict[str, Any]]) -> None:
    if _same(src, dst):
        return
    if isinstance(src, dict) and isinstance(dst, dict):
        for key in src:
            if key not in dst:
                ops.append({"op": "remove", "path": f"{path}/{escape(key)}"})
        for key, value in dst.items():
            child = f"{path}/{escape(key)}"
            if key in src:
                _diff(src[key], value, child, ops)
            else:
                ops.append({"op": "add", "path": child, "value": copy.deepcopy(value)})
    elif isinstance(src, list) and isinstance(dst, list):
        common = min(len(src), len(dst))
        for i in range(common):
            _diff(src[i], dst[i], f"{path}/{i}", ops)
        for i in range(common, len(dst)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": copy.deepcopy(dst[i])})
        # Remove from the end so earlier indices stay valid.
        for i in reversed(range(common, len(src))):
            ops.append({"op": "remove", "path": f"{path}/{i}"})
    else:
        ops.append({"op": "replace", "path": path, "value": copy.deepcopy(dst)})


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply add / remove / replace operations to a copy of `doc`; returns the result."""
    result = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"operation without a path: {op}")
        if path == "":
            if kind in ("add", "replace"):
                result = copy.deepcopy(op["value"])
                continue
            raise PatchError(f"cannot {kind} the whole document")
        if not path.startswith("/"):
            raise PatchError(f"bad pointer {path!r}")
        tokens = [unescape(t) for t in path[1:].split("/")]
        parent = result
        for token in tokens[:-1]:
            parent = _step(parent, token, path)
        last = tokens[-1]
        if kind == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else _index(parent, last, path, allow_end=True)
                parent.insert(index, copy.deepcopy(op["value"]))
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(op["value"])
            else:
                raise PatchError(f"cannot add into a scalar at {path!r}")
        elif kind in ("remove", "replace"):
            if isinstance(parent, list):
                index = _index(parent, last, path, allow_end=False)
            elif isinstance(parent, dict):
                if last not in parent:
                    raise PatchError(f"no member at {path!r}")
                index = last
            else:
                raise PatchError(f"no member at {path!r}")
            if kind == "remove":
                del parent[index]
            else:
                parent[index] = copy.deepcopy(op["value"])
        else:
            raise PatchError(f"unsupported operation {kind!r}")
    return result


def _step(node: Any, token: str, path: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"no member at {path!r}")
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, path, allow_end=False)]
    raise PatchError(f"no member at {path!r}")


def _index(items: list, token: str, path: str, *, allow_end: bool) -> int:
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"bad array index in {path!r}")
    index = int(token)
    if index > len(items) or (index == len(items) and not allow_end):
        raise PatchError(f"array index out of range in {path!r}")
    return index
