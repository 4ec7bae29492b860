"""`node.max_output_bytes`: output is cut at exactly the cap, said once, and the task stopped."""

from __future__ import annotations

from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_gemini import gemini, payloads
from tests.node.test_node import assert_well_numbered, collect, stdout_of, wait_until_gone
from tests.support.gemini_emulator import GeminiEmulator, text_reply

CAP = 4096
REASON = (
    f"output passed the node's limit of {CAP} bytes (node.max_output_bytes): the rest was"
    " discarded and the task was stopped"
)


async def test_a_shell_task_that_prints_without_end_is_cut_and_stopped(
    start_node: StartNode,
) -> None:
    # Unsandboxed: the test reads the pid the command prints, which a sandbox renumbers.
    _, stub = await start_node(max_output_bytes=CAP, sandbox="none")
    spec = task_pb2.TaskSpec(kind="shell", command="echo $$; exec yes", permission_mode="superuser")

    events = await collect(stub.ExecuteTask(node_pb2.ExecuteTaskRequest(task_id="o-1", spec=spec)))

    assert_well_numbered(events, "o-1")
    output = stdout_of(events)
    assert len(output.encode()) == CAP
    assert set(output.split("\n", 1)[1]) <= {"y", "\n"}
    diagnostics = [(d.severity, d.message) for d in payloads(events, "diagnostic")]  # type: ignore[attr-defined]
    assert [d for d in diagnostics if d[0] == "error"] == [("error", REASON)]
    result = events[-1].result
    assert (result.state, result.error) == (task_pb2.TASK_STATE_FAILED, REASON)
    assert await wait_until_gone(int(output.split("\n", 1)[0]))


async def test_output_at_exactly_the_cap_is_not_cut(start_node: StartNode) -> None:
    _, stub = await start_node(max_output_bytes=CAP)
    spec = task_pb2.TaskSpec(
        kind="shell", command=f"head -c {CAP} /dev/zero", permission_mode="superuser"
    )

    events = await collect(stub.ExecuteTask(node_pb2.ExecuteTaskRequest(task_id="o-2", spec=spec)))

    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert len(stdout_of(events)) == CAP


async def test_a_gemini_run_past_the_cap_fails_saying_so(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply(" ".join(f"word{n}" for n in range(1500))))  # 11 KB, and JSON
    _, stub = await start_node(max_output_bytes=CAP)

    events = await collect(stub.ExecuteTask(gemini("o-3", "talk at length")))

    assert_well_numbered(events, "o-3")
    diagnostics = [d.message for d in payloads(events, "diagnostic")]  # type: ignore[attr-defined]
    assert diagnostics == [REASON]
    result = events[-1].result
    assert (result.state, result.error) == (task_pb2.TASK_STATE_FAILED, REASON)
