"""Size and shape checks on a request's bytes, before protobuf parses them.

Parsing is not free: a SubmitTask of 8 MiB can hold four million empty subtasks, which
take protobuf seconds and a gigabyte to build, and the conversion to plain objects many
seconds more, all on the event loop (health answers and heartbeats wait meanwhile). So
the methods that carry a `TaskSpec` get a deserializer that first walks the wire format,
with work bounded by the limits rather than by the message: how many tasks, how deep the
subtasks nest, how many fields in all, and which fields the receiver accepts. A request
past a limit is not parsed at all; the handler receives a `RefusedRequest` instead, and the
error wrappers (`agentmesh.rpc.errors`) answer INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentmesh.errors import InvalidArgument, Reason
from agentmesh.tasks.model import MAX_CAPABILITIES
from agentmesh.v1 import task_pb2

_SPEC_FIELDS = task_pb2.TaskSpec.DESCRIPTOR.fields_by_name
SUBTASKS = _SPEC_FIELDS["subtasks"].number
_FIELD_NAMES = {field.number: name for name, field in _SPEC_FIELDS.items()}
# Fields a task may have: its own, each capability, and some slack for fields sent twice.
_FIELDS_PER_TASK = len(_SPEC_FIELDS) + MAX_CAPABILITIES

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class SpecShape:
    """What a receiver accepts in a TaskSpec on the wire."""

    # The most tasks in one request, the root included.
    max_tasks: int
    # How deep subtasks may nest (0: none at all).
    max_depth: int
    # Fields the receiver does not act on, and what it says when one is sent anyway.
    refused_fields: Mapping[str, str] = field(default_factory=dict)
    # The reason a refusal carries (a node's BAD_SPEC: the scheduler fails the task at once).
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """What a checked deserializer hands the handler instead of a request past a limit."""

    error: InvalidArgument


class _Walk:
    """One request's walk: the fields seen so far, against the budget."""

    def __init__(self, data: bytes, shape: SpecShape, tasks_field: str = "spec.subtasks") -> None:
        self.data = data
        self.shape = shape
        self.tasks_field = tasks_field  # what a refusal for too many tasks names
        self.tasks = 0
        self.fields = 0
        self.max_fields = shape.max_tasks * _FIELDS_PER_TASK

    def fields_of(self, start: int, end: int, path: str) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value start, value end) of each field in data[start:end]."""
        position = start
        while position < end:
            self.fields += 1
            if self.fields > self.max_fields:
                raise InvalidArgument(
                    path or "(request)",
                    f"has more than {self.max_fields} fields in all (the most a request of"
                    f" {self.shape.max_tasks} tasks can need)",
                )
            key, position = self._varint(position, end, path)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                _, value_end = self._varint(position, end, path)
            elif wire_type in (_FIXED64, _FIXED32):
                value_end = position + (8 if wire_type == _FIXED64 else 4)
            elif wire_type == _LENGTH:
                length, position = self._varint(position, end, path)
                value_end = position + length
            else:
                raise InvalidArgument(path or "(request)", "is not a valid protobuf message")
            # Checked before the field is handed on: nothing reads past its message.
            if value_end > end:
                raise InvalidArgument(path or "(request)", "is not a valid protobuf message")
            yield number, wire_type, position, value_end
            position = value_end

    def _varint(self, position: int, end: int, path: str) -> tuple[int, int]:
        value = shift = 0
        while position < end and shift < 64:
            byte = self.data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, position
            shift += 7
        raise InvalidArgument(path or "(request)", "is not a valid protobuf message")

    def spec(self, start: int, end: int, path: str, depth: int) -> None:
        self.tasks += 1
        if self.tasks > self.shape.max_tasks:
            raise InvalidArgument(
                self.tasks_field,
                f"more than {self.shape.max_tasks} tasks in one request; the limit is"
                f" {self.shape.max_tasks}",
            )
        children = 0
        for number, wire_type, value_start, value_end in self.fields_of(start, end, path):
            name = _FIELD_NAMES.get(number)
            if name is not None and name in self.shape.refused_fields:
                raise InvalidArgument(f"{path}.{name}", self.shape.refused_fields[name])
            if number != SUBTASKS or wire_type != _LENGTH:
                continue
            if depth >= self.shape.max_depth:
                raise InvalidArgument(
                    f"{path}.subtasks",
                    f"subtasks are nested deeper than the limit of {self.shape.max_depth}",
                )
            self.spec(value_start, value_end, f"{path}.subtasks[{children}]", depth + 1)
            children += 1


def check_request(data: bytes, spec_field: int, shape: SpecShape, repeated: str = "") -> None:
    """Raise InvalidArgument if the request's TaskSpec (field `spec_field`) breaks `shape`.
    `repeated` names the field when it holds many specs: each is checked as `name[i]`, and
    the tasks of all of them count against the limit together."""
    walk = _Walk(data, shape, tasks_field=repeated or "spec.subtasks")
    index = 0
    for number, wire_type, start, end in walk.fields_of(0, len(data), ""):
        if number == spec_field and wire_type == _LENGTH:
            walk.spec(start, end, f"{repeated}[{index}]" if repeated else "spec", depth=0)
            index += 1


@dataclass(frozen=True, slots=True)
class WorkShape:
    """Where a stream's request (AgentNode.Work's) carries its tasks: each `start_field`
    is a request of its own, with its id in `id_field`, attempt in `attempt_field` and
    spec in `spec_field`, checked against `shape`, at most `max_starts` per request."""

    start_field: int
    id_field: int
    attempt_field: int
    spec_field: int
    shape: SpecShape
    max_starts: int


@dataclass(frozen=True, slots=True)
class CheckedWork:
    """A Work request as its handler receives it: the starts that passed their checks, in
    `request`, and the ones that did not, by task and attempt, with why."""

    request: Any
    refused: tuple[tuple[str, int, InvalidArgument], ...]


def split_work(
    data: bytes, work: WorkShape
) -> tuple[bytes, list[tuple[str, int, InvalidArgument]]]:
    """The request without the starts that break their shape (a valid message of the same
    type: its other fields re-encoded as they were), and those starts' ids with why. A
    request that is not valid protobuf at its top level raises InvalidArgument."""
    top = _Walk(data, SpecShape(max_tasks=work.max_starts, max_depth=0))
    kept = bytearray()
    refused: list[tuple[str, int, InvalidArgument]] = []
    starts = 0
    for number, wire_type, start, end in top.fields_of(0, len(data), ""):
        if wire_type != _LENGTH:
            continue  # no field of such a request is a number: an unknown one, dropped
        if number == work.start_field:
            starts += 1
            try:
                if starts > work.max_starts:
                    raise InvalidArgument(
                        "start", f"more than {work.max_starts} attempts in one request"
                    )
                entry = _Walk(data, work.shape)
                for inner, inner_type, value_start, value_end in entry.fields_of(start, end, ""):
                    if inner == work.spec_field and inner_type == _LENGTH:
                        entry.spec(value_start, value_end, "spec", depth=0)
            except InvalidArgument as error:
                task_id, attempt = _ids(data, start, end, work)
                refused.append(
                    (
                        task_id,
                        attempt,
                        InvalidArgument(error.field, error.problem, reason=work.shape.reason),
                    )
                )
                continue
        kept += _varint_bytes(number << 3 | _LENGTH) + _varint_bytes(end - start) + data[start:end]
    return bytes(kept), refused


def _ids(data: bytes, start: int, end: int, work: WorkShape) -> tuple[str, int]:
    """A refused start's task id and attempt, as far as its bytes tell (empty and 0 else)."""
    task_id, attempt = "", 0
    walk = _Walk(data, SpecShape(max_tasks=1, max_depth=0))
    try:
        for number, wire_type, value_start, value_end in walk.fields_of(start, end, ""):
            if number == work.id_field and wire_type == _LENGTH:
                task_id = data[value_start : min(value_end, value_start + 200)].decode(
                    "utf-8", "replace"
                )
            elif number == work.attempt_field and wire_type == _VARINT:
                attempt = walk._varint(value_start, value_end, "")[0] & 0x7FFFFFFF
    except InvalidArgument:
        pass  # what was read so far is all there is
    return task_id, attempt


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def work_checked(
    handler: grpc.RpcMethodHandler[Any, Any], work: WorkShape
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` (a stream of requests) with a deserializer that drops each start that
    breaks its shape before parsing, and hands the handler a CheckedWork."""
    parse: Callable[[bytes], Any] = handler.request_deserializer  # type: ignore[assignment]

    def deserialize(data: bytes) -> Any:
        try:
            kept, refused = split_work(data, work)
        except InvalidArgument as error:
            return RefusedRequest(
                InvalidArgument(error.field, error.problem, reason=work.shape.reason)
            )
        return CheckedWork(parse(kept), tuple(refused))

    return handler._replace(request_deserializer=deserialize)  # type: ignore[attr-defined,no-any-return]


def checked(
    handler: grpc.RpcMethodHandler[Any, Any],
    spec_field: int,
    shape: SpecShape,
    repeated: str = "",
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with a deserializer that checks the request's shape before parsing it."""
    parse: Callable[[bytes], Any] = handler.request_deserializer  # type: ignore[assignment]

    def deserialize(data: bytes) -> Any:
        try:
            check_request(data, spec_field, shape, repeated)
        except InvalidArgument as error:
            return RefusedRequest(InvalidArgument(error.field, error.problem, reason=shape.reason))
        return parse(data)

    return handler._replace(request_deserializer=deserialize)  # type: ignore[attr-defined,no-any-return]


class _Recorder:
    """Stands in for a server to receive the handlers a generated `add_*_to_server` makes."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers.update(handlers)


def add_checked(
    add_to_server: Callable[[Any, Any], None],
    servicer: object,
    server: grpc.aio.Server,
    service: str,
    checks: Mapping[str, tuple[int, SpecShape] | tuple[int, SpecShape, str] | WorkShape],
) -> None:
    """Register `servicer` under one generic handler, with each method named in `checks`
    (method name: the request's spec field number and its shape, and the field's name if
    it holds many specs; or a stream's WorkShape) checked first. No method is registered
    as such: see agentmesh.rpc.server."""
    recorder = _Recorder()
    add_to_server(servicer, recorder)
    handlers = {}
    for name, handler in recorder.handlers.items():
        check = checks.get(name)
        if isinstance(check, WorkShape):
            handlers[name] = work_checked(handler, check)
        elif check is not None:
            handlers[name] = checked(handler, *check)
        else:
            handlers[name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
