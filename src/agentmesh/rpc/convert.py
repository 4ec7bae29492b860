"""Conversions between the generated protobuf messages and agentmesh's plain objects.

Payload dataclasses use the proto field names, so conversion is generic: field by field,
with the two enums translated by prefix (events are the hot path: no `json_format` there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.node.card import AgentCard, held_keys_from
from agentmesh.tasks import events
from agentmesh.tasks.events import field_names, usage_values
from agentmesh.tasks.model import TaskSpec, TaskState, spec_values
from agentmesh.v1 import agent_pb2, task_pb2

_ENUM_PREFIXES = {"state": "TASK_STATE_", "kind": "API_ERROR_KIND_"}


def spec_from_proto(message: task_pb2.TaskSpec) -> TaskSpec:
    return TaskSpec(
        kind=message.kind,
        prompt=message.prompt,
        command=message.command,
        user=message.user,
        required_capabilities=tuple(message.required_capabilities),
        target_host=message.target_host,
        model=message.model,
        priority=message.priority,
        max_tokens=message.max_tokens,
        timeout_seconds=message.timeout_seconds,
        idempotency_key=message.idempotency_key,
        permission_mode=message.permission_mode,
        subtasks=tuple(spec_from_proto(child) for child in message.subtasks),
        description=message.description,
        max_attempts=message.max_attempts,
        agent_mode=message.agent_mode,
        remember_as=message.remember_as,
        on_refusal=message.on_refusal,
    )


def spec_to_proto(spec: TaskSpec) -> task_pb2.TaskSpec:
    message = task_pb2.TaskSpec(**spec_values(spec))
    message.subtasks.extend(spec_to_proto(child) for child in spec.subtasks)
    return message


def state_to_proto(state: TaskState) -> task_pb2.TaskState.ValueType:
    return task_pb2.TaskState.Value("TASK_STATE_" + state.value.upper())


def state_from_proto(value: int) -> TaskState:
    name = task_pb2.TaskState.Name(value)  # type: ignore[arg-type]
    return TaskState(name.removeprefix("TASK_STATE_").lower())


def payload_to_dict(payload: events.Payload) -> dict[str, Any]:
    """The payload as the trace stores it (plain JSON values, enum values lower-case).

    NUL characters become U+FFFD: PostgreSQL's jsonb cannot hold them."""
    values: dict[str, Any] = {}
    # Field by field (dataclasses.asdict deep-copies): every event a task writes comes here.
    for name in field_names(type(payload)):
        value = getattr(payload, name)
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
        elif isinstance(value, events.Usage):
            value = usage_values(value)
        values[name] = value
    return values


def payload_from_dict(kind: str, values: dict[str, Any]) -> events.Payload:
    cls = events.PAYLOAD_TYPES[kind]
    values = dict(values)
    if "state" in values:
        values["state"] = TaskState(values["state"])
    if cls is events.ApiError:
        values["kind"] = events.ApiErrorKind(values["kind"])
    if cls is events.Result:
        values["usage"] = events.Usage(**values.get("usage", {}))
    return cls(**values)


def event_to_proto(event: events.TaskEvent) -> task_pb2.TaskEvent:
    message = task_pb2.TaskEvent(
        task_id=event.task_id, seq=event.seq, attempt=event.attempt, agent_id=event.agent_id
    )
    _set_time(message.time, event.time)
    payload = event.payload
    _set_payload(
        getattr(message, payload.KIND),
        ((name, getattr(payload, name)) for name in field_names(type(payload))),
    )
    return message


class StoredEvent(Protocol):
    """A row of `task_events` (task_id, seq, attempt, agent_id, kind, payload, created_at),
    its payload as `payload_to_dict` stored it."""

    def __getitem__(self, column: str) -> Any: ...


