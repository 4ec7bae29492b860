"""Agents orchestrate themselves: a running Gemini agent delegates to other machines through
its node's mesh tools (MCP), with the real Gemini CLI against the API emulator, which
answers with calls to the tools by name (`mcp_mesh_<tool>`) as a model would."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end
from tests.support.gemini_emulator import (
    GeminiEmulator,
    RecordedRequest,
    function_call_reply,
    last_function_response,
    quoting_tool_result,
    text_reply,
)

KEY = "AIzaSy-delegation-test-key-0001"
COMPLETED = task_pb2.TASK_STATE_COMPLETED
CANCELED = task_pb2.TASK_STATE_CANCELED


async def start(mesh: Mesh, **scheduler: Any) -> scheduler_pb2_grpc.SchedulerAsyncStub:
    key_file = mesh.tmp_path / "keys.txt"
    key_file.write_text(f"{KEY}\n")
    mesh.configure(scheduler or None, GEMINI_API_KEY_FILE=str(key_file))
    return await mesh.start_scheduler()


def tool_events(events: list[task_pb2.TaskEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]


def tool_output(events: list[task_pb2.TaskEvent]) -> dict[str, Any]:
    """The JSON a mesh tool returned, from the parent's trace."""
    [result] = tool_events(events, "tool_result")
    assert result.status == "success", result
    parsed: dict[str, Any] = json.loads(result.output)
    return parsed


async def test_an_agent_delegates_a_command_only_another_machine_can_run(
    mesh: Mesh, emulator: GeminiEmulator, database_uri: str
) -> None:
    stub = await start(mesh)
    planner = await mesh.start_node("planner")
    vault = await mesh.start_node("vault", capabilities=["vault"])
    emulator.script(
        function_call_reply(
            "mcp_mesh_delegate",
            {"description": "where the vault works", "command": "pwd", "capabilities": ["vault"]},
        ),
        quoting_tool_result("The vault machine answered: {result}"),
    )

    parent, events = await run_to_end(
        stub,
        kind="gemini",
        prompt="Find out where the vault machine works.",
        target_host="planner",
        user="ada",
    )

    assert parent.state == COMPLETED, parent.error
    assert parent.assigned_agent == planner.card().agent_id
    # The agent saw the subtask's output and quoted it in its answer.
    vault_dir = str(mesh.tmp_path / "vault")
    assert vault_dir in parent.output
    # Every tool call and its result are in the parent's trace.
    [use] = tool_events(events, "tool_use")
    assert use.tool_name == "mcp_mesh_delegate"
    assert json.loads(use.parameters_json)["command"] == "pwd"
    result = tool_output(events)
    assert result["state"] == "completed"
    assert result["output"].strip() == vault_dir
    # The subtask: a child of the parent, on the machine with the capability, as its user
    # and in its mode.
    [child_id] = parent.child_ids
    assert result["task_id"] == child_id
    child = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child_id))
    assert child.state == COMPLETED
    assert child.parent_id == parent.id
    assert child.assigned_agent == vault.card().agent_id
    assert child.spec.user == "ada"
    assert child.spec.permission_mode == "weak"
    conn = await asyncpg.connect(database_uri)
    try:
        row = await conn.fetchrow("SELECT * FROM subtasks WHERE child_task_id = $1", child_id)
    finally:
        await conn.close()
    assert row["parent_task_id"] == parent.id
    assert row["assigned_host"] == vault.card().hostname
    assert row["status"] == "completed"
    assert row["description"] == "where the vault works"
    assert row["started_at"] is not None
    assert row["completed_at"] is not None


async def test_list_agents_shows_the_mesh_to_the_agent(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    stub = await start(mesh)
    await mesh.start_node("planner")
    vault = await mesh.start_node("vault", capabilities=["vault"])
    emulator.script(function_call_reply("mcp_mesh_list_agents", {}), text_reply("Two."))

    parent, events = await run_to_end(stub, kind="gemini", prompt="Which machines are there?")

    assert parent.state == COMPLETED, parent.error
    agents = json.loads(tool_events(events, "tool_result")[0].output)
    by_id = {agent["agent_id"]: agent for agent in agents}
    assert len(by_id) == 2
    assert "vault" in by_id[vault.card().agent_id]["capabilities"]
    assert not any(
        "vault" in agent["capabilities"]
        for agent in agents
        if agent is not by_id[vault.card().agent_id]
    )


def _refusal(request: RecordedRequest) -> str:
    """What the agent was told by its tool (the CLI's functionResponse)."""
    return json.dumps(last_function_response(request.body))
