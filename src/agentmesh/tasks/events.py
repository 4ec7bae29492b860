"""The payloads of task events: what executors produce, nodes stream and the trace stores.

Each payload class has a `KIND`, the name of its field in `agentmesh.v1.TaskEvent`'s oneof
and the `kind` column of `task_events`; `asdict(payload)` is what the trace stores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from agentmesh.tasks.model import TaskState


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    duration_ms: int = 0
    tool_calls: int = 0
    model: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    KIND: ClassVar[str] = "status"
    state: TaskState
    message: str = ""


@dataclass(frozen=True, slots=True)
class Text:
    KIND: ClassVar[str] = "text"
    text: str
    role: str = "assistant"


@dataclass(frozen=True, slots=True)
class Stdout:
    KIND: ClassVar[str] = "stdout"
    text: str


@dataclass(frozen=True, slots=True)
class Stderr:
    KIND: ClassVar[str] = "stderr"
    text: str


@dataclass(frozen=True, slots=True)
class ToolUse:
    KIND: ClassVar[str] = "tool_use"
    tool_id: str
    tool_name: str
    parameters_json: str = "{}"


@dataclass(frozen=True, slots=True)
class ToolResult:
    KIND: ClassVar[str] = "tool_result"
    tool_id: str
    status: str
    output: str = ""
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    KIND: ClassVar[str] = "diagnostic"
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class Refusal:
    KIND: ClassVar[str] = "refusal"
    command: str
    rule: str
    mode: str
    detail: str
    # Whether its user may approve the command (see agentmesh.node.permissions.approvals).
    approvable: bool = False


class ApiErrorKind(StrEnum):
    QUOTA_EXHAUSTED = "quota_exhausted"
    INVALID_API_KEY = "invalid_api_key"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ApiError:
    KIND: ClassVar[str] = "api_error"
    kind: ApiErrorKind
    message: str
    retry_delay_seconds: float = 0.0
    quota_scope: str = ""  # "per_minute", "per_day" or ""
    quota_id: str = ""
    http_status: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    KIND: ClassVar[str] = "result"
    state: TaskState
    exit_code: int = 0
    usage: Usage = field(default_factory=Usage)
    output: str = ""
    error: str = ""


Payload = (
    Status
    | Text
    | Stdout
    | Stderr
    | ToolUse
    | ToolResult
    | Diagnostic
    | Refusal
    | ApiError
    | Result
)

PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.KIND: cls
    for cls in (
        Status, Text, Stdout, Stderr, ToolUse, ToolResult, Diagnostic, Refusal, ApiError, Result
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One numbered event of a task's execution."""

    task_id: str
    seq: int
    time: float  # seconds since the epoch
    attempt: int
    agent_id: str
    payload: Payload


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """A payload class's field names, in order (`dataclasses.fields` builds them again on
    each call, and every event of every task is converted field by field a few times)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def usage_values(usage: Usage) -> dict[str, Any]:
    """The counts by name (`dataclasses.asdict` deep-copies)."""
    return {name: getattr(usage, name) for name in field_names(Usage)}
