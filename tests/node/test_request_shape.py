"""A node ignores nothing silently: what only the scheduler acts on is INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.errors import Reason
from agentmesh.rpc.errors import reason_of
from agentmesh.tasks.model import SCHEDULER_ONLY_FIELDS
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import collect

# One value of each scheduler-only field, as a submitter would set it.
SCHEDULER_ONLY_VALUES: dict[str, object] = {
    "subtasks": [task_pb2.TaskSpec()],
    "user": "ana",
    "required_capabilities": ["gpu"],
    "target_host": "desk",
    "priority": 5,
    "max_tokens": 1000,
    "idempotency_key": "once",
    "description": "a label",
    "max_attempts": 2,
    "remember_as": "a label",
    "on_refusal": "ask",
}


def test_every_scheduler_only_field_has_a_case() -> None:
    assert set(SCHEDULER_ONLY_VALUES) == set(SCHEDULER_ONLY_FIELDS)


def violation(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                request = error_details_pb2.BadRequest()
                if detail.Unpack(request):
                    field = request.field_violations[0]
                    return field.field, field.description
    return "", ""


async def test_each_scheduler_only_field_sent_to_a_node_is_invalid_argument(
    start_node: StartNode,
) -> None:
    _, stub = await start_node()
    answers = {}
    for name, value in SCHEDULER_ONLY_VALUES.items():
        spec = task_pb2.TaskSpec(kind="echo", prompt="hi", **{name: value})  # type: ignore[arg-type]
        request = node_pb2.ExecuteTaskRequest(task_id="t-1", spec=spec)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(stub.ExecuteTask(request))
        # A scheduler that sent one fails the task at once (BAD_SPEC), not retry it elsewhere.
        answers[name] = (refused.value.code(), violation(refused.value), reason_of(refused.value))

    assert answers == {
        name: (
            grpc.StatusCode.INVALID_ARGUMENT,
            (f"spec.{name}", SCHEDULER_ONLY_FIELDS[name]),
            Reason.BAD_SPEC,
        )
        for name in SCHEDULER_ONLY_FIELDS
    }
    assert (await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())).running_tasks == 0


async def test_subtasks_sent_to_a_node_are_refused_before_anything_runs(
    start_node: StartNode,
) -> None:
    _, stub = await start_node()
    spec = task_pb2.TaskSpec(
        kind="shell",
        command="echo parent",
        subtasks=[task_pb2.TaskSpec(kind="shell", command="echo child")],
    )

    call = stub.ExecuteTask(node_pb2.ExecuteTaskRequest(task_id="t-2", attempt=1, spec=spec))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()  # not a single event: nothing ran

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "spec.subtasks: a node runs one task; a tree of subtasks is submitted to the scheduler"
    )


async def test_what_a_node_acts_on_still_runs(start_node: StartNode) -> None:
    _, stub = await start_node()
    spec = task_pb2.TaskSpec(
        kind="shell", command="echo ok", permission_mode="weak", timeout_seconds=30
    )

    events = await collect(stub.ExecuteTask(node_pb2.ExecuteTaskRequest(task_id="t-3", spec=spec)))

    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert events[-1].result.output == "ok\n"
