"""The mesh as it is deployed beyond loopback: the scheduler and the people hold the user
credential (AGENTMESH_TOKEN), each node only a node credential of its own.

A scheduler and three nodes run as `agentmesh` processes, first with the credentials alone,
then with TLS and required client certificates as well. A client submits and watches tasks
through the generated stubs over `open_channel` with the user credential; every task
completes on the node it was meant for, a client without it (or without a certificate) is
refused, and no credential appears in any process's output nor in any task's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.support.databases import Server
from tests.support.pki import make_pki
from tests.support.processes import ProcessHarness

pytestmark = pytest.mark.slow

TOKEN = "deployed-mesh-token-3c9b1f0e"
NODES = ("north", "south", "east")
COMPLETED = task_pb2.TASK_STATE_COMPLETED
RUN_TIMEOUT = 60.0


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """Authentication and TLS do not touch the database: one server is enough."""
    return embedded_server


@dataclass(frozen=True)
class Transport:
    """The `tls` section every process is configured with, and the test client's settings."""

    config: dict[str, str]
    client: TlsSettings

    @property
    def secure(self) -> bool:
        return self.client.ca_file is not None


@pytest.fixture(params=["plaintext", "tls"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    if request.param == "plaintext":
        yield Transport(config={}, client=TlsSettings())
        return
    pki = make_pki(tmp_path / "pki", "mesh", "client")
    # Each process serves with the mesh certificate and presents it when it dials another.
    config = {
        "cert_file": str(pki / "mesh.crt"),
        "key_file": str(pki / "mesh.key"),
        "client_ca_file": str(pki / "ca.crt"),
        "ca_file": str(pki / "ca.crt"),
    }
    client = TlsSettings(
        ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
    )
    yield Transport(config=config, client=client)


def tree_spec() -> task_pb2.TaskSpec:
    """Two levels of subtasks: an echo leaf, and a branch of a shell and an echo leaf."""
    return task_pb2.TaskSpec(
        description="tree",
        subtasks=[
            task_pb2.TaskSpec(kind="echo", prompt="first leaf", description="leaf"),
            task_pb2.TaskSpec(
                description="branch",
                subtasks=[
                    task_pb2.TaskSpec(kind="shell", command="uname -s", description="kernel"),
                    task_pb2.TaskSpec(kind="echo", prompt="second leaf", description="leaf"),
                ],
            ),
        ],
    )


async def watch(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str
) -> list[task_pb2.TaskEvent]:
    async def collect() -> list[task_pb2.TaskEvent]:
        request = scheduler_pb2.WatchTaskRequest(task_id=task_id)
        return [event async for event in stub.WatchTask(request)]

    return await asyncio.wait_for(collect(), RUN_TIMEOUT)


async def refusal(target: str, *, token: str | None, tls: TlsSettings) -> grpc.StatusCode:
    async with open_channel(target, token=token, tls=tls) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        try:
            await stub.ListAgents(scheduler_pb2.ListAgentsRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def mesh(
    tmp_path: Path, database_uri: str, transport: Transport
) -> AsyncIterator[ProcessHarness]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    config: dict[str, Any] = {
        "node": {"heartbeat_interval_seconds": 0.3, "workdir": str(workdir)},
        "scheduler": {"lease_seconds": 3},
    }
    if transport.config:
        config["tls"] = transport.config
    # Debug logging: the most a process ever prints, for the check that the token is not in it.
    env = {"AGENTMESH_TOKEN": TOKEN}
    async with ProcessHarness(tmp_path, database_uri, config, env=env, verbose=True) as harness:
        yield harness
    print(harness.describe())  # pytest shows it when the test fails


async def test_a_mesh_with_a_token_runs_tasks_submitted_and_watched_with_it(
    mesh: ProcessHarness, transport: Transport
) -> None:
    scheduler = await mesh.start_scheduler()
    node_tokens = {name: await mesh.enroll(f"test:{name}") for name in NODES}
    # A node's host holds its own credential only, never the user's.
    nodes = {
        name: await mesh.start_node(
            name,
            scheduler=scheduler.address,
            env={"AGENTMESH_TOKEN": "", "AGENTMESH_NODE_TOKEN": node_tokens[name]},
        )
        for name in NODES
    }
    secrets = [TOKEN, *node_tokens.values()]
    async with open_channel(scheduler.address, token=TOKEN, tls=transport.client) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await mesh.wait_registered(stub, nodes.values())
        # One shell task per node; each shows the environment its command ran with.
        placed = {
            name: await stub.SubmitTask(
                scheduler_pb2.SubmitTaskRequest(
                    spec=task_pb2.TaskSpec(
                        kind="shell", command="cat /proc/self/environ", target_host=name
                    )
                )
            )
            for name in NODES
        }
        tree = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=tree_spec()))
        submitted = [*placed.values(), tree]

        traces = await asyncio.gather(*(watch(stub, task.id) for task in submitted))
        finals = {
            task.id: await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
            for task in submitted
        }
        children = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=tree.id))

    for task, events in zip(submitted, traces, strict=True):
        assert events[-1].result.state == COMPLETED, events[-1]
        assert finals[task.id].state == COMPLETED, finals[task.id].error
        assert not [secret for secret in secrets if secret in str(events)]
    for name, task in placed.items():
        final = finals[task.id]
        assert final.assigned_agent == nodes[name].identity
        assert "PATH=" in final.output
        assert not [secret for secret in secrets if secret in final.output]
        assert "AGENTMESH_NODE_TOKEN" not in final.output  # not even its name
    assert "first leaf" in finals[tree.id].output
    assert "second leaf" in finals[tree.id].output
    assert "Linux" in finals[tree.id].output
    assert [child.state for child in children.tasks] == [COMPLETED, COMPLETED]

    # Refused: the wrong token or none; with TLS, no client certificate or no TLS at all.
    target = scheduler.address
    assert await refusal(target, token=None, tls=transport.client) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await refusal(target, token="not-the-token", tls=transport.client) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    if transport.secure:
        without_certificate = TlsSettings(ca_file=transport.client.ca_file)
        assert await refusal(target, token=TOKEN, tls=without_certificate) is (
            grpc.StatusCode.UNAVAILABLE
        )
        assert await refusal(target, token=TOKEN, tls=TlsSettings()) is (
            grpc.StatusCode.UNAVAILABLE
        )

    # Stopped the way an operator stops them, so that shutdown logging is covered too.
    for process in [*nodes.values(), scheduler]:
        assert await process.terminate() == 0, process.logs()
    logs = sorted(mesh.logs_dir.iterdir())
    assert len(logs) == 2 * (1 + len(NODES))
    for secret in secrets:
        assert [log.name for log in logs if secret in log.read_text(errors="replace")] == []
