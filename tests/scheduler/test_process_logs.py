"""The logs of a scheduler and a node, as processes with a token and a key file: every line
about a task says which, and neither the token nor the key is ever written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import node_pb2, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.node.conftest import GEMINI_CLI
from tests.support.gemini_emulator import GeminiEmulator, function_call_reply, text_reply
from tests.support.processes import MeshProcess, ProcessHarness

pytestmark = pytest.mark.slow

TOKEN = "mesh-token-for-the-logs-3b8e0c71"
KEY = "AIzaSy-process-log-key-9d41c0ffee"
HEARTBEAT_SECONDS = 0.3


@dataclass
class VerboseHarness(ProcessHarness):
    """Processes with extra environment, logging everything (`agentmesh -v`)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.extra_env}

    def _spawn(self, label: str, argv: list[str], **options: Any) -> MeshProcess:
        return super()._spawn(label, ["-v", *argv], **options)


@pytest.fixture
async def mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[VerboseHarness]:
    keys = tmp_path / "api_keys.env"
    keys.write_text(f"GEMINI_API_KEY={KEY}\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        "node": {"heartbeat_interval_seconds": HEARTBEAT_SECONDS, "workdir": str(workdir)},
        "scheduler": {"heartbeat_interval_seconds": HEARTBEAT_SECONDS},
    }
    env = {
        "AGENTMESH_TOKEN": TOKEN,
        "GEMINI_API_KEY_FILE": str(keys),
        "GEMINI_CLI_COMMAND": GEMINI_CLI,
    }
    async with VerboseHarness(tmp_path, database_uri, config, extra_env=env) as harness:
        yield harness
    print(harness.describe())  # pytest shows it when the test fails


async def run(stub: scheduler_pb2_grpc.SchedulerAsyncStub, spec: task_pb2.TaskSpec) -> str:
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=30)
    async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id), timeout=90):
        pass
    return task.id


async def test_lines_about_tasks_name_them_and_no_secret_is_logged(
    mesh: VerboseHarness, emulator: GeminiEmulator
) -> None:
    # The agent delegates through its mesh tools: the scheduler's mesh credential travels to
    # the node and back, and is written nowhere either.
    emulator.script(
        function_call_reply(
            "mcp_mesh_delegate", {"description": "ping", "prompt": "ping", "kind": "echo"}
        ),
        text_reply("All fine."),
    )
    scheduler = await mesh.start_scheduler()
    node = await mesh.start_node("alpha", scheduler=scheduler.address)
    channel = open_channel(scheduler.address, token=TOKEN, tls=TlsSettings())
    try:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await mesh.wait_until(
            lambda: _online(stub), "the node to register", timeout=60, interval=0.1
        )
        gemini_id = await run(
            stub, task_pb2.TaskSpec(kind="gemini", prompt="hello", model="gemini-2.5-flash")
        )
        long = await stub.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(
                spec=task_pb2.TaskSpec(
                    kind="shell", command="sleep 300", permission_mode="superuser"
                )
            )
        )
        await mesh.wait_until(lambda: _working(stub, long.id), "the long task to run", timeout=60)
        await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=long.id))
        await run(stub, task_pb2.TaskSpec(kind="echo", prompt="done"))
    finally:
        await channel.close()
    for process in (node, scheduler):
        await process.terminate()

    node_log = node.stderr_path.read_text()
    scheduler_log = scheduler.stderr_path.read_text()
    assert emulator.generate_requests(), "the gemini task never reached the API"
    for log in (node_log, scheduler_log):
        assert TOKEN not in log
        assert KEY not in log
        assert "amt_" not in log  # a mesh credential
    assert "subtask delegated" in node_log
    assert f"task started task_id={gemini_id} attempt=1 agent={node.identity}" in node_log
    assert f"task_id={long.id} attempt=1 agent={node.identity}" in scheduler_log


async def _online(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> bool:
    try:
        reply = await stub.ListAgents(scheduler_pb2.ListAgentsRequest(), timeout=10)
    except grpc.aio.AioRpcError:
        return False
    return any(agent.status == "online" for agent in reply.agents)


async def _working(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> bool:
    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=10)
    return task.state == task_pb2.TASK_STATE_WORKING
