"""Agents orchestrate themselves: a running Gemini agent delegates to other machines through
its node's mesh tools (MCP), with the real Gemini CLI against the API emulator, which
answers with calls to the tools by name (`mcp_mesh_<tool>`) as a model would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.node.service import AgentNode
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import node_pb2, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end
from tests.support.gemini_emulator import (
    GeminiEmulator,
    RecordedRequest,
    TextReply,
    function_call_reply,
    last_function_response,
    quoting_tool_result,
    text_reply,
)
from tests.support.pki import make_pki

KEY = "AIzaSy-delegation-test-key-0001"
TOKEN = "delegation-mesh-token-7d1e"
COMPLETED = task_pb2.TASK_STATE_COMPLETED
CANCELED = task_pb2.TASK_STATE_CANCELED


async def start(
    mesh: Mesh,
    scheduler: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
    **env: str,
) -> scheduler_pb2_grpc.SchedulerAsyncStub:
    key_file = mesh.tmp_path / "keys.txt"
    key_file.write_text(f"{KEY}\n")
    mesh.configure(scheduler, sections, GEMINI_API_KEY_FILE=str(key_file), **env)
    return await mesh.start_scheduler()


@pytest.fixture(params=["open", "token", "token+tls"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """How the mesh is secured: not at all (loopback), with the user token (each node with a
    credential of its own), or with the token and TLS with client certificates."""
    if request.param == "open":
        return {}
    secured: dict[str, Any] = {"AGENTMESH_TOKEN": TOKEN}
    if request.param == "token+tls":
        pki = make_pki(tmp_path / "pki", "mesh")
        secured["sections"] = {
            "tls": {
                "cert_file": str(pki / "mesh.crt"),
                "key_file": str(pki / "mesh.key"),
                "client_ca_file": str(pki / "ca.crt"),
                "ca_file": str(pki / "ca.crt"),
            }
        }
    return secured


def tool_events(events: list[task_pb2.TaskEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]


def tool_output(events: list[task_pb2.TaskEvent]) -> dict[str, Any]:
    """The JSON a mesh tool returned, from the parent's trace."""
    [result] = tool_events(events, "tool_result")
    assert result.status == "success", result
    parsed: dict[str, Any] = json.loads(result.output)
    return parsed


async def test_an_agent_delegates_a_command_only_another_machine_can_run(
    mesh: Mesh, emulator: GeminiEmulator, database_uri: str, deployment: dict[str, Any]
) -> None:
    stub = await start(mesh, **deployment)
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


def tool_errors(events: list[task_pb2.TaskEvent]) -> list[str]:
    """What each mesh tool call answered, "" for a success or the error the agent read."""
    return [
        "" if r.status == "success" else f"{r.error_message} {r.output}"
        for r in tool_events(events, "tool_result")
    ]


async def test_delegations_past_the_mode_or_the_count_are_refused_and_the_agent_reads_why(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    stub = await start(mesh, sections={"agent_defaults": {"max_delegations": 1}})
    await mesh.start_node("worker")
    delegate = "mcp_mesh_delegate"
    emulator.script(
        function_call_reply(
            delegate, {"description": "up", "command": "id", "permission_mode": "superuser"}
        ),
        function_call_reply(delegate, {"description": "first", "command": "echo one"}),
        function_call_reply(delegate, {"description": "second", "command": "echo two"}),
        text_reply("One of three ran."),
    )

    parent, events = await run_to_end(stub, kind="gemini", prompt="Run three things.")

    assert parent.state == COMPLETED, parent.error
    above, first, second = tool_errors(events)
    assert "above the parent's mode" in above
    assert first == ""
    assert "max_delegations" in second
    # The model was told each reason (its next request carries the tool's answer).
    answers = [_refusal(r) for r in emulator.generate_requests()[1:4]]
    assert "above the parent's mode" in answers[0]
    assert "max_delegations" in answers[2]
    # Only the one within the limits was stored, and it ran.
    [child_id] = parent.child_ids
    child = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child_id))
    assert child.spec.command == "echo one"
    assert child.state == COMPLETED


