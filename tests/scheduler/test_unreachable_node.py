"""A node that heartbeats but cannot be dialled must not swallow the tasks placed on it.

Heartbeats prove only that the node reaches the scheduler, not that the scheduler reaches
the node's endpoint (a firewall, NAT, a wrong --advertise; the network namespace mesh met
it as a node advertising 0.0.0.0). Today a failed dial marks the agent offline only until
its next heartbeat, a fraction of the one-second retry delay, so the retry goes back to the
same agent and the task can burn every attempt there while another agent could run it.

The scheduler marks an agent whose endpoint refused the dial before any event unreachable:
it stays out of placement until a dial to it succeeds (its heartbeats do not bring it back),
the attempt is handed back without using one up, and a task that waits for that reason says
so in its waiting reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh
from tests.support.databases import Server
from tests.support.processes import ProcessHarness
from tests.support.sandboxed import gate as host_gate

pytestmark = [pytest.mark.slow]

COMPLETED = task_pb2.TASK_STATE_COMPLETED
# 127.0.0.0/8 is loopback, but the node listens on 127.0.0.1 only: dialling this refuses.
UNREACHABLE = "127.0.0.2:0"


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    return embedded_server


@pytest.fixture
async def mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[ProcessHarness]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        "node": {"heartbeat_interval_seconds": 0.3, "workdir": str(workdir)},
        "scheduler": {"lease_seconds": 3},
    }
    async with ProcessHarness(tmp_path, database_uri, config) as harness:
        yield harness
    print(harness.describe())  # pytest shows it when the test fails


async def collect(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str, into: list[task_pb2.TaskEvent]
) -> None:
    async for event in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id)):
        into.append(event)


@pytest.fixture
def gate() -> Iterator[Path]:
    with host_gate() as path:
        yield path


async def test_a_task_is_not_placed_again_on_an_agent_that_could_not_be_dialled(
    mesh: ProcessHarness, gate: Path
) -> None:
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    good = await mesh.start_node("good", scheduler=scheduler.address, max_concurrency=1)
    lost = await mesh.start_node("lost", scheduler=scheduler.address, advertise=UNREACHABLE)
    assert lost.address.startswith("127.0.0.2:")
    await mesh.wait_registered(stub, [good, lost])

    # `good` is kept full until the gate opens, so the task can only go to `lost` first.
    holder = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                kind="shell",
                command=f"until [ -e {gate} ]; do sleep 0.05; done; echo held",
                permission_mode="superuser",
                target_host="good",
            )
        )
    )
    holder_events: list[task_pb2.TaskEvent] = []
    watching_holder = asyncio.create_task(collect(stub, holder.id, holder_events))

    async def holder_runs() -> bool:
        return any(e.agent_id == good.identity for e in holder_events)

    await mesh.wait_until(holder_runs, "the holder to run on good", timeout=30)

    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(kind="echo", prompt="hello"))
    )
    events: list[task_pb2.TaskEvent] = []
    watching = asyncio.create_task(collect(stub, task.id, events))

    def placements() -> list[str]:
        return [
            e.status.message
            for e in events
            if e.WhichOneof("payload") == "status" and " placed on " in e.status.message
        ]

    async def decided() -> str | None:
        """Placed a second time (today), or waiting because `lost` is unreachable (fixed)."""
        if len(placements()) >= 2:
            return "placed again"
        current = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
        if current.attempt == 1 and "unreachable" in current.waiting_reason:
            return "waiting"
        return None

    await mesh.wait_until(decided, "the retry to be placed or to wait", timeout=30)
    gate.touch()
    await asyncio.wait_for(asyncio.gather(watching, watching_holder), 60)

    final = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
    assert placements()[0] == f"attempt 1 placed on {lost.identity}"
    assert [p for p in placements()[1:] if p.endswith(lost.identity)] == []
    assert final.state == COMPLETED, final.error
    assert final.assigned_agent == good.identity


async def test_an_unreachable_agent_gets_work_again_once_a_dial_succeeds(
    tmp_path: Path, database_uri: str
) -> None:
    """Heartbeats do not clear `unreachable`; the scheduler's own dial does."""
    mesh = Mesh(tmp_path, database_uri)
    try:
        stub = await mesh.start_scheduler()
        node = await mesh.start_node("desk")
        agent_id = node.card().agent_id
        conn = await asyncpg.connect(database_uri)
        try:
            await conn.execute("UPDATE agents SET status = 'unreachable' WHERE id = $1", agent_id)
            reachable_again = asyncio.Event()

            async def watch_status() -> None:
                while await conn.fetchval("SELECT status FROM agents WHERE id = $1", agent_id) != (
                    "online"
                ):
                    await asyncio.sleep(0.05)
                reachable_again.set()

            watcher = asyncio.create_task(watch_status())
            task = await stub.SubmitTask(
                scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(kind="echo", prompt="hi"))
            )
            try:
                await asyncio.wait_for(reachable_again.wait(), 30)
            finally:
                watcher.cancel()
        finally:
            await conn.close()
        async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id)):
            pass
        final = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
        assert final.state == COMPLETED, final.error
        assert final.assigned_agent == agent_id
    finally:
        await mesh.close()
