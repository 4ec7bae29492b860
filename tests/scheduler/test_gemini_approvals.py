"""A Gemini agent's refused command, asked about (on_refusal = ask), through the real CLI
against the API emulator: the run stops and the task waits for its user; once approved, the
next attempt's policy allows that command and its sandbox runs it. A denylisted command is
never asked about: the agent reads the refusal and goes on, and nothing is removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end, start_gemini_mesh
from tests.support.gemini_emulator import GeminiEmulator, shell_call, text_reply

KEY = "AIzaSy-gemini-approvals-key-0007"


async def settled(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> task_pb2.Task:
    async with asyncio.timeout(90):
        while True:
            task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
            ended = task.state >= task_pb2.TASK_STATE_COMPLETED
            if ended or task.state == task_pb2.TASK_STATE_INPUT_REQUIRED:
                return task
            await asyncio.sleep(0.1)


async def test_an_agents_refused_command_waits_for_its_user_then_runs_approved(
    mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    stub = await start_gemini_mesh(mesh, KEY)
    made = tmp_path / "llm" / "approved-dir"  # the node's working directory
    emulator.script(shell_call("mkdir approved-dir"))  # attempt 1: refused, the run stops
    spec = task_pb2.TaskSpec(
        kind="gemini", prompt="Make the directory.", user="ada", on_refusal="ask"
    )
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    waiting = await settled(stub, task.id)
    assert waiting.state == task_pb2.TASK_STATE_INPUT_REQUIRED, waiting
    assert not made.exists()
    [pending] = (await stub.ListApprovals(scheduler_pb2.ListApprovalsRequest())).approvals
    assert (pending.task_id, pending.command, pending.rule, pending.mode) == (
        task.id,
        "mkdir approved-dir",
        "gemini-policy",
        "weak",
    )

    # Attempt 2: the same call, now allowed, then the answer.
    emulator.script(shell_call("mkdir approved-dir"), text_reply("Made it."))
    await stub.ApproveTask(scheduler_pb2.ApproveTaskRequest(task_id=task.id))
    done = await settled(stub, task.id)

    assert done.state == task_pb2.TASK_STATE_COMPLETED, done.error
    assert done.output == "Made it."
    assert made.is_dir()
    events = [e async for e in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))]
    results = [(e.attempt, e.tool_result.status) for e in events if e.HasField("tool_result")]
    # (An attempt the node was still stopping may have been handed back unstarted between.)
    [(first, refused), (later, ran)] = results
    assert (first, refused, ran) == (1, "error", "success")
    assert later > first


async def test_a_denylisted_command_of_an_agent_is_never_asked_about(
    mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    stub = await start_gemini_mesh(mesh, KEY)
    canary = tmp_path / "llm" / "canary"
    canary.write_text("alive")
    emulator.script(shell_call("rm canary"), text_reply("I may not remove it."))

    task, events = await run_to_end(
        stub, kind="gemini", prompt="Remove the canary.", user="ada", on_refusal="ask"
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    [refusal] = [e.refusal for e in events if e.HasField("refusal")]
    assert (refusal.command, refusal.approvable) == ("rm canary", False)
    assert canary.read_text() == "alive"
