"""A node's refusals carry reasons: the scheduler tells "not started" from "lost"."""

from __future__ import annotations

import grpc

from agentmesh.config import NodeSettings
from agentmesh.node.service import AgentNode
from agentmesh.v1 import node_pb2, node_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import HEARTBEAT, Mesh

# One heartbeat keeps an agent online for the whole test, and no later heartbeat hides how
# the scheduler marked it after a refusal.
SLOW_HEARTBEATS = {"heartbeat_interval_seconds": 60}


async def status_message(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str, containing: str
) -> str:
    """The first status message of the task's trace that contains `containing`."""
    seen = []
    call = stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=60)
    try:
        async for event in call:
            if event.WhichOneof("payload") == "result":
                break
            if event.WhichOneof("payload") == "status":
                seen.append(event.status.message)
                if containing in event.status.message:
                    return event.status.message
    finally:
        call.cancel()
    raise AssertionError(f"no status message with {containing!r} before the end: {seen}")


async def agent_status(stub: scheduler_pb2_grpc.SchedulerAsyncStub, name: str) -> str:
    reply = await stub.ListAgents(scheduler_pb2.ListAgentsRequest(include_offline=True))
    return next(a.status for a in reply.agents if a.card.name == name)


async def get(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> task_pb2.Task:
    return await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))


async def wait_end(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> task_pb2.Task:
    async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=60):
        pass
    return await get(stub, task_id)


async def test_a_draining_node_s_refusal_uses_no_attempt_and_does_not_mark_it_offline(
    mesh: Mesh,
) -> None:
    mesh.configure(scheduler=SLOW_HEARTBEATS)
    stub = await mesh.start_scheduler()
    leaving = await mesh.start_node("leaving")
    leaving.runner.drain()  # shutting down, and the scheduler has not heard yet
    spec = task_pb2.TaskSpec(kind="echo", prompt="hello", max_attempts=1)
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    refusal = await status_message(stub, task.id, "not started")

    assert "shutting down" in refusal
    assert await agent_status(stub, "leaving") == "draining"
    assert (await get(stub, task.id)).state == task_pb2.TASK_STATE_SUBMITTED
    staying = await mesh.start_node("staying")
    final = await wait_end(stub, task.id)
    assert final.state == task_pb2.TASK_STATE_COMPLETED, final.error
    assert final.assigned_agent == staying.card().agent_id


async def test_a_node_still_streaming_the_task_refuses_it_without_using_an_attempt(
    mesh: Mesh,
) -> None:
    mesh.configure(scheduler=SLOW_HEARTBEATS)
    stub = await mesh.start_scheduler()
    spec = task_pb2.TaskSpec(kind="echo", prompt="hello", target_host="holder", max_attempts=1)
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    workdir = mesh.tmp_path / "holder"
    workdir.mkdir()
    holder = await AgentNode.start(
        mesh.settings,
        NodeSettings.model_validate(
            {
                "listen": "127.0.0.1:0",
                "name": "holder",
                "workdir": str(workdir),
                "max_permission_mode": "superuser",
            }
        ),
    )
    mesh.nodes.append(holder)
    async with grpc.aio.insecure_channel(holder.address) as channel:
        # A stale stream: the node still runs the task for an attempt nobody reads any more.
        stale = node_pb2_grpc.AgentNodeStub(channel).ExecuteTask(
            node_pb2.ExecuteTaskRequest(
                task_id=task.id,
                attempt=1,
                spec=task_pb2.TaskSpec(
                    kind="shell",
                    command="while [ ! -e release ]; do sleep 0.05; done",
                    permission_mode="superuser",
                ),
            )
        )
        await stale.read()
        holder.register_with(mesh.schedulers[0].address, mesh.settings, HEARTBEAT)

        refusal = await status_message(stub, task.id, "not started")

        assert "already running" in refusal
        assert await agent_status(stub, "holder") == "online"
        assert (await get(stub, task.id)).state == task_pb2.TASK_STATE_SUBMITTED
        (workdir / "release").touch()
        while await stale.read() is not grpc.aio.EOF:
            pass
    final = await wait_end(stub, task.id)
    assert final.state == task_pb2.TASK_STATE_COMPLETED, final.error
    assert final.assigned_agent == holder.card().agent_id
    assert final.output == "hello"
