"""What a task is: its spec, its states and the rules a valid spec follows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from agentmesh.errors import InvalidArgument

# A prompt travels as one argv element of the Gemini CLI, which Linux caps at 128 KiB.
MAX_PROMPT_BYTES = 120 << 10
# What the permission checker reads at most (node.permissions' MAX_COMMAND_LENGTH, in
# characters; a command within this many bytes is within that many characters).
MAX_COMMAND_BYTES = 16 << 10
MAX_ID_LENGTH = 128
MAX_CAPABILITIES = 64

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CAPABILITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,63}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TaskState(StrEnum):
    SUBMITTED = "submitted"
    WORKING = "working"
    INPUT_REQUIRED = "input_required"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.REJECTED}
)


class TaskKind(StrEnum):
    GEMINI = "gemini"
    SHELL = "shell"
    ECHO = "echo"


class AgentMode(StrEnum):
    """How a gemini task's CLI works: with its tools, or as an answer only."""

    # The Gemini CLI uses its tools; the policy of the permission mode checks each call.
    AGENTIC = "agentic"
    # An answer only: the policy denies every tool.
    PLAIN = "plain"


AGENT_MODES = ", ".join(mode.value for mode in AgentMode)
_AGENT_MODE_VALUES = frozenset(mode.value for mode in AgentMode)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What to run; mirrors `agentmesh.v1.TaskSpec`."""

    kind: str = ""
    prompt: str = ""
    command: str = ""
    user: str = ""
    required_capabilities: tuple[str, ...] = ()
    target_host: str = ""
    model: str = ""
    priority: int = 0
    max_tokens: int = 0
    timeout_seconds: int = 0
    idempotency_key: str = ""
    permission_mode: str = ""
    subtasks: tuple[TaskSpec, ...] = field(default=())
    description: str = ""
    max_attempts: int = 0
    agent_mode: str = ""
    remember_as: str = ""
    on_refusal: str = ""


_EMPTY_SPEC = TaskSpec()
_OWN_FIELDS = tuple(f.name for f in fields(TaskSpec) if f.name != "subtasks")


def spec_values(spec: TaskSpec) -> dict[str, Any]:
    """The spec's own fields (its subtasks left out), by name: what the store and the wire
    carry. Field by field: dataclasses.asdict deep-copies, and every task comes here."""
    return {name: getattr(spec, name) for name in _OWN_FIELDS}


# What a node does not act on: placement, queueing, retries, budgets and labels are the
# scheduler's. The scheduler leaves them out of what it sends a node (`for_node`), and a
# node refuses them rather than ignore them; each with what the node says.
SCHEDULER_ONLY_FIELDS: dict[str, str] = {
    "subtasks": "a node runs one task; a tree of subtasks is submitted to the scheduler",
    "user": "is the scheduler's (keys and quotas are per user); a node runs no user's tasks",
    "required_capabilities": "is for the scheduler's placement; a node does not check it",
    "target_host": "is for the scheduler's placement; a node does not check it",
    "priority": "orders the scheduler's queue; a node has none",
    "max_tokens": "is the scheduler's; a node's limit is ExecuteTaskRequest.token_budget",
    "idempotency_key": "is the scheduler's; a node does not deduplicate tasks",
    "description": "is a label in the scheduler's listings; a node does not keep it",
    "max_attempts": "is the scheduler's; a node runs the one attempt it is sent",
    "remember_as": "is the scheduler's (it keeps the output as knowledge); a node keeps none",
    "on_refusal": "is the scheduler's (it asks the user); a node reports the refusal",
}


_FOR_NODE = {name: getattr(_EMPTY_SPEC, name) for name in SCHEDULER_ONLY_FIELDS}


def for_node(spec: TaskSpec) -> TaskSpec:
    """The spec as a node gets it: without the fields that only the scheduler acts on."""
    return replace(spec, **_FOR_NODE)


def validate_task_id(value: str, field_name: str = "task_id") -> str:
    if not _ID.match(value):
        raise InvalidArgument(
            field_name,
            "must be 1-128 characters of letters, digits, '.', '_', ':' or '-',"
            " starting with a letter or digit",
        )
    return value


def validate_runnable(spec: TaskSpec, prefix: str = "spec") -> TaskKind:
    """Check a spec that a node is to run now (no subtasks); return its kind."""
    try:
        kind = TaskKind(spec.kind)
    except ValueError:
        shown = repr(spec.kind) if spec.kind else "empty"
        raise InvalidArgument(
            f"{prefix}.kind", f"must be one of gemini, shell, echo (got {shown})"
        ) from None
    if kind in (TaskKind.GEMINI, TaskKind.ECHO):
        _require_text(spec.prompt, f"{prefix}.prompt", MAX_PROMPT_BYTES, kind)
    if kind is TaskKind.SHELL:
        _require_text(spec.command, f"{prefix}.command", MAX_COMMAND_BYTES, kind)
        if "\x00" in spec.command:
            raise InvalidArgument(f"{prefix}.command", "must not contain NUL characters")
    validate_common(spec, prefix)
    return kind


def validate_common(spec: TaskSpec, prefix: str = "spec") -> None:
    """The checks every spec passes, runnable or a parent of subtasks."""
    if spec.permission_mode not in ("", "weak", "superuser"):
        raise InvalidArgument(
            f"{prefix}.permission_mode",
            f"must be weak, superuser or empty (got {spec.permission_mode!r})",
        )
    if spec.agent_mode:
        if spec.agent_mode not in _AGENT_MODE_VALUES:
            raise InvalidArgument(
                f"{prefix}.agent_mode",
                f"must be one of {AGENT_MODES}, or empty (got {spec.agent_mode[:80]!r})",
            )
        if spec.kind != TaskKind.GEMINI:
            shown = f"a {spec.kind} task" if spec.kind else "a task without a kind"
            raise InvalidArgument(
                f"{prefix}.agent_mode", f"applies to gemini tasks only (this is {shown})"
            )
    if spec.timeout_seconds < 0:
        raise InvalidArgument(f"{prefix}.timeout_seconds", "must not be negative")
    if spec.remember_as and (len(spec.remember_as) > 255 or not spec.remember_as.isprintable()):
        raise InvalidArgument(f"{prefix}.remember_as", "must be at most 255 printable characters")
    if spec.on_refusal not in ("", "reject", "ask"):
        raise InvalidArgument(
            f"{prefix}.on_refusal", f"must be reject, ask or empty (got {spec.on_refusal[:40]!r})"
        )
    if spec.remember_as and not spec.kind:
        raise InvalidArgument(
            f"{prefix}.remember_as", "needs a task that runs (a kind): its output is kept"
        )
    if spec.max_tokens < 0:
        raise InvalidArgument(f"{prefix}.max_tokens", "must not be negative")
    if spec.max_attempts < 0:
        raise InvalidArgument(f"{prefix}.max_attempts", "must not be negative")
    if spec.model and not _MODEL.match(spec.model):
        raise InvalidArgument(f"{prefix}.model", f"is not a model name (got {spec.model!r})")
    if len(spec.required_capabilities) > MAX_CAPABILITIES:
        raise InvalidArgument(
            f"{prefix}.required_capabilities", f"at most {MAX_CAPABILITIES} entries"
        )
    for index, capability in enumerate(spec.required_capabilities):
        if not CAPABILITY.match(capability):
            raise InvalidArgument(
                f"{prefix}.required_capabilities[{index}]",
                f"is not a capability name (got {capability[:80]!r}): use letters, digits"
                " and . _ : / + -",
            )
    if len(spec.target_host) > 255:
        raise InvalidArgument(f"{prefix}.target_host", "is longer than 255 characters")
    for name in ("user", "idempotency_key", "description"):
        if len(getattr(spec, name)) > 1024:
            raise InvalidArgument(f"{prefix}.{name}", "is longer than 1024 characters")


def _require_text(value: str, name: str, limit: int, kind: TaskKind) -> None:
    if not value.strip():
        raise InvalidArgument(name, f"must not be empty for a {kind} task")
    size = len(value.encode())
    if size > limit:
        raise InvalidArgument(name, f"is {size} bytes; the limit is {limit}")
