"""Limits that keep the mesh alive, against real `agentmesh scheduler` and `agentmesh node`
processes: a flood of output, a command too complex to check, a submission as large as a
message may be. Each ends with a clear reason while both services' health keeps answering
within a second, and what the scheduler stores stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.rpc.server import MAX_MESSAGE_BYTES
from agentmesh.v1 import node_pb2, node_pb2_grpc, scheduler_pb2, task_pb2
from tests.scheduler.conftest import run_to_end
from tests.support.health import watching_health
from tests.support.processes import MeshProcess, ProcessHarness

pytestmark = pytest.mark.slow

FAILED = task_pb2.TASK_STATE_FAILED
REJECTED = task_pb2.TASK_STATE_REJECTED
COMPLETED = task_pb2.TASK_STATE_COMPLETED
HEARTBEAT_SECONDS = 0.3
OUTPUT_CAP = 1 << 20
# A command within the wire's 16 KiB that the permission checker needs well over a second
# for (opaque wrappers are checked with the program at every position of their arguments).
CRAFTED = "strace watch " + "a " * 8000
GIGABYTE = "head -c 1G /dev/zero"

Mesh = tuple[ProcessHarness, MeshProcess, MeshProcess]
StartMesh = Callable[..., Awaitable[Mesh]]


@pytest.fixture
async def start_mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[StartMesh]:
    """A scheduler process and one node process, with these node and scheduler settings."""
    harnesses: list[ProcessHarness] = []

    async def start(
        node: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None
    ) -> Mesh:
        workdir = tmp_path / "work"
        workdir.mkdir()
        config = {
            "node": {"heartbeat_interval_seconds": HEARTBEAT_SECONDS, "workdir": str(workdir)}
            | (node or {}),
            "scheduler": {"heartbeat_interval_seconds": HEARTBEAT_SECONDS} | (scheduler or {}),
        }
        harness = ProcessHarness(tmp_path, database_uri, config)
        harnesses.append(harness)
        scheduler_process = await harness.start_scheduler()
        node_process = await harness.start_node("limits", scheduler=scheduler_process.address)
        await harness.wait_registered(harness.stub(scheduler_process), [node_process])
        return harness, scheduler_process, node_process

    yield start
    for harness in harnesses:
        print(harness.describe())  # pytest shows it when the test fails
        await harness.close()


async def stored_trace(database_uri: str, task_id: str) -> tuple[int, int, list[str]]:
    """How many events the scheduler stored for the task, the characters of output among
    them, and the messages of its diagnostics."""
    conn = await asyncpg.connect(database_uri)
    try:
        rows = await conn.fetch(
            "SELECT kind, payload->>'text' AS text, payload->>'message' AS message"
            " FROM task_events WHERE task_id = $1 ORDER BY seq",
            task_id,
        )
    finally:
        await conn.close()
    output = sum(len(row["text"]) for row in rows if row["kind"] in ("stdout", "stderr"))
    diagnostics = [row["message"] for row in rows if row["kind"] == "diagnostic"]
    return len(rows), output, diagnostics


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                request = error_details_pb2.BadRequest()
                if detail.Unpack(request):
                    return request.field_violations[0].field
    return ""


async def test_a_gigabyte_of_output_is_cut_at_the_nodes_cap_and_the_task_fails_saying_so(
    start_mesh: StartMesh, database_uri: str
) -> None:
    harness, scheduler, node = await start_mesh(node={"max_output_bytes": OUTPUT_CAP})
    stub = harness.stub(scheduler)

    async with watching_health(scheduler.address, node.address) as watches:
        task, events = await run_to_end(
            stub, kind="shell", command=GIGABYTE, permission_mode="superuser"
        )

    for watch in watches:
        watch.assert_answered_within_a_second()
    reason = (
        f"output passed the node's limit of {OUTPUT_CAP} bytes (node.max_output_bytes): the"
        " rest was discarded and the task was stopped"
    )
    assert (task.state, task.error) == (FAILED, reason)
    count, output, diagnostics = await stored_trace(database_uri, task.id)
    assert output == OUTPUT_CAP  # exactly the cap, not a byte more
    assert diagnostics == [reason]
    assert count == len(events)
    assert events[-1].result.error == reason


async def test_the_scheduler_stores_no_more_than_its_trace_limit_from_one_attempt(
    start_mesh: StartMesh, database_uri: str
) -> None:
    # A node that lets far more through than the scheduler stores (as an old node would).
    trace_limit = 64 << 10
    harness, scheduler, node = await start_mesh(
        node={"max_output_bytes": 8 << 20}, scheduler={"max_trace_chars": trace_limit}
    )
    stub = harness.stub(scheduler)

    async with watching_health(scheduler.address, node.address) as watches:
        task, _ = await run_to_end(
            stub, kind="shell", command=GIGABYTE, permission_mode="superuser"
        )

    for watch in watches:
        watch.assert_answered_within_a_second()
    reason = (
        f"the task's events passed the scheduler's limit of {trace_limit} characters in one"
        " attempt (scheduler.max_trace_chars): the rest was not stored and the task was stopped"
    )
    assert (task.state, task.error) == (FAILED, reason)
    count, output, diagnostics = await stored_trace(database_uri, task.id)
    assert output <= trace_limit
    assert diagnostics == [reason]
    assert count <= trace_limit // 256 + 10


async def test_a_command_too_complex_to_check_in_time_is_refused_while_the_node_answers(
    start_mesh: StartMesh,
) -> None:
    harness, scheduler, node = await start_mesh(node={"command_check_seconds": 0.2})
    stub = harness.stub(scheduler)

    async with watching_health(scheduler.address, node.address) as watches:
        # More at once than the node has checker workers.
        ended = await asyncio.gather(
            *(
                run_to_end(stub, kind="shell", command=CRAFTED, permission_mode="superuser")
                for _ in range(3)
            )
        )
        # The node still checks and runs an ordinary command.
        echoed, _ = await run_to_end(stub, kind="shell", command="echo still here")

    for watch in watches:
        watch.assert_answered_within_a_second()
    for task, events in ended:
        assert task.state == REJECTED
        assert task.error == (
            "refused in superuser mode: the command is too long or complex to check within"
            " 0.2 seconds (node.command_check_seconds)"
        )
        refusals = [e.refusal for e in events if e.WhichOneof("payload") == "refusal"]
        assert [r.rule for r in refusals] == ["too-complex"]
    assert (echoed.state, echoed.output) == (COMPLETED, "still here\n")


async def test_a_hundred_thousand_character_command_is_refused_on_the_wire(
    start_mesh: StartMesh,
) -> None:
    harness, scheduler, node = await start_mesh()
    stub = harness.stub(scheduler)
    command = "echo " + "a " * 49_998  # 100,001 characters
    spec = task_pb2.TaskSpec(kind="shell", command=command, permission_mode="superuser")

    async with watching_health(scheduler.address, node.address) as watches:
        with pytest.raises(grpc.aio.AioRpcError) as submitted:
            await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        async with grpc.aio.insecure_channel(node.address) as channel:
            call = node_pb2_grpc.AgentNodeStub(channel).ExecuteTask(
                node_pb2.ExecuteTaskRequest(task_id="t-long", attempt=1, spec=spec)
            )
            with pytest.raises(grpc.aio.AioRpcError) as executed:
                await call.read()

    for watch in watches:
        watch.assert_answered_within_a_second()
    for refused in (submitted.value, executed.value):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == "spec.command: is 100001 bytes; the limit is 16384"
        assert bad_request_field(refused) == "spec.command"


async def test_a_submission_of_as_many_empty_subtasks_as_a_message_holds_is_refused_at_once(
    start_mesh: StartMesh,
) -> None:
    harness, scheduler, _ = await start_mesh()
    stub = harness.stub(scheduler)
    # SubmitTaskRequest{spec: TaskSpec{kind: "echo", prompt: "x", subtasks: [{}, {}, ...]}},
    # written by hand: building four million messages would take the test itself seconds.
    root = b"\x0a\x04echo\x12\x01x"
    empty_subtask = b"\x6a\x00"  # field 13, length 0
    room = MAX_MESSAGE_BYTES - 64
    spec = root + empty_subtask * ((room - len(root)) // len(empty_subtask))
    request = b"\x0a" + _varint(len(spec)) + spec
    assert MAX_MESSAGE_BYTES - 64 <= len(request) <= MAX_MESSAGE_BYTES
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        submit = channel.unary_unary(
            "/agentmesh.v1.Scheduler/SubmitTask",
            request_serializer=None,
            response_deserializer=task_pb2.Task.FromString,
        )
        async with watching_health(scheduler.address) as watches:
            refusals = await asyncio.gather(
                *(_refusal_of(submit(request, timeout=30)) for _ in range(3))
            )

    watches[0].assert_answered_within_a_second()
    for refused in refusals:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == (
            "spec.subtasks: more than 1000 tasks in one request; the limit is 1000"
        )
        assert bad_request_field(refused) == "spec.subtasks"
    listed = await stub.ListTasks(scheduler_pb2.ListTasksRequest())
    assert list(listed.tasks) == []  # nothing was stored
    task, _ = await run_to_end(stub, kind="echo", prompt="still here")
    assert task.state == COMPLETED


async def test_subtasks_nested_past_the_limit_are_refused_naming_the_deepest_field(
    start_mesh: StartMesh,
) -> None:
    harness, scheduler, _ = await start_mesh(scheduler={"max_subtask_depth": 2})
    stub = harness.stub(scheduler)
    spec = task_pb2.TaskSpec(kind="echo", prompt="leaf")
    for _ in range(3):
        spec = task_pb2.TaskSpec(subtasks=[task_pb2.TaskSpec(kind="echo", prompt="x"), spec])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "spec.subtasks[1].subtasks[1].subtasks: subtasks are nested deeper than the limit of 2"
    )


async def _refusal_of(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the submission was accepted")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)
