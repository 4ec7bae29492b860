"""What the command line shows of tasks, agents and hosts: their JSON documents (the stable,
documented fields of `--json`) and the short words and numbers of its tables."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.tasks.events import TaskEvent
from agentmesh.v1 import scheduler_pb2, task_pb2

STATE_STYLES = {
    "submitted": "yellow",
    "working": "cyan",
    "input_required": "magenta",
    "completed": "green",
    "failed": "red",
    "canceled": "dim",
    "rejected": "red",
}
TERMINAL_STATES = frozenset({"completed", "failed", "canceled", "rejected"})


def state_name(state: int) -> str:
    """`TASK_STATE_COMPLETED` -> `completed`."""
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


def state_value(name: str) -> task_pb2.TaskState.ValueType:
    return task_pb2.TaskState.Value("TASK_STATE_" + name.upper())


def _iso(stamp: Timestamp, present: bool) -> str | None:
    return stamp.ToDatetime(tzinfo=UTC).isoformat() if present else None


def seconds(task: task_pb2.Task) -> float | None:
    """How long the task ran (until now while it runs), from its first start."""
    if not task.HasField("started_at"):
        return None
    end = task.finished_at.ToMicroseconds() if task.HasField("finished_at") else time.time() * 1e6
    return max(end - task.started_at.ToMicroseconds(), 0) / 1e6


def duration_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def ago(stamp: Timestamp, present: bool = True) -> str:
    """`12s ago`, `3m ago`, ... for a past time."""
    if not present:
        return "-"
    delta = max(time.time() - stamp.ToMicroseconds() / 1e6, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def title(spec: task_pb2.TaskSpec, width: int = 48) -> str:
    """A task in a few words: its description, else its command or prompt."""
    # A stored parent's spec has no subtasks (they are tasks of their own): it may be empty.
    text = spec.description or spec.command or spec.prompt or "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def first_line(text: str, width: int = 60) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0] if len(lines[0]) <= width else lines[0][: width - 1] + "…"
    return first if len(lines) == 1 else f"{first} (+{len(lines) - 1} lines)"


def task_json(task: task_pb2.Task) -> dict[str, Any]:
    """A task as `--json` prints it. Fields: see the README's "The command line"."""
    return {
        "id": task.id,
        "state": state_name(task.state),
        "kind": task.spec.kind,
        "description": task.spec.description,
        "user": task.spec.user,
        "parent_id": task.parent_id,
        "child_ids": list(task.child_ids),
        "replay_of": task.replay_of,
        "agent_id": task.assigned_agent,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "waiting_reason": task.waiting_reason,
        "exit_code": task.exit_code,
        "output": task.output,
        "error": task.error,
        "usage": json_format.MessageToDict(
            task.usage,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        | {name: int(getattr(task.usage, name)) for name in _USAGE_INTS},
        "created_at": _iso(task.created_at, task.HasField("created_at")),
        "started_at": _iso(task.started_at, task.HasField("started_at")),
        "finished_at": _iso(task.finished_at, task.HasField("finished_at")),
        "duration_seconds": seconds(task),
        "spec": json_format.MessageToDict(task.spec, preserving_proto_field_name=True),
    }


# int64 fields, which the protobuf JSON mapping writes as strings.
_USAGE_INTS = ("input_tokens", "output_tokens", "cached_tokens", "total_tokens", "duration_ms")


def agent_json(agent: scheduler_pb2.AgentStatus) -> dict[str, Any]:
    """An agent as `agents --json` prints it."""
    card = agent.card
    return {
        "agent_id": card.agent_id,
        "name": card.name,
        "hostname": card.hostname,
        "endpoint": card.endpoint,
        "ip_addresses": list(card.ip_addresses),
        "status": agent.status,
        "executors": list(card.executors),
        "capabilities": list(card.capabilities),
        "running_tasks": card.running_tasks,
        "max_concurrency": card.max_concurrency,
        "max_permission_mode": card.max_permission_mode or "weak",
        "sandbox": card.sandbox,
        "version": card.version,
        "last_heartbeat": _iso(agent.last_heartbeat, agent.HasField("last_heartbeat")),
    }


def host_json(host: scheduler_pb2.Host) -> dict[str, Any]:
    """A `home_network` row as `network --json` prints it."""
    return {
        "host_name": host.host_name,
        "ip_address": host.ip_address,
        "service": host.service,
        "tags": list(host.tags),
        "notes": host.notes,
        "last_seen": _iso(host.last_seen, host.HasField("last_seen")),
    }


def event_json(event: TaskEvent) -> dict[str, Any]:
    """An event as `run --json` and `watch --json` print it, one a line."""
    return {
        "task_id": event.task_id,
        "seq": event.seq,
        "time": datetime.fromtimestamp(event.time, UTC).isoformat(),
        "attempt": event.attempt,
        "agent_id": event.agent_id,
        "type": event.payload.KIND,
        # Enums are StrEnums: JSON writes their values (`completed`, `quota_exhausted`).
        "payload": dataclasses.asdict(event.payload),
    }
