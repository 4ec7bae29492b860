"""The seed's example configuration runs a mesh: `agentmesh scheduler` and `agentmesh node`
as processes, with the seed's agent_config.json as it is, its .env with a real key file and
Gemini CLI in place of the two placeholders, and AGENTMESH_TOKEN set. A shell task and a
gemini task (against the loopback API emulator) run through generated stubs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.node.conftest import GEMINI_CLI
from tests.seed_examples import SEED_AGENT_CONFIG, SEED_ENV, dotenv_text
from tests.support.gemini_emulator import GeminiEmulator, shell_call, text_reply
from tests.support.processes import ProcessHarness

pytestmark = pytest.mark.slow

TOKEN = "seed-mesh-token-0f3a9c"
KEY = "AIzaSy-seed-mesh-key-0123456789"
COMPLETED = task_pb2.TASK_STATE_COMPLETED


@dataclass
class SeedHarness(ProcessHarness):
    """The process harness with changes to its environment (None removes a variable)."""

    overrides: Mapping[str, str | None] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        env = {**super().environment(), **self.overrides}
        return {name: value for name, value in env.items() if value is not None}


@pytest.fixture
def emulator() -> Iterator[GeminiEmulator]:
    with GeminiEmulator() as running:
        yield running


@pytest.fixture
async def seed_mesh(
    tmp_path: Path, database_uri: str, emulator: GeminiEmulator
) -> AsyncIterator[tuple[SeedHarness, scheduler_pb2_grpc.SchedulerAsyncStub]]:
    key_file = tmp_path / "api_keys.env"
    key_file.write_text(f"GEMINI_KEY_1={KEY}\n")
    # The seed's .env in the processes' directory, its placeholders replaced: the key file
    # and the CLI come from it. Its POSTGRES_* are read too, but the test's DATABASE_URL
    # (set by the harness) names the database and wins over them.
    env_file = {**SEED_ENV, "GEMINI_API_KEY_FILE": str(key_file), "GEMINI_CLI_COMMAND": GEMINI_CLI}
    (tmp_path / ".env").write_text(dotenv_text(env_file))
    harness = SeedHarness(
        tmp_path,
        database_uri,
        SEED_AGENT_CONFIG,
        node_ceiling=None,  # the seed's file as it is: its tasks are weak
        overrides={
            "AGENTMESH_TOKEN": TOKEN,
            "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
            "GEMINI_CLI_COMMAND": None,  # the harness's /nonexistent would win over the .env
        },
    )
    async with harness:
        scheduler = await harness.start_scheduler()
        node = await harness.start_node("seed", scheduler=scheduler.address)
        channel = open_channel(scheduler.address, token=TOKEN, tls=TlsSettings())
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        try:
            await harness.wait_registered(stub, [node])
            yield harness, stub
        finally:
            await channel.close()
            print(harness.describe())  # pytest shows it when the test fails


async def _run(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, spec: task_pb2.TaskSpec
) -> tuple[task_pb2.Task, list[task_pb2.TaskEvent]]:
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10)
    events = [
        event
        async for event in stub.WatchTask(
            scheduler_pb2.WatchTaskRequest(task_id=task.id), timeout=90
        )
    ]
    return await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id), timeout=10), events


@pytest.mark.parametrize("pg_server", ["embedded"], indirect=True)
async def test_the_seed_configuration_runs_a_shell_and_a_gemini_task_with_a_token(
    seed_mesh: tuple[SeedHarness, scheduler_pb2_grpc.SchedulerAsyncStub],
    emulator: GeminiEmulator,
    tmp_path: Path,
) -> None:
    harness, stub = seed_mesh
    # The seed's weak allowlist is ls, cat and curl; the host is readable (its /tmp is not:
    # every task has its own).
    notes = Path("/etc/os-release")
    shell, _ = await _run(stub, task_pb2.TaskSpec(kind="shell", command=f"cat {notes}"))
    assert shell.state == COMPLETED, shell.error
    assert shell.output == notes.read_text()

    # agentic (the seed's agent_defaults.mode): the model's `ls` call runs in weak mode.
    emulator.script(shell_call("ls /"), text_reply("The root has the usual directories."))
    gemini, events = await _run(stub, task_pb2.TaskSpec(kind="gemini", prompt="What is in /?"))
    assert gemini.state == COMPLETED, gemini.error
    assert gemini.spec.agent_mode == "agentic"
    assert gemini.output == "The root has the usual directories."
    results = [e.tool_result for e in events if e.WhichOneof("payload") == "tool_result"]
    assert [r.status for r in results] == ["success"]
    assert "etc" in results[0].output.split()
    assert {r.api_key for r in emulator.generate_requests()} == {KEY}

    # The token is what let these calls in.
    async with grpc.aio.insecure_channel(harness.processes[0].address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scheduler_pb2_grpc.SchedulerStub(anonymous).GetTask(
                scheduler_pb2.GetTaskRequest(task_id=gemini.id), timeout=10
            )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

    scheduler, node = harness.processes
    logs = {
        p.label: p.stdout_path.read_text() + p.stderr_path.read_text() for p in (scheduler, node)
    }
    assert not any(KEY in text or TOKEN in text for text in logs.values())
    # Everything the seed configures is enforced: nothing to warn about.
    assert "WARNING" not in logs[scheduler.label]
    assert "WARNING" not in logs[node.label]
    assert json.loads(harness.config_path.read_text()) == SEED_AGENT_CONFIG
