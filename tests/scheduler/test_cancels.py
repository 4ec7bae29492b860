"""Cancels reach the node once, even when announced while the scheduler was not listening."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agentmesh.db.connect import create_pool
from agentmesh.node.service import AgentNode
from agentmesh.scheduler import notifications
from agentmesh.scheduler.store import TaskStore
from agentmesh.v1 import node_pb2, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh
from tests.support.sandboxed import host_pid

WAIT_SECONDS = 30.0


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT_SECONDS / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def start_long_task(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, node: AgentNode, workdir: Path
) -> tuple[str, int]:
    """A task running on the node; returns its id and the pid of its command."""
    command = "echo $$ > running.pid; exec sleep 300"
    spec = task_pb2.TaskSpec(kind="shell", command=command, permission_mode="superuser")
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    pid_file = workdir / "running.pid"
    await until(lambda: node.runner.running == 1 and pid_file.exists(), "the task to run")
    await until(lambda: bool(pid_file.read_text().strip()), "its pid")
    return task.id, host_pid(int(pid_file.read_text()), workdir)


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts as gone)."""
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it went while being read
        return True


def count_node_cancels(node: AgentNode, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    received: list[str] = []
    cancel = node.runner.cancel

    def counting(task_id: str) -> bool:
        received.append(task_id)
        return cancel(task_id)

    monkeypatch.setattr(node.runner, "cancel", counting)
    return received


async def test_a_cancel_is_sent_to_the_node_once(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha")
    task_id, pid = await start_long_task(stub, node, mesh.tmp_path / "alpha")
    received = count_node_cancels(node, monkeypatch)
    # Hold each request to stop the attempt until both have come: the servicer's own and
    # the NOTIFY's (on every replica, this one included).
    dispatcher = mesh.schedulers[0].dispatcher
    cancel_local = dispatcher.cancel_local
    asked: list[str] = []
    both = asyncio.Event()

    async def held(task: str) -> None:
        asked.append(task)
        if len(asked) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), WAIT_SECONDS)
        await cancel_local(task)

    monkeypatch.setattr(dispatcher, "cancel_local", held)

    canceled = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=task_id))
    await until(lambda: len(asked) == 2 and not mesh.schedulers[0].side_tasks, "both requests")

    assert canceled.state == task_pb2.TASK_STATE_CANCELED
    assert received == [task_id]
    await until(lambda: gone(pid), "the command to stop")


async def test_side_tasks_do_not_pile_up(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha", max_concurrency=1)
    scheduler = mesh.schedulers[0]
    for _ in range(3):
        task_id, pid = await start_long_task(stub, node, mesh.tmp_path / "alpha")
        (mesh.tmp_path / "alpha" / "running.pid").unlink()
        await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=task_id))
        await until(lambda pid=pid: gone(pid) and node.runner.running == 0, "the cancel")

    await until(lambda: not scheduler.side_tasks, "the cancels' side tasks to leave")


async def test_a_cancel_announced_while_not_listening_is_applied_on_reconnect(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections: list[asyncpg.Connection] = []
    listening = asyncio.Event()
    listening.set()
    reconnecting = asyncio.Event()
    connect = notifications.connect

    async def gated_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        if not listening.is_set():
            reconnecting.set()
            await listening.wait()
        conn = await connect(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(notifications, "connect", gated_connect)
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha")
    task_id, pid = await start_long_task(stub, node, mesh.tmp_path / "alpha")

    # The LISTEN connection drops, and stays down while another replica cancels the task.
    listening.clear()
    admin = await asyncpg.connect(mesh.database_uri)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", connections[-1].get_server_pid())
    finally:
        await admin.close()
    await asyncio.wait_for(reconnecting.wait(), WAIT_SECONDS)
    other_replica = await create_pool(mesh.database_uri)
    try:
        await TaskStore(other_replica, default_max_attempts=3).cancel(task_id, "elsewhere")
    finally:
        await other_replica.close()
    listening.set()

    await until(lambda: gone(pid) and node.runner.running == 0, "the cancel to reach the node")
    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
    assert task.state == task_pb2.TASK_STATE_CANCELED