async def test_a_delegated_agent_cannot_delegate_past_the_depth_limit(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    stub = await start(mesh, scheduler={"max_subtask_depth": 1})
    await mesh.start_node("worker", max_concurrency=2)
    emulator.script(
        # The parent's agent delegates to another agent (depth 1)...
        function_call_reply("mcp_mesh_delegate", {"description": "helper", "prompt": "help"}),
        # ... whose own delegation would be depth 2.
        function_call_reply("mcp_mesh_delegate", {"description": "deeper", "command": "id"}),
        quoting_tool_result("The helper could not: {result}"),
        quoting_tool_result("The helper said: {result}"),
    )

    parent, _events = await run_to_end(stub, kind="gemini", prompt="Get help.")

    assert parent.state == COMPLETED, parent.error
    [helper_id] = parent.child_ids
    helper = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=helper_id))
    assert helper.state == COMPLETED
    assert not helper.child_ids
    assert "scheduler.max_subtask_depth" in helper.output
    assert "scheduler.max_subtask_depth" in parent.output


async def long_job_mesh(
    mesh: Mesh, emulator: GeminiEmulator, options: dict[str, Any], answer: TextReply
) -> tuple[scheduler_pb2_grpc.SchedulerAsyncStub, AgentNode]:
    """Nodes "planner" and "far"; the agent delegates `sleep 300` to "far" (with `options`),
    then gives `answer`. Returns the stub and the far node."""
    stub = await start(mesh)
    await mesh.start_node("planner")
    far = await mesh.start_node("far", capabilities=["far"])
    job = {"description": "long", "command": "sleep 300", "capabilities": ["far"], **options}
    emulator.script(function_call_reply("mcp_mesh_delegate", job), answer)
    return stub, far


async def test_cancelling_the_parent_stops_what_it_delegated_on_its_node(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    stub, far = await long_job_mesh(mesh, emulator, {}, text_reply("never reached"))
    parent = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                kind="gemini",
                prompt="Wait for the long job.",
                target_host="planner",
                permission_mode="superuser",
            )
        )
    )
    child_id = await _running_child(stub, parent.id)
    # Working in the database comes first (the claim), running on the node a moment later.
    await _until(lambda: far.runner.running_task_ids() == (child_id,))

    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=parent.id, reason="enough"))

    parent = await _ended(stub, parent.id)
    child = await _ended(stub, child_id)
    assert parent.state == CANCELED
    assert child.state == CANCELED
    await _until(lambda: far.runner.running == 0)


async def test_a_parent_that_ends_leaves_no_running_children(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    # The agent gives up waiting after a second and answers.
    answer = text_reply("It is still running; I am done.")
    stub, far = await long_job_mesh(mesh, emulator, {"timeout_seconds": 1}, answer)

    parent, events = await run_to_end(
        stub, kind="gemini", prompt="Start the long job.", permission_mode="superuser"
    )

    assert parent.state == COMPLETED, parent.error
    assert tool_output(events)["ended"] is False
    child = await _ended(stub, parent.child_ids[0])
    assert child.state == CANCELED
    assert f"its parent {parent.id} ended" in child.error
    await _until(lambda: far.runner.running == 0)


async def _running_child(stub: scheduler_pb2_grpc.SchedulerAsyncStub, parent_id: str) -> str:
    async def child() -> str | None:
        parent = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=parent_id))
        for child_id in parent.child_ids:
            task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child_id))
            if task.state == task_pb2.TASK_STATE_WORKING:
                return child_id
        return None

    async with asyncio.timeout(60):
        while (found := await child()) is None:
            await asyncio.sleep(0.1)
    return found


