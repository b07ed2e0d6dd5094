from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RevisionKey(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RevisionEndpoints(_message.Message):
    __slots__ = ("revision", "addresses", "container_concurrency", "timeout_seconds", "response_start_timeout_seconds", "idle_timeout_seconds", "not_ready_addresses")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_START_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOT_READY_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    revision: RevisionKey
    addresses: _containers.RepeatedScalarFieldContainer[str]
    container_concurrency: int
    timeout_seconds: int
    response_start_timeout_seconds: int
    idle_timeout_seconds: int
    not_ready_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[_Union[RevisionKey, _Mapping]] = ..., addresses: _Optional[_Iterable[str]] = ..., container_concurrency: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., response_start_timeout_seconds: _Optional[int] = ..., idle_timeout_seconds: _Optional[int] = ..., not_ready_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEndpointsRequest(_message.Message):
    __slots__ = ("namespace", "activator_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATOR_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    activator_id: str
    def __init__(self, namespace: _Optional[str] = ..., activator_id: _Optional[str] = ...) -> None: ...

class WatchEndpointsResponse(_message.Message):
    __slots__ = ("revisions", "removed", "snapshot", "activator_count", "activator_index")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[RevisionEndpoints]
    removed: _containers.RepeatedCompositeFieldContainer[RevisionKey]
    snapshot: bool
    activator_count: int
    activator_index: int
    def __init__(self, revisions: _Optional[_Iterable[_Union[RevisionEndpoints, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[RevisionKey, _Mapping]]] = ..., snapshot: _Optional[bool] = ..., activator_count: _Optional[int] = ..., activator_index: _Optional[int] = ...) -> None: ...
