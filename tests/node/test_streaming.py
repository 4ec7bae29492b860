"""A shell task's output through the node: whole, in order, decoded right, and its end kept.

(That output arrives as it is written, not when more follows, is
`test_node.test_shell_output_streams_as_it_comes`.)
"""

from __future__ import annotations

from pathlib import Path

import grpc

from agentmesh.v1 import node_pb2_grpc, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import COMPLETED, assert_well_numbered, collect, execute, stdout_of

# Waits until the test has seen the output so far: what follows is read apart from it.
UNTIL_GO = "while [ ! -e go ]; do sleep 0.05; done"


def texts(events: list[task_pb2.TaskEvent], stream: str) -> list[str]:
    return [getattr(e, stream).text for e in events if e.WhichOneof("payload") == stream]


async def run_until_seen(
    stub: node_pb2_grpc.AgentNodeStub, tmp_path: Path, task_id: str, command: str
) -> list[task_pb2.TaskEvent]:
    """Run a command that waits for `go`; create it once some stdout has arrived."""
    call = stub.ExecuteTask(
        execute(task_id, kind="shell", command=command, permission_mode="superuser")
    )
    seen = []
    while (event := await call.read()) is not grpc.aio.EOF:
        seen.append(event)
        if event.WhichOneof("payload") == "stdout":
            (tmp_path / "go").touch()
    return seen


async def test_a_character_split_between_two_reads_arrives_whole(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node()
    # "é" is \303\251 in UTF-8: its first byte is read with "a", its second much later.
    command = rf"printf 'a\303'; {UNTIL_GO}; printf '\251\n'"

    events = await run_until_seen(stub, tmp_path, "utf8-1", command)

    assert texts(events, "stdout") == ["a", "é\n"]
    assert events[-1].result.state == COMPLETED


async def test_the_result_keeps_the_end_of_stdout_across_chunks(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node()
    # 13,893 bytes, then 10,000 read apart: the result's last 16 KiB span both.
    command = f"seq 1 3000; {UNTIL_GO}; seq 3001 5000"

    events = await run_until_seen(stub, tmp_path, "tail-1", command)

    output = stdout_of(events)
    assert len(texts(events, "stdout")) >= 2
    assert output == "".join(f"{n}\n" for n in range(1, 5001))
    result = events[-1].result
    assert result.state == COMPLETED
    assert result.output == output[-(16 << 10) :]


async def test_megabytes_of_stdout_and_stderr_arrive_whole_in_order_and_apart(
    start_node: StartNode,
) -> None:
    _, stub = await start_node()
    # Several chunks of each, the streams written at the same time.
    command = "seq 1 400000 & seq 1 200000 | sed s/^/e/ >&2; wait"

    events = await collect(
        stub.ExecuteTask(
            execute("big-1", kind="shell", command=command, permission_mode="superuser")
        )
    )

    assert_well_numbered(events, "big-1")
    assert len(texts(events, "stdout")) >= 2
    assert stdout_of(events) == "".join(f"{n}\n" for n in range(1, 400001))
    assert "".join(texts(events, "stderr")) == "".join(f"e{n}\n" for n in range(1, 200001))
    assert events[-1].result.state == COMPLETED
