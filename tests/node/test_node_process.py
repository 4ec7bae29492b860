"""`agentmesh node` as a process: reflection for grpcurl, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agentmesh.v1 import node_pb2, node_pb2_grpc, task_pb2
from tests.node.conftest import StartNodeProcess
from tests.node.test_node import collect, wait_for_file


@pytest.fixture
def node_process(
    node_processes: StartNodeProcess, tmp_path: Path
) -> tuple[subprocess.Popen[str], str]:
    return node_processes({"workdir": str(tmp_path), "max_permission_mode": "superuser"})


def test_reflection_lists_the_services(node_process: tuple[subprocess.Popen[str], str]) -> None:
    _, address = node_process
    with grpc.insecure_channel(address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "agentmesh.v1.AgentNode",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


async def test_sigterm_drains_then_exits_cleanly(
    node_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, address = node_process
    async with grpc.aio.insecure_channel(address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        command = "echo started > started.txt; while [ ! -e go ]; do sleep 0.05; done; echo done"
        call = stub.ExecuteTask(
            node_pb2.ExecuteTaskRequest(
                task_id="graceful-1",
                spec=task_pb2.TaskSpec(kind="shell", command=command, permission_mode="superuser"),
            )
        )
        await call.read()
        await wait_for_file(tmp_path / "started.txt")

        process.send_signal(signal.SIGTERM)

        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            reply = await health.Check(health_pb2.HealthCheckRequest())
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(
                stub.ExecuteTask(
                    node_pb2.ExecuteTaskRequest(
                        task_id="late-1", spec=task_pb2.TaskSpec(kind="echo", prompt="x")
                    )
                )
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        (tmp_path / "go").touch()  # the running task may finish within the grace period
        events = await collect(call)
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert "done" in "".join(e.stdout.text for e in events)
    assert process.wait(30) == 0


def _minor_faults(pid: int) -> int:
    """The process's own minor page faults so far (not its children's): /proc's minflt."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7])


async def test_streaming_output_reuses_the_node_s_buffers(
    node_processes: StartNodeProcess, tmp_path: Path
) -> None:
    """Each 1 MiB chunk passes through a few 1 MiB buffers; with glibc's defaults they went
    back to the kernel when freed, and came back as fresh pages: hundreds of page faults per
    streamed megabyte, most of the node's CPU for it (see agentmesh.allocator). Counted,
    not timed: a second run's faults, once the heap has grown to hold the chunks."""
    megabytes = 32
    process, address = node_processes(
        {
            "workdir": str(tmp_path),
            "max_permission_mode": "superuser",
            "sandbox": "none",
            "max_output_bytes": 2 * megabytes << 20,
        }
    )
    command = f"yes agentmesh | head -c {megabytes << 20}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        faults = []
        for run in range(2):
            before = _minor_faults(process.pid)
            request = node_pb2.ExecuteTaskRequest(
                task_id=f"stream-{run}",
                spec=task_pb2.TaskSpec(kind="shell", command=command, permission_mode="superuser"),
            )
            events = await collect(stub.ExecuteTask(request))
            faults.append(_minor_faults(process.pid) - before)
            assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
            assert sum(len(e.stdout.text) for e in events) == megabytes << 20

    # About 25 a megabyte here (gRPC's own buffers, the heap settling); 280 with the defaults.
    assert faults[1] < 100 * megabytes, faults
