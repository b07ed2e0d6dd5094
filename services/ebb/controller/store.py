"""The Store interface reconcilers use, and its SQLite implementation for local mode."""

from __future__ import annotations

import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ebb.controller.resources import (
    DEFAULT_NAMESPACE,
    KINDS,
    Key,
    Object,
    from_json,
    key_of,
    timestamp,
    to_json,
)

# Parsed rows kept, by their stored text: a reconcile pass reads every resource, and
# protobuf's JSON parser costs about 2 ms per object where a copy costs microseconds.
PARSED_CACHE_MAX = 4096


class NotFound(KeyError):
    """The resource does not exist."""


class Conflict(ValueError):
    """The resource changed since it was read (resourceVersion mismatch)."""


@dataclass(frozen=True)
class Event:
    """One change in the store: type is ADDED, MODIFIED or DELETED."""

    type: str
    obj: Object


class Store(Protocol):
    """Get/list/watch/write resources; local mode uses SQLite, cluster mode custom resources."""

    def get(self, kind: str, namespace: str, name: str) -> Object | None: ...

    def list(self, kind: str, namespace: str | None = None) -> list[Object]: ...

    def put(self, obj: Object, *, now_s: float) -> tuple[Object, bool]: ...

    def put_status(self, obj: Object) -> Object: ...

    def delete(self, kind: str, namespace: str, name: str) -> Object | None: ...

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]: ...


def _spec_bytes(obj: Object) -> bytes:
    return obj.spec.SerializeToString(deterministic=True)


def _meta_bytes(obj: Object) -> bytes:
    m = obj.metadata
    return repr((sorted(m.labels.items()), sorted(m.annotations.items()), list(m.owner_references))).encode()


def same_content(old: Object, new: Object) -> bool:
    """Whether writing `new` over `old` would change nothing: the same spec, labels,
    annotations and owner references (what `put` replaces)."""
    return _spec_bytes(old) == _spec_bytes(new) and _meta_bytes(old) == _meta_bytes(new)


class SqliteStore:
    """Resources as JSON rows in one SQLite table under the data dir; survives restarts.

    Writes bump `resourceVersion` (a global counter); a change of `spec` bumps `generation`.
    Subscribers are called synchronously after each committed write.
    """

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS resources ("
            " kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
            " resource_version INTEGER NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (kind, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('resource_version', 0)")
        self._subscribers: list[Callable[[Event], None]] = []
        self._parsed: OrderedDict[tuple[str, str], Object] = OrderedDict()

    def close(self) -> None:
        self._db.close()

    # -- reads --

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        row = self._db.execute(
            "SELECT body FROM resources WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace or DEFAULT_NAMESPACE, name),
        ).fetchone()
        return self._parse(kind, row[0]) if row else None

    def list(self, kind: str, namespace: str | None = None) -> list[Object]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if namespace:
            rows = self._db.execute(
                "SELECT body FROM resources WHERE kind=? AND namespace=? ORDER BY namespace, name", (kind, namespace)
            )
        else:
            rows = self._db.execute("SELECT body FROM resources WHERE kind=? ORDER BY namespace, name", (kind,))
        return [self._parse(kind, body) for (body,) in rows.fetchall()]

    def _parse(self, kind: str, body: str) -> Object:
        """`from_json`, remembered by the stored text (which carries the resourceVersion, so
        a write never hits a stale entry); every caller gets its own copy."""
        key = (kind, body)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parsed[key] = from_json(kind, body)
            if len(self._parsed) > PARSED_CACHE_MAX:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(key)
        return _copy(parsed)

    # -- writes --

    def _next_version(self) -> int:
        self._db.execute("UPDATE counters SET value = value + 1 WHERE name='resource_version'")
        return self._db.execute("SELECT value FROM counters WHERE name='resource_version'").fetchone()[0]

    def _write(self, key: Key, obj: Object) -> None:
        version = self._next_version()
        obj.metadata.resource_version = str(version)
        self._db.execute(
            "INSERT INTO resources (kind, namespace, name, resource_version, body) VALUES (?,?,?,?,?)"
            " ON CONFLICT(kind, namespace, name) DO UPDATE SET resource_version=excluded.resource_version,"
            " body=excluded.body",
            (key.kind, key.namespace, key.name, version, to_json(obj)),
        )

    def put(self, obj: Object, *, now_s: float) -> tuple[Object, bool]:
        """Create the resource or replace its spec and metadata (status is kept).

        Returns (stored object, changed). An identical write changes nothing.
        """
        obj = _copy(obj)
        obj.metadata.namespace = obj.metadata.namespace or DEFAULT_NAMESPACE
        key = key_of(obj)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            old = self.get(key.kind, key.namespace, key.name)
            if old is None:
                obj.metadata.uid = str(uuid.uuid4())
                obj.metadata.generation = 1
                obj.metadata.creation_timestamp.CopyFrom(timestamp(now_s))
                obj.ClearField("status")
                self._write(key, obj)
                event = Event("ADDED", obj)
            else:
                if same_content(old, obj):
                    self._db.execute("COMMIT")
                    return old, False
                spec_changed = _spec_bytes(old) != _spec_bytes(obj)
                merged = _copy(old)
                merged.spec.CopyFrom(obj.spec)
                merged.metadata.ClearField("labels")
                merged.metadata.labels.update(obj.metadata.labels)
                merged.metadata.ClearField("annotations")
                merged.metadata.annotations.update(obj.metadata.annotations)
                if obj.metadata.owner_references:
                    del merged.metadata.owner_references[:]
                    merged.metadata.owner_references.extend(obj.metadata.owner_references)
                if spec_changed:
                    merged.metadata.generation = old.metadata.generation + 1
                self._write(key, merged)
                obj = merged
                event = Event("MODIFIED", obj)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._notify(event)
        return obj, True

    def put_status(self, obj: Object) -> Object:
        """Replace only the status of an existing resource."""
        key = key_of(obj)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            old = self.get(key.kind, key.namespace, key.name)
            if old is None:
                raise NotFound(str(key))
            if old.status.SerializeToString(deterministic=True) == obj.status.SerializeToString(deterministic=True):
                self._db.execute("COMMIT")
                return old
            old.status.CopyFrom(obj.status)
            self._write(key, old)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._notify(Event("MODIFIED", old))
        return old

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        namespace = namespace or DEFAULT_NAMESPACE
        old = self.get(kind, namespace, name)
        if old is None:
            return None
        self._db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
        self._notify(Event("DELETED", old))
        return old

    # -- watch --

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` after every write; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _notify(self, event: Event) -> None:
        for callback in list(self._subscribers):
            callback(event)


def _copy(obj: Object) -> Object:
    out = type(obj)()
    out.CopyFrom(obj)
    return out
