"""What the scheduler writes into the seed's tables: subtasks, agents and the task queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end

COMPLETED = task_pb2.TASK_STATE_COMPLETED


async def _fetch(uri: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(uri)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _until(uri: str, query: str, *args: Any, timeout: float = 15.0) -> asyncpg.Record:
    """The first row of `query` once there is one (polled: the rows are the event)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await _fetch(uri, query, *args)
        if rows:
            return rows[0]
        assert asyncio.get_running_loop().time() < deadline, f"no row for: {query}"
        await asyncio.sleep(0.05)


async def test_subtasks_rows_say_where_each_child_ran(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    alpha = await mesh.start_node("alpha")
    beta = await mesh.start_node("beta")

    task, _ = await run_to_end(
        stub,
        subtasks=[
            task_pb2.TaskSpec(kind="echo", prompt="a", target_host="alpha", description="on a"),
            task_pb2.TaskSpec(kind="echo", prompt="b", target_host="beta", description="on b"),
        ],
    )

    assert task.state == COMPLETED, task.error
    rows = await _fetch(
        mesh.database_uri,
        "SELECT * FROM subtasks WHERE parent_task_id = $1 ORDER BY id",
        task.id,
    )
    assert [r["child_task_id"] for r in rows] == list(task.child_ids)
    assert [r["description"] for r in rows] == ["on a", "on b"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    # The seed's assigned_host is the host's name, not the agent id.
    assert [r["assigned_host"] for r in rows] == [alpha.card().hostname, beta.card().hostname]
    for row in rows:
        assert row["created_at"] <= row["started_at"] <= row["completed_at"]


async def test_a_new_subtask_row_is_pending(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()

    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(subtasks=[task_pb2.TaskSpec(kind="echo", prompt="x")])
        )
    )

    rows = await _fetch(
        mesh.database_uri, "SELECT status FROM subtasks WHERE parent_task_id = $1", task.id
    )
    assert [r["status"] for r in rows] == ["pending"]


async def test_agents_rows_hold_the_seed_columns_and_the_current_task(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha", capabilities=["gpu"])
    agent_id = node.card().agent_id

    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(kind="shell", command="sleep 30", permission_mode="superuser")
        )
    )
    running = await _until(
        mesh.database_uri,
        "SELECT * FROM agents WHERE id = $1 AND current_task_id IS NOT NULL",
        agent_id,
    )
    assert running["current_task_id"] == task.id
    assert running["hostname"] == node.card().hostname
    assert "gpu" in running["capabilities"]
    assert running["status"] == "online"
    assert running["ip_address"] in node.card().ip_addresses

    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=task.id))
    idle = await _until(
        mesh.database_uri,
        "SELECT * FROM agents WHERE id = $1 AND current_task_id IS NULL",
        agent_id,
    )
    assert idle["status"] == "online"


async def test_a_queue_row_carries_its_target_host_and_payload(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()

    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(kind="echo", prompt="later", target_host="elsewhere")
        )
    )

    (row,) = await _fetch(mesh.database_uri, "SELECT * FROM task_queue WHERE task_id = $1", task.id)
    assert row["target_host"] == "elsewhere"
    assert row["payload"] is not None
    assert '"prompt": "later"' in row["payload"]
    # Nobody can run it (no agent is online): its row is parked, and says so.
    assert row["claimed_by"] is None or "parked" in row["claimed_by"]
    assert row["created_at"] is not None


async def test_seed_timestamps_hold_utc_whatever_the_server_time_zone(mesh: Mesh) -> None:
    """The seed's TIMESTAMP columns have no zone: agentmesh writes UTC into them."""
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        database = await conn.fetchval("SELECT current_database()")
        # UTC+14: a session in the server's zone would be 14 hours off.
        await conn.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'Pacific/Kiritimati'")
    finally:
        await conn.close()
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha")

    task, _ = await run_to_end(
        stub, subtasks=[task_pb2.TaskSpec(kind="echo", prompt="when", description="time")]
    )

    assert task.state == COMPLETED, task.error
    now = datetime.now(UTC).replace(tzinfo=None)
    (subtask,) = await _fetch(
        mesh.database_uri, "SELECT * FROM subtasks WHERE parent_task_id = $1", task.id
    )
    (agent,) = await _fetch(
        mesh.database_uri, "SELECT * FROM agents WHERE id = $1", node.card().agent_id
    )
    for stamp in (subtask["created_at"], subtask["completed_at"], agent["last_heartbeat"]):
        assert abs(stamp - now) < timedelta(minutes=5), (stamp, now)
