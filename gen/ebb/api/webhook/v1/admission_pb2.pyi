from ebb.api.serving.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    OPERATION_CREATE: _ClassVar[Operation]
    OPERATION_UPDATE: _ClassVar[Operation]
    OPERATION_DELETE: _ClassVar[Operation]
OPERATION_UNSPECIFIED: Operation
OPERATION_CREATE: Operation
OPERATION_UPDATE: Operation
OPERATION_DELETE: Operation

class FieldError(_message.Message):
    __slots__ = ("path", "message")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    def __init__(self, path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class DefaultRequest(_message.Message):
    __slots__ = ("resource", "old_resource", "operation")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OLD_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    resource: _resources_pb2.Resource
    old_resource: _resources_pb2.Resource
    operation: Operation
    def __init__(self, resource: _Optional[_Union[_resources_pb2.Resource, _Mapping]] = ..., old_resource: _Optional[_Union[_resources_pb2.Resource, _Mapping]] = ..., operation: _Optional[_Union[Operation, str]] = ...) -> None: ...

class DefaultResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: _resources_pb2.Resource
    def __init__(self, resource: _Optional[_Union[_resources_pb2.Resource, _Mapping]] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("resource", "old_resource", "operation")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OLD_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    resource: _resources_pb2.Resource
    old_resource: _resources_pb2.Resource
    operation: Operation
    def __init__(self, resource: _Optional[_Union[_resources_pb2.Resource, _Mapping]] = ..., old_resource: _Optional[_Union[_resources_pb2.Resource, _Mapping]] = ..., operation: _Optional[_Union[Operation, str]] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("allowed", "errors")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    def __init__(self, allowed: _Optional[bool] = ..., errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ...) -> None: ...