async def _ended(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> task_pb2.Task:
    request = scheduler_pb2.GetTaskRequest(task_id=task_id, wait_seconds=60)
    return await stub.GetTask(request)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("secured", [False, True], ids=["open", "token"])
async def test_only_a_running_tasks_own_credential_delegates_and_reads(
    mesh: Mesh, secured: bool
) -> None:
    stub = await start(mesh, **({"AGENTMESH_TOKEN": TOKEN} if secured else {}))
    await mesh.start_node("worker")
    scheduler = mesh.schedulers[0]
    credentials = scheduler.mesh_credentials
    running = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(kind="shell", command="sleep 60", permission_mode="superuser")
        )
    )
    other, _ = await run_to_end(stub, kind="echo", prompt="someone else's")
    await _until_state(stub, running.id, task_pb2.TASK_STATE_WORKING)
    mine = credentials.mint(running.id, 1)
    spec = task_pb2.TaskSpec(kind="echo", prompt="hi", description="child")

    async with open_channel(scheduler.address, token=None, tls=TlsSettings()) as channel:
        raw = scheduler_pb2_grpc.SchedulerStub(channel)

        async def call(method: str, request: Any, token: str | None) -> Any:
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            return await getattr(raw, method)(request, metadata=metadata, timeout=30)

        delegate = scheduler_pb2.DelegateTaskRequest(spec=spec, wait_seconds=30)
        child = await call("DelegateTask", delegate, mine)
        assert child.state == COMPLETED
        assert child.parent_id == running.id
        # It reads its own subtree, not another task.
        assert (await call("GetTask", scheduler_pb2.GetTaskRequest(task_id=child.id), mine)).id
        refusals = {
            "another task": ("GetTask", scheduler_pb2.GetTaskRequest(task_id=other.id), mine),
            "a user's RPC": ("SubmitTask", scheduler_pb2.SubmitTaskRequest(spec=spec), mine),
            "no credential": ("DelegateTask", delegate, TOKEN if secured else None),
            "a forged one": (
                "DelegateTask",
                delegate,
                credentials.mint(other.id, 1)[:-8] + "0" * 8,
            ),
            "an ended task's": ("DelegateTask", delegate, credentials.mint(other.id, 1)),
        }
        codes = {}
        for what, (method, request, token) in refusals.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(method, request, token)
            codes[what] = refused.value.code()
    assert codes == {
        "another task": grpc.StatusCode.PERMISSION_DENIED,
        "a user's RPC": grpc.StatusCode.PERMISSION_DENIED,
        "no credential": grpc.StatusCode.PERMISSION_DENIED,
        "a forged one": grpc.StatusCode.UNAUTHENTICATED,
        "an ended task's": grpc.StatusCode.FAILED_PRECONDITION,
    }
    # Its credential dies with the attempt.
    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=running.id))
    async with open_channel(scheduler.address, token=mine, tls=TlsSettings()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduler_pb2_grpc.SchedulerStub(channel).DelegateTask(delegate, timeout=30)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "not running attempt 1" in (refused.value.details() or "")
    parent = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=running.id))
    assert list(parent.child_ids) == [child.id]


async def _until_state(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str, state: int
) -> None:
    async with asyncio.timeout(30):
        while (await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))).state != state:
            await asyncio.sleep(0.05)


async def test_an_agent_without_the_network_still_reaches_its_mesh_tools(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    # Network off: the run connects to its node's API proxy and mesh tools, nothing else.
    stub = await start(mesh, sections={"permissions": {"weak": {"network": False}}})
    await mesh.start_node("worker")
    emulator.script(
        function_call_reply("mcp_mesh_delegate", {"description": "who", "command": "whoami"}),
        quoting_tool_result("It answered: {result}"),
    )

    parent, events = await run_to_end(stub, kind="gemini", prompt="Who runs tasks?")

    assert parent.state == COMPLETED, parent.error
    assert tool_output(events)["state"] == "completed"
