import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_CONCURRENCY: _ClassVar[Metric]
    METRIC_RPS: _ClassVar[Metric]
METRIC_UNSPECIFIED: Metric
METRIC_CONCURRENCY: Metric
METRIC_RPS: Metric

class RevisionKey(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Stat(_message.Message):
    __slots__ = ("instance", "revision", "average_concurrency", "average_proxied_concurrency", "request_count", "proxied_request_count", "process_uptime_seconds", "timestamp", "period_seconds")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PROXIED_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROXIED_REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    instance: str
    revision: RevisionKey
    average_concurrency: float
    average_proxied_concurrency: float
    request_count: float
    proxied_request_count: float
    process_uptime_seconds: float
    timestamp: _timestamp_pb2.Timestamp
    period_seconds: float
    def __init__(self, instance: _Optional[str] = ..., revision: _Optional[_Union[RevisionKey, _Mapping]] = ..., average_concurrency: _Optional[float] = ..., average_proxied_concurrency: _Optional[float] = ..., request_count: _Optional[float] = ..., proxied_request_count: _Optional[float] = ..., process_uptime_seconds: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_seconds: _Optional[float] = ...) -> None: ...

class StreamStatsRequest(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[Stat]
    def __init__(self, stats: _Optional[_Iterable[_Union[Stat, _Mapping]]] = ...) -> None: ...

class StreamStatsResponse(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class AutoscalingSpec(_message.Message):
    __slots__ = ("revision", "annotations", "container_concurrency", "reachable", "ready_instances")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    READY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    revision: RevisionKey
    annotations: _containers.ScalarMap[str, str]
    container_concurrency: int
    reachable: bool
    ready_instances: int
    def __init__(self, revision: _Optional[_Union[RevisionKey, _Mapping]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., container_concurrency: _Optional[int] = ..., reachable: _Optional[bool] = ..., ready_instances: _Optional[int] = ...) -> None: ...

class RegisterRevisionRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: AutoscalingSpec
    def __init__(self, spec: _Optional[_Union[AutoscalingSpec, _Mapping]] = ...) -> None: ...

class RegisterRevisionResponse(_message.Message):
    __slots__ = ("warnings",)
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class UnregisterRevisionRequest(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: RevisionKey
    def __init__(self, revision: _Optional[_Union[RevisionKey, _Mapping]] = ...) -> None: ...

class UnregisterRevisionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDecisionsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ScaleDecision(_message.Message):
    __slots__ = ("revision", "desired_scale", "excess_burst_capacity", "panic", "stable_value", "panic_value", "metric", "requests_per_second", "decided_at", "bounds")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SCALE_FIELD_NUMBER: _ClassVar[int]
    EXCESS_BURST_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    STABLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    PANIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    revision: RevisionKey
    desired_scale: int
    excess_burst_capacity: int
    panic: bool
    stable_value: float
    panic_value: float
    metric: Metric
    requests_per_second: float
    decided_at: _timestamp_pb2.Timestamp
    bounds: ScaleBounds
    def __init__(self, revision: _Optional[_Union[RevisionKey, _Mapping]] = ..., desired_scale: _Optional[int] = ..., excess_burst_capacity: _Optional[int] = ..., panic: _Optional[bool] = ..., stable_value: _Optional[float] = ..., panic_value: _Optional[float] = ..., metric: _Optional[_Union[Metric, str]] = ..., requests_per_second: _Optional[float] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bounds: _Optional[_Union[ScaleBounds, _Mapping]] = ...) -> None: ...

class ScaleBounds(_message.Message):
    __slots__ = ("min_scale", "max_scale", "initial_scale")
    MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SCALE_FIELD_NUMBER: _ClassVar[int]
    min_scale: int
    max_scale: int
    initial_scale: int
    def __init__(self, min_scale: _Optional[int] = ..., max_scale: _Optional[int] = ..., initial_scale: _Optional[int] = ...) -> None: ...

class WatchDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[ScaleDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[ScaleDecision, _Mapping]]] = ...) -> None: ...
