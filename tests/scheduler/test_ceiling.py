"""A node's ceiling on permission modes (`node.max_permission_mode`, default weak).

A task asking for a mode above every fitting registered node's ceiling is rejected by the
scheduler before anything runs; the node refuses it too when called directly; a task whose
ceiling-capable node is only offline waits for it. The judge is a canary file that a
superuser task overwrites.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentmesh.errors import Reason
from agentmesh.rpc.errors import reason_of
from agentmesh.v1 import node_pb2, node_pb2_grpc, scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh
from tests.scheduler.test_waiting import run_to_end, waiting_reason
from tests.support.databases import Server

REJECTED = task_pb2.TASK_STATE_REJECTED
COMPLETED = task_pb2.TASK_STATE_COMPLETED


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    return embedded_server


def canary(workdir: Path) -> Path:
    """A canary in a node's working directory (its tasks see nothing else they may write)."""
    workdir.mkdir(exist_ok=True)
    path = workdir / "canary"
    path.write_text("alive\n")
    path.chmod(0o666)  # a task runs as the sandbox's user: the file is left writable to it
    return path


def superuser_overwrite(**fields: str) -> task_pb2.TaskSpec:
    """What superuser mode runs and weak mode never would (shell syntax, a redirection)."""
    return task_pb2.TaskSpec(
        kind="shell", command="echo gone > canary", permission_mode="superuser", **fields
    )


async def test_a_task_above_every_nodes_ceiling_is_rejected_and_nothing_runs(
    mesh: Mesh, tmp_path: Path
) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("careful", max_permission_mode="weak")
    await mesh.start_node("cautious")  # superuser, but not the host the task names
    target = canary(mesh.tmp_path / "careful")

    submitted = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=superuser_overwrite(target_host="careful"))
    )
    task, events = await run_to_end(stub, submitted.id)

    assert task.state == REJECTED, task_pb2.TaskState.Name(task.state)
    assert "node.max_permission_mode" in task.error
    assert "careful" in task.error
    assert "weak" in task.error
    assert task.attempt == 0
    assert not task.assigned_agent
    assert not [e for e in events if e.agent_id]  # no node ever sent anything
    assert target.read_text() == "alive\n"
    # The same ceiling lets weak work through, and `agents` shows each node's ceiling.
    weak = task_pb2.TaskSpec(kind="shell", command="echo fine", target_host="careful")
    done = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=weak))
    task, _ = await run_to_end(stub, done.id)
    assert task.state == COMPLETED, task.error
    agents = await stub.ListAgents(scheduler_pb2.ListAgentsRequest())
    assert {a.card.name: a.card.max_permission_mode for a in agents.agents} == {
        "careful": "weak",
        "cautious": "superuser",
    }


async def test_a_node_refuses_a_mode_above_its_ceiling_when_called_directly(
    mesh: Mesh, tmp_path: Path
) -> None:
    await mesh.start_scheduler()
    node = await mesh.start_node("careful", max_permission_mode="weak")
    target = canary(mesh.tmp_path / "careful")

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        request = node_pb2.ExecuteTaskRequest(task_id="direct-1", spec=superuser_overwrite())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ExecuteTask(request):
                pass
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(refused.value) is Reason.MODE_ABOVE_CEILING
    assert "max_permission_mode" in (refused.value.details() or "")
    assert target.read_text() == "alive\n"


async def test_a_task_waits_while_its_ceiling_capable_node_is_offline(
    mesh: Mesh, tmp_path: Path
) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("careful", max_permission_mode="weak")
    strong = await mesh.start_node("strong")
    await strong.shutdown(grace_seconds=1)
    mesh.nodes.remove(strong)
    target = canary(mesh.tmp_path / "strong")

    submitted = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=superuser_overwrite()))
    reason = await waiting_reason(stub, submitted.id)
    assert "superuser" in reason
    assert "max_permission_mode" in reason
    assert target.read_text() == "alive\n"

    await mesh.start_node("strong")  # the same agent id, back online
    task, _ = await asyncio.wait_for(run_to_end(stub, submitted.id), 60)
    assert task.state == COMPLETED, task.error
    assert target.read_text() == "gone\n"


async def test_a_node_below_the_ceiling_its_row_claims_refuses_and_the_task_says_why(
    mesh: Mesh, tmp_path: Path
) -> None:
    # What the scheduler knows of a node is its last heartbeat: here a node lowered to weak
    # whose row still says superuser (heartbeats 30 s apart). The node refuses the attempt;
    # the task ends with the node's words, and nothing ran.
    mesh.configure(scheduler={"heartbeat_interval_seconds": 30})
    stub = await mesh.start_scheduler()
    await mesh.start_node("careful", max_permission_mode="weak")
    target = canary(mesh.tmp_path / "careful")
    await asyncio.sleep(1)  # past the heartbeat that learns the 30 s interval
    await mesh.schedulers[0].pool.execute(
        "UPDATE agents SET card = jsonb_set(card, '{max_permission_mode}', '\"superuser\"')"
        " WHERE card->>'name' = 'careful'"
    )

    spec = superuser_overwrite()
    spec.max_attempts = 1
    submitted = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    task, events = await run_to_end(stub, submitted.id)

    assert task.state == task_pb2.TASK_STATE_FAILED, task_pb2.TaskState.Name(task.state)
    assert "attempt 1 lost (careful: this node runs at most weak tasks" in task.error
    assert "node.max_permission_mode" in task.error
    assert not [e for e in events if e.agent_id]  # the node sent nothing: nothing ran
    assert target.read_text() == "alive\n"