def stored_event_to_proto(
    row: StoredEvent, message: task_pb2.TaskEvent | None = None
) -> task_pb2.TaskEvent:
    """A stored event as a message (or written into `message`, a batch's new element), the
    same as `event_to_proto` of the event read back, without building its payload object:
    this is how a trace is replayed."""
    if message is None:
        message = task_pb2.TaskEvent()
    message.task_id = row["task_id"]
    message.seq = row["seq"]
    message.attempt = row["attempt"]
    message.agent_id = row["agent_id"] or ""
    _set_time(message.time, row["created_at"].timestamp())
    _set_payload(getattr(message, row["kind"]), row["payload"].items())
    return message


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_datetime(timestamp: Timestamp, value: datetime) -> None:
    """Timestamp.FromDatetime(value) (a naive value is UTC), in integer arithmetic and
    without its checks: every task the scheduler answers with carries a few."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    timestamp.seconds = since.days * 86_400 + since.seconds
    timestamp.nanos = since.microseconds * 1000


def _set_time(timestamp: Timestamp, seconds: float) -> None:
    """Timestamp.FromMicroseconds(int(seconds * 1e6)), without its checks' cost per event."""
    micros = int(seconds * 1e6)
    timestamp.seconds = micros // 1_000_000
    timestamp.nanos = micros % 1_000_000 * 1000


def _set_payload(target: Any, values: Iterable[tuple[str, Any]]) -> None:
    """Set a payload message field by field from a payload's values, as objects or as
    stored (enum values lower-case, the usage a dict): not through json_format, nor a message
    built and merged in (merging copies every string again and checks its UTF-8, which cost
    more than all the rest of streaming a shell's output)."""
    target.SetInParent()  # a payload of default values still names its kind
    for name, value in values:
        if name == "usage":
            counts = value if isinstance(value, dict) else usage_values(value)
            target.usage.SetInParent()
            for count, number in counts.items():
                setattr(target.usage, count, number)
        elif (prefix := _ENUM_PREFIXES.get(name)) is not None:
            setattr(target, name, prefix + str(value).upper())
        else:
            setattr(target, name, value)


def event_from_proto(message: task_pb2.TaskEvent) -> events.TaskEvent:
    return events.TaskEvent(
        task_id=message.task_id,
        seq=message.seq,
        time=message.time.ToMicroseconds() / 1e6,
        attempt=message.attempt,
        agent_id=message.agent_id,
        payload=payload_from_proto(message),
    )


def payload_from_proto(message: task_pb2.TaskEvent) -> events.Payload:
    """The event's payload alone: what the scheduler acts on and stores for each event a
    node streams (the rest of the event is the attempt's, which it knows)."""
    kind = message.WhichOneof("payload")
    if kind is None:
        raise ValueError(f"event {message.seq} of task {message.task_id} has no payload")
    source = getattr(message, kind)
    # Read field by field (not through json_format): this is the scheduler's hot path.
    values: dict[str, Any] = {}
    for name in field_names(events.PAYLOAD_TYPES[kind]):
        value = getattr(source, name)
        if name in _ENUM_PREFIXES:
            enum = source.DESCRIPTOR.fields_by_name[name].enum_type.values_by_number
            label = enum[value].name if value in enum else str(value)
            value = label.removeprefix(_ENUM_PREFIXES[name]).lower()
        elif name == "usage":
            value = {f.name: getattr(value, f.name) for f in value.DESCRIPTOR.fields}
        values[name] = value
    return payload_from_dict(kind, values)


def card_to_proto(card: AgentCard) -> agent_pb2.AgentCard:
    values = dataclasses.asdict(card)
    started_at = Timestamp()
    started_at.FromJsonString(values.pop("started_at"))
    return agent_pb2.AgentCard(**values, started_at=started_at)


def card_from_proto(message: agent_pb2.AgentCard) -> AgentCard:
    values = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for name in ("ip_addresses", "executors", "models", "capabilities"):
        values[name] = tuple(values.get(name, ()))
    values["memory_bytes"] = int(values.get("memory_bytes", 0))
    values.setdefault("started_at", "")
    values["held_keys"] = held_keys_from(values.get("held_keys"))
    # An older node sends none: it runs what weak mode allows at most.
    values["max_permission_mode"] = values.get("max_permission_mode") or "weak"
    return AgentCard(**values)
