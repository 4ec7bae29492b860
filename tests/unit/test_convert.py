"""Conversion between the wire (protobuf) and agentmesh's objects: nothing lost either way."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.node.card import AgentCard
from agentmesh.rpc import convert
from agentmesh.tasks import events
from agentmesh.tasks.model import TaskSpec, TaskState
from agentmesh.v1 import task_pb2

FULL_SPEC = TaskSpec(
    kind="gemini",
    prompt="Summarize the inventory.",
    command="",
    user="ana",
    required_capabilities=("gpu", "os:linux"),
    target_host="desk",
    model="gemini-2.5-flash",
    priority=7,
    max_tokens=4096,
    timeout_seconds=90,
    idempotency_key="run-42",
    permission_mode="superuser",
    subtasks=(
        TaskSpec(kind="shell", command="uname -a", description="kernel"),
        TaskSpec(
            description="disks",
            subtasks=(TaskSpec(kind="shell", command="df -h", max_attempts=2),),
        ),
    ),
    description="inventory",
    max_attempts=5,
)

PAYLOADS: list[events.Payload] = [
    events.Status(TaskState.WORKING, "running on desk"),
    events.Text("Both hosts run Linux.", role="assistant"),
    events.Stdout("line 1\nline 2\n"),
    events.Stderr("warning: é ✓\n"),
    events.ToolUse("call-1", "run_shell_command", '{"command": "ls"}'),
    events.ToolResult("call-1", "error", "out", "policy_violation", "denied"),
    events.Diagnostic("warning", "slow disk"),
    events.Refusal("rm -rf /", "denylisted", "superuser", "`rm` is on the superuser denylist"),
    events.ApiError(
        events.ApiErrorKind.QUOTA_EXHAUSTED,
        "per-minute quota exhausted",
        retry_delay_seconds=26.5,
        quota_scope="per_minute",
        quota_id="GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        http_status=429,
    ),
    events.ApiError(events.ApiErrorKind.INVALID_API_KEY, "refused", http_status=400),
    events.Result(
        TaskState.COMPLETED,
        exit_code=0,
        usage=events.Usage(
            input_tokens=12,
            output_tokens=3,
            cached_tokens=1,
            total_tokens=2**40,
            duration_ms=840,
            tool_calls=2,
            model="gemini-2.5-flash",
        ),
        output="done",
    ),
    events.Result(TaskState.FAILED, exit_code=-9, error="killed"),
    # Empty and zero values, which proto3 does not send, come back as themselves.
    events.Stdout(""),
    events.ToolUse("", "", ""),
    events.Diagnostic("", ""),
    events.ApiError(events.ApiErrorKind.OTHER, ""),
    events.Result(TaskState.COMPLETED),
]


def test_a_spec_survives_the_wire_with_its_subtask_tree() -> None:
    assert convert.spec_from_proto(convert.spec_to_proto(FULL_SPEC)) == FULL_SPEC


def test_every_spec_field_reaches_the_wire() -> None:
    message = convert.spec_to_proto(FULL_SPEC)

    assert message.target_host == "desk"
    assert list(message.required_capabilities) == ["gpu", "os:linux"]
    assert message.max_attempts == 5
    assert message.subtasks[1].subtasks[0].command == "df -h"
    names = {f.name for f in dataclasses.fields(TaskSpec)}
    assert names == {f.name for f in task_pb2.TaskSpec.DESCRIPTOR.fields}


def test_an_empty_spec_survives_the_wire() -> None:
    assert convert.spec_from_proto(convert.spec_to_proto(TaskSpec())) == TaskSpec()


@pytest.mark.parametrize("state", list(TaskState))
def test_every_state_survives_the_wire(state: TaskState) -> None:
    value = convert.state_to_proto(state)

    assert task_pb2.TaskState.Name(value) == "TASK_STATE_" + state.value.upper()
    assert convert.state_from_proto(value) is state


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.KIND)
def test_every_payload_survives_the_trace(payload: events.Payload) -> None:
    stored = convert.payload_to_dict(payload)

    assert convert.payload_from_dict(payload.KIND, stored) == payload


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.KIND)
def test_every_event_survives_the_wire(payload: events.Payload) -> None:
    event = events.TaskEvent(
        task_id="t-1", seq=3, time=1_700_000_000.123456, attempt=2, agent_id="a-1", payload=payload
    )

    message = convert.event_to_proto(event)
    back = convert.event_from_proto(message)

    assert message.WhichOneof("payload") == payload.KIND
    assert back == event


def test_enums_travel_by_name() -> None:
    event = events.TaskEvent("t", 1, 1.0, 1, "a", PAYLOADS[8])

    message = convert.event_to_proto(event)

    assert message.api_error.kind == task_pb2.API_ERROR_KIND_QUOTA_EXHAUSTED
    status = convert.event_to_proto(events.TaskEvent("t", 1, 1.0, 1, "a", PAYLOADS[0]))
    assert status.status.state == task_pb2.TASK_STATE_WORKING


def test_the_trace_stores_enum_values_and_no_nul_characters() -> None:
    stored = convert.payload_to_dict(events.Stdout("a\x00b"))
    status = convert.payload_to_dict(events.Status(TaskState.CANCELED, "x"))

    assert stored == {"text": "a\ufffdb"}
    assert status == {"state": "canceled", "message": "x"}


def test_an_event_without_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="event 4 of task t-9 has no payload"):
        convert.event_from_proto(task_pb2.TaskEvent(task_id="t-9", seq=4))


def test_a_card_survives_the_wire() -> None:
    card = AgentCard(
        agent_id="a-1",
        name="desk",
        hostname="desk.lan",
        ip_addresses=("192.0.2.10", "2001:db8::1"),
        version="0.1.0",
        executors=("echo", "gemini", "shell"),
        models=("gemini-2.5-flash",),
        capabilities=("gpu", "os:linux"),
        os="linux",
        arch="x86_64",
        cpu_count=8,
        memory_bytes=64 << 30,
        max_concurrency=4,
        permission_mode="weak",
        endpoint="192.0.2.10:50051",
        started_at="2025-01-15T20:00:00Z",
        gemini_cli_version="0.61.0",
        running_tasks=2,
        draining=True,
        max_permission_mode="superuser",
        sandbox="bubblewrap (Landlock ABI 7; as nobody; 25 denylisted paths masked)",
    )

    assert convert.card_from_proto(convert.card_to_proto(card)) == card


def test_a_card_from_an_older_node_has_the_weak_ceiling() -> None:
    # A node from before `max_permission_mode` sends none: it runs weak tasks only.
    card = AgentCard(
        agent_id="a-3",
        name="old",
        hostname="old.lan",
        ip_addresses=(),
        version="0.0.9",
        executors=("shell",),
        models=(),
        capabilities=(),
        os="linux",
        arch="x86_64",
        cpu_count=1,
        memory_bytes=1,
        max_concurrency=1,
        permission_mode="weak",
        endpoint="old.lan:50051",
        started_at="2025-01-15T20:00:00Z",
        max_permission_mode="",
    )

    assert convert.card_from_proto(convert.card_to_proto(card)).max_permission_mode == "weak"


def test_an_empty_card_survives_the_wire() -> None:
    card = AgentCard(
        agent_id="a-2",
        name="",
        hostname="",
        ip_addresses=(),
        version="",
        executors=(),
        models=(),
        capabilities=(),
        os="",
        arch="",
        cpu_count=0,
        memory_bytes=0,
        max_concurrency=0,
        permission_mode="",
        endpoint="",
        started_at="1970-01-01T00:00:00Z",
    )

    assert convert.card_from_proto(convert.card_to_proto(card)) == card


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2026, 12, 5, 1, 2, 3),  # naive: UTC
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),  # before the epoch
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_datetimes_become_the_timestamps_protobuf_makes(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    stamp = Timestamp()
    convert.set_datetime(stamp, value)
    assert (stamp.seconds, stamp.nanos) == (expected.seconds, expected.nanos)
