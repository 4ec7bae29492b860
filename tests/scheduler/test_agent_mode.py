"""The agent mode through the scheduler: filled in at submission from agent_defaults.mode,
stored in the spec and in the seed's subtasks.agent_mode column, refused when unknown."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import grpc
import pytest

from agentmesh.v1 import scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh


async def test_submission_fills_in_the_configured_agent_mode(mesh: Mesh, tmp_path: Path) -> None:
    config = tmp_path / "plain_config.json"
    config.write_text(json.dumps({"agent_defaults": {"mode": "plain"}}))
    mesh.configure(AGENTMESH_CONFIG=str(config))
    stub = await mesh.start_scheduler()  # no node: the tasks stay as submitted

    parent = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                description="tree",
                subtasks=[
                    task_pb2.TaskSpec(kind="gemini", prompt="a", description="default"),
                    task_pb2.TaskSpec(
                        kind="gemini", prompt="b", description="named", agent_mode="agentic"
                    ),
                    task_pb2.TaskSpec(kind="shell", command="ls", description="shell"),
                ],
            )
        )
    )
    leaf = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(kind="gemini", prompt="c"))
    )

    stored = {}
    for child_id in parent.child_ids:
        child = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child_id))
        stored[child.spec.description] = child.spec.agent_mode
    assert stored == {"default": "plain", "named": "agentic", "shell": ""}
    assert leaf.spec.agent_mode == "plain"
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        rows = await conn.fetch(
            "SELECT description, agent_mode FROM subtasks WHERE parent_task_id = $1", parent.id
        )
    finally:
        await conn.close()
    assert {row["description"]: row["agent_mode"] for row in rows} == {
        "default": "plain",
        "named": "agentic",
        "shell": None,
    }


async def test_unknown_agent_mode_is_invalid_argument_listing_the_modes(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    spec = task_pb2.TaskSpec(
        subtasks=[task_pb2.TaskSpec(kind="gemini", prompt="a", agent_mode="headless")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "spec.subtasks[0].agent_mode: must be one of agentic, plain, or empty (got 'headless')"
    )
