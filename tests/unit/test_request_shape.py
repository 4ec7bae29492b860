"""The wire check of a request's TaskSpec tree, on bytes, without parsing them."""

from __future__ import annotations

import pytest

from agentmesh.errors import InvalidArgument
from agentmesh.rpc.request_shape import SpecShape, check_request
from agentmesh.tasks.model import MAX_CAPABILITIES, SCHEDULER_ONLY_FIELDS
from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2

SUBMISSION = SpecShape(max_tasks=1000, max_depth=4)
NODE = SpecShape(max_tasks=1, max_depth=0, refused_fields=SCHEDULER_ONLY_FIELDS)
SPEC_FIELD = 1  # SubmitTaskRequest.spec


def submission(spec: task_pb2.TaskSpec) -> bytes:
    return scheduler_pb2.SubmitTaskRequest(spec=spec, replay_of="t-0").SerializeToString()


def refusal(data: bytes, shape: SpecShape = SUBMISSION, spec_field: int = SPEC_FIELD) -> str:
    with pytest.raises(InvalidArgument) as refused:
        check_request(data, spec_field, shape)
    return str(refused.value)


def leaf(text: str = "x") -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(kind="echo", prompt=text)


def test_a_tree_within_the_limits_passes() -> None:
    spec = task_pb2.TaskSpec(
        kind="echo",
        prompt="p" * 100_000,
        required_capabilities=["gpu"] * 64,
        subtasks=[leaf() for _ in range(997)] + [task_pb2.TaskSpec(subtasks=[leaf()])],  # 1000
    )

    check_request(submission(spec), SPEC_FIELD, SUBMISSION)


def test_one_task_more_than_the_limit_is_refused() -> None:
    spec = task_pb2.TaskSpec(subtasks=[leaf() for _ in range(1000)])  # 1001 with the root

    assert refusal(submission(spec)) == (
        "spec.subtasks: more than 1000 tasks in one request; the limit is 1000"
    )


def test_nesting_one_level_past_the_limit_names_the_path() -> None:
    spec = leaf()
    for _ in range(4):
        spec = task_pb2.TaskSpec(subtasks=[leaf(), spec])
    check_request(submission(spec), SPEC_FIELD, SUBMISSION)  # 4 levels: the limit

    deeper = task_pb2.TaskSpec(subtasks=[spec])
    assert refusal(submission(deeper)) == (
        "spec.subtasks[0].subtasks[1].subtasks[1].subtasks[1].subtasks:"
        " subtasks are nested deeper than the limit of 4"
    )


def test_millions_of_repeated_fields_are_refused_by_the_field_budget() -> None:
    spec = task_pb2.TaskSpec(kind="echo", prompt="x", required_capabilities=[""] * 100_000)

    # Each task may carry every TaskSpec field once and MAX_CAPABILITIES capabilities.
    per_task = len(task_pb2.TaskSpec.DESCRIPTOR.fields) + MAX_CAPABILITIES
    assert refusal(submission(spec)) == (
        f"spec: has more than {1000 * per_task} fields in all (the most a request of 1000"
        " tasks can need)"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05\x0a\x04ech",  # a length past the end
        b"\x0a\x02\x08\xff",  # a varint that never ends
        b"\x0a\x01\x0b",  # a group (wire type 3)
    ],
)
def test_bytes_that_are_no_message_are_refused(data: bytes) -> None:
    assert "is not a valid protobuf message" in refusal(data)


@pytest.mark.parametrize("name", sorted(SCHEDULER_ONLY_FIELDS))
def test_a_node_refuses_each_scheduler_only_field(name: str) -> None:
    values: dict[str, object] = {
        "subtasks": [leaf()],
        "required_capabilities": ["gpu"],
        "user": "ana",
        "target_host": "desk",
        "idempotency_key": "k",
        "description": "d",
        "remember_as": "label",
        "on_refusal": "ask",
    }
    spec = task_pb2.TaskSpec(kind="echo", prompt="x", **{name: values.get(name, 3)})  # type: ignore[arg-type]
    request = node_pb2.ExecuteTaskRequest(task_id="t-1", spec=spec).SerializeToString()

    assert refusal(request, NODE, spec_field=3) == f"spec.{name}: {SCHEDULER_ONLY_FIELDS[name]}"


def test_a_node_takes_what_it_acts_on() -> None:
    spec = task_pb2.TaskSpec(
        kind="gemini",
        prompt="hi",
        model="gemini-2.5-flash",
        timeout_seconds=5,
        permission_mode="weak",
        agent_mode="plain",
    )
    request = node_pb2.ExecuteTaskRequest(task_id="t-1", attempt=2, spec=spec, token_budget=9)

    check_request(request.SerializeToString(), 3, NODE)
