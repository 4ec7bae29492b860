"""The mesh as separate processes, through crashes: nodes, schedulers and PostgreSQL go away.

Every test runs `agentmesh scheduler` and `agentmesh node` as real processes on a fresh
database, kills some of them (`kill -9`, the hard case) and checks what a user sees: every
task ends completed, on a node that fits it, with exactly one result in its trace.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from agentmesh.db import embedded
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.support.databases import Server
from tests.support.processes import MeshProcess, ProcessHarness, free_port

pytestmark = pytest.mark.slow

COMPLETED = task_pb2.TASK_STATE_COMPLETED
HEARTBEAT_SECONDS = 0.3
LEASE_SECONDS = 3
RUN_TIMEOUT = 90.0
# Errors a poll may meet while a process or the database is restarting: try again.
TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, grpc.aio.AioRpcError)


@pytest.fixture
async def mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[ProcessHarness]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        "node": {
            "heartbeat_interval_seconds": HEARTBEAT_SECONDS,
            "workdir": str(workdir),
            "shutdown_grace_seconds": 2,
        },
        "scheduler": {
            "heartbeat_interval_seconds": HEARTBEAT_SECONDS,
            "lease_seconds": LEASE_SECONDS,
        },
    }
    async with ProcessHarness(tmp_path, database_uri, config) as harness:
        yield harness
    print(harness.describe())  # pytest shows it when the test fails


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class TaskTrace:
    """One task's row and what its trace holds, from the database."""

    task_id: str
    state: str
    attempt: int
    results: int  # `result` events
    runs: int  # executions a node reported ("running on ..." status events)


async def _fetch(database_uri: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_uri, timeout=10)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def traces(database_uri: str) -> dict[str, TaskTrace]:
    rows = await _fetch(
        database_uri,
        """
        SELECT t.id, t.state, t.attempt,
               count(e.seq) FILTER (WHERE e.kind = 'result') AS results,
               count(e.seq) FILTER (
                   WHERE e.kind = 'status' AND e.agent_id IS NOT NULL
                     AND e.payload->>'message' LIKE 'running on %'
               ) AS runs
        FROM tasks t LEFT JOIN task_events e ON e.task_id = t.id
        GROUP BY t.id
        """,
    )
    return {
        row["id"]: TaskTrace(row["id"], row["state"], row["attempt"], row["results"], row["runs"])
        for row in rows
    }


class StateCounter:
    """Counts tasks per state; remembers the last count or why the database did not answer."""

    def __init__(self, database_uri: str) -> None:
        self._database_uri = database_uri
        self.last: str = "nothing yet"

    async def __call__(self) -> dict[str, int] | None:
        try:
            rows = await _fetch(
                self._database_uri, "SELECT state, count(*) AS n FROM tasks GROUP BY state"
            )
        except TRANSIENT as exc:
            self.last = f"database error: {exc.__class__.__name__}: {exc}"
            return None
        states = {row["state"]: row["n"] for row in rows}
        self.last = repr(states)
        return states


async def wait_all_ended(mesh: ProcessHarness, total: int, timeout: float = RUN_TIMEOUT) -> None:
    count_states = StateCounter(mesh.database_uri)

    async def ended() -> dict[str, int] | None:
        states = await count_states()
        if states is None:
            return None
        unfinished = sum(n for state, n in states.items() if state in ("submitted", "working"))
        return states if sum(states.values()) == total and unfinished == 0 else None

    await mesh.wait_until(
        ended,
        f"all {total} tasks to end",
        timeout=timeout,
        interval=0.2,
        progress=lambda: count_states.last,
    )


async def wait_completed_at_least(mesh: ProcessHarness, count: int) -> None:
    count_states = StateCounter(mesh.database_uri)

    async def enough() -> bool:
        states = await count_states()
        return states is not None and states.get("completed", 0) >= count

    await mesh.wait_until(
        enough,
        f"{count} completed tasks",
        timeout=60,
        interval=0.05,
        progress=lambda: count_states.last,
    )


async def submit(stub: scheduler_pb2_grpc.SchedulerAsyncStub, spec: task_pb2.TaskSpec) -> str:
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=30)
    return task.id


async def submit_all(
    stubs: Sequence[scheduler_pb2_grpc.SchedulerAsyncStub], specs: Sequence[task_pb2.TaskSpec]
) -> list[str]:
    """Submit every spec at once, spread over the given schedulers."""
    return list(
        await asyncio.gather(*(submit(stubs[i % len(stubs)], spec) for i, spec in enumerate(specs)))
    )


async def list_all(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> dict[str, task_pb2.Task]:
    tasks: dict[str, task_pb2.Task] = {}
    token = ""
    while True:
        page = await stub.ListTasks(
            scheduler_pb2.ListTasksRequest(page_size=1000, page_token=token), timeout=30
        )
        tasks.update((task.id, task) for task in page.tasks)
        token = page.next_page_token
        if not token:
            return tasks


async def watch(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str
) -> list[task_pb2.TaskEvent]:
    """The task's whole trace, from its first event to its result."""

    async def collect() -> list[task_pb2.TaskEvent]:
        request = scheduler_pb2.WatchTaskRequest(task_id=task_id, after_seq=0)
        return [event async for event in stub.WatchTask(request)]

    return await asyncio.wait_for(collect(), RUN_TIMEOUT)


def sleep_or_echo(count: int, sleep: str) -> list[task_pb2.TaskSpec]:
    return [
        task_pb2.TaskSpec(kind="shell", command=f"sleep {sleep}", permission_mode="superuser")
        if i % 2 == 0
        else task_pb2.TaskSpec(kind="echo", prompt=f"echo {i}")
        for i in range(count)
    ]


def assert_each_completed_once(
    ids: Iterable[str], found: dict[str, TaskTrace], mesh: ProcessHarness
) -> None:
    ids = list(ids)
    assert set(found) == set(ids)
    not_completed = {t.task_id: t.state for t in found.values() if t.state != "completed"}
    assert not not_completed, f"{not_completed}\n{mesh.describe()}"
    results = {t.task_id: t.results for t in found.values() if t.results != 1}
    assert not results, f"tasks without exactly one result event: {results}"


# ----------------------------------------------------------------------------- tests


async def test_mixed_tasks_run_on_nodes_with_the_capabilities_they_require(
    mesh: ProcessHarness,
) -> None:
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    nodes = {
        capability: await mesh.start_node(
            f"{capability}-node", scheduler=scheduler.address, capabilities=[capability]
        )
        for capability in ("cpu", "gpu", "disk")
    }
    await mesh.wait_registered(stub, nodes.values())
    commands = ["", "uname -a", "ls /"]  # "" is an echo task
    requirements: list[list[str]] = [[], ["cpu"], ["gpu"], ["disk"]]
    specs = [
        task_pb2.TaskSpec(
            kind="shell" if commands[i % 3] else "echo",
            command=commands[i % 3],
            prompt=f"task {i}",
            required_capabilities=requirements[i % 4],
        )
        for i in range(200)
    ]

    ids = await submit_all([stub], specs)
    await wait_all_ended(mesh, len(specs))

    tasks = await list_all(stub)
    for task_id, spec in zip(ids, specs, strict=True):
        task = tasks[task_id]
        assert task.state == COMPLETED, (spec, task.error)
        fitting = {
            node.identity
            for capability, node in nodes.items()
            if set(spec.required_capabilities) <= {capability}
        }
        assert task.assigned_agent in fitting, (spec, task.assigned_agent)
        if spec.kind == "echo":
            assert task.output == spec.prompt
        elif spec.command == "uname -a":
            assert task.output.startswith("Linux")
        else:
            assert "usr" in task.output.split()
    assert {task.assigned_agent for task in tasks.values()} == {n.identity for n in nodes.values()}
    assert_each_completed_once(ids, await traces(mesh.database_uri), mesh)


async def test_task_waits_for_a_capability_until_a_node_with_it_joins(
    mesh: ProcessHarness,
) -> None:
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    plain = await mesh.start_node("plain", scheduler=scheduler.address, capabilities=["cpu"])
    await mesh.wait_registered(stub, [plain])

    task_id = await submit(
        stub, task_pb2.TaskSpec(kind="echo", prompt="needs gpu", required_capabilities=["gpu"])
    )

    async def waiting_reason() -> str:
        task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
        assert task.state == task_pb2.TASK_STATE_SUBMITTED
        return task.waiting_reason

    reason = await mesh.wait_until(waiting_reason, "a waiting reason", timeout=30)
    assert reason == "no online agent has capability gpu"

    gpu = await mesh.start_node("gpu-box", scheduler=scheduler.address, capabilities=["gpu"])
    events = await watch(stub, task_id)

    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
    assert task.state == COMPLETED
    assert task.assigned_agent == gpu.identity
    assert task.output == "needs gpu"
    assert task.waiting_reason == ""
    assert events[-1].result.state == COMPLETED


async def test_a_killed_node_s_task_completes_on_the_other_node(mesh: ProcessHarness) -> None:
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    nodes = [await mesh.start_node(name, scheduler=scheduler.address) for name in ("one", "two")]
    await mesh.wait_registered(stub, nodes)
    task_id = await submit(
        stub,
        task_pb2.TaskSpec(kind="shell", command="sleep 5; echo done", permission_mode="superuser"),
    )

    async def running_on() -> MeshProcess | None:
        rows = await _fetch(
            mesh.database_uri,
            "SELECT agent_id FROM task_events"
            " WHERE task_id = $1 AND attempt = 1 AND agent_id IS NOT NULL",
            task_id,
        )
        agents = {row["agent_id"] for row in rows}
        return next((node for node in nodes if node.identity in agents), None)

    first = await mesh.wait_until(running_on, "the task to start on a node", timeout=30)
    (other,) = [node for node in nodes if node is not first]
    first.kill()

    events = await watch(stub, task_id)

    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
    assert task.state == COMPLETED, f"{task.error}\n{mesh.describe()}"
    assert task.assigned_agent == other.identity
    assert task.attempt == 2
    assert task.output.strip() == "done"
    assert {event.attempt for event in events} >= {1, 2}
    assert {e.agent_id for e in events if e.attempt == 1 and e.agent_id} == {first.identity}
    assert {e.agent_id for e in events if e.attempt == 2 and e.agent_id} == {other.identity}
    lost = [
        e.status.message
        for e in events
        if e.WhichOneof("payload") == "status" and e.status.message.startswith("attempt 1 lost")
    ]
    assert len(lost) == 1, [e.status.message for e in events if e.WhichOneof("payload") == "status"]
    # Why, in the scheduler's words: the connection broke (not the scheduler's own failure).
    # (and it had sent events: at least the node's own "running on").
    found = re.search(r"connection to one lost \(UNAVAILABLE\) after (\d+) events", lost[0])
    assert found is not None, lost[0]
    assert int(found[1]) >= 1, lost[0]
    assert [e.WhichOneof("payload") for e in events].count("result") == 1
    assert events[-1].result.state == COMPLETED
    assert_each_completed_once([task_id], await traces(mesh.database_uri), mesh)


async def test_a_frozen_node_s_task_completes_on_the_other_node(mesh: ProcessHarness) -> None:
    # A node that stops answering without closing its connections (a host that froze or
    # lost its network; here SIGSTOP: the kernel still acknowledges TCP, nobody answers):
    # its stream never breaks by itself, and the scheduler would renew the attempt's lease
    # for ever. Keepalive pings find it dead and the task runs elsewhere.
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    nodes = [await mesh.start_node(name, scheduler=scheduler.address) for name in ("one", "two")]
    await mesh.wait_registered(stub, nodes)
    task_id = await submit(
        stub,
        task_pb2.TaskSpec(kind="shell", command="sleep 2; echo done", permission_mode="superuser"),
    )

    async def running_on() -> MeshProcess | None:
        rows = await _fetch(
            mesh.database_uri,
            "SELECT agent_id FROM task_events"
            " WHERE task_id = $1 AND attempt = 1 AND agent_id IS NOT NULL",
            task_id,
        )
        agents = {row["agent_id"] for row in rows}
        return next((node for node in nodes if node.identity in agents), None)

    first = await mesh.wait_until(running_on, "the task to start on a node", timeout=30)
    (other,) = [node for node in nodes if node is not first]
    os.killpg(first.pid, signal.SIGSTOP)

    async def lost() -> bool:
        rows = await _fetch(
            mesh.database_uri,
            "SELECT 1 FROM task_events WHERE task_id = $1 AND attempt = 1"
            " AND payload->>'message' LIKE 'attempt 1 lost%'",
            task_id,
        )
        return bool(rows)

    # Pings find it within a ping and its timeout (10 + 5 s); this bound is three times
    # that, and well short of the 70 s it took under gRPC's default ping timeout (a minute).
    await mesh.wait_until(lost, "the frozen node's attempt to be lost", timeout=45)
    events = await watch(stub, task_id)

    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
    assert task.state == COMPLETED, f"{task.error}\n{mesh.describe()}"
    assert task.assigned_agent == other.identity
    assert task.output.strip() == "done"
    assert [e.WhichOneof("payload") for e in events].count("result") == 1
    assert_each_completed_once([task_id], await traces(mesh.database_uri), mesh)


async def test_killed_scheduler_is_replaced_and_every_task_completes_once(
    mesh: ProcessHarness,
) -> None:
    # Nodes know the scheduler by address: the replacement must serve on the same one.
    listen = f"127.0.0.1:{free_port()}"
    first = await mesh.start_scheduler(listen)
    nodes = [await mesh.start_node(f"n{i}", scheduler=listen) for i in range(2)]
    await mesh.wait_registered(mesh.stub(first), nodes)
    specs = sleep_or_echo(100, "0.5")
    ids = await submit_all([mesh.stub(first)], specs)
    await wait_completed_at_least(mesh, 10)

    first.kill()
    states = await StateCounter(mesh.database_uri)()
    assert states is not None
    assert states.get("completed", 0) < len(specs), "the run ended before the scheduler died"

    second = await mesh.start_scheduler(listen)
    await wait_all_ended(mesh, len(specs))

    tasks = await list_all(mesh.stub(second))
    assert {tasks[task_id].state for task_id in ids} == {COMPLETED}
    assert_each_completed_once(ids, await traces(mesh.database_uri), mesh)


async def test_two_scheduler_replicas_run_every_task_exactly_once(mesh: ProcessHarness) -> None:
    first = await mesh.start_scheduler()
    second = await mesh.start_scheduler()
    stubs = [mesh.stub(first), mesh.stub(second)]
    # Registered with the first only: the second places on them too, from the agents table.
    nodes = [
        await mesh.start_node(f"n{i}", scheduler=first.address, max_concurrency=8) for i in range(3)
    ]
    await mesh.wait_registered(stubs[1], nodes)
    specs = [task_pb2.TaskSpec(kind="echo", prompt=f"echo {i}") for i in range(500)]

    ids = await submit_all(stubs, specs)
    await wait_all_ended(mesh, len(specs))

    found = await traces(mesh.database_uri)
    assert_each_completed_once(ids, found, mesh)
    ran_again = {
        t.task_id: (t.attempt, t.runs) for t in found.values() if (t.attempt, t.runs) != (1, 1)
    }
    assert not ran_again, f"tasks that ran more than once (attempt, runs): {ran_again}"
    tasks = await list_all(stubs[1])
    assert {tasks[task_id].output for task_id in ids} == {spec.prompt for spec in specs}


def _restart_embedded_in_a_fresh_process(data_dir: Path) -> None:
    """Bring the session's embedded server back so that later tests still have it."""
    script = "import sys; from pathlib import Path; from agentmesh.db import embedded;"
    script += " embedded.start(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", script, str(data_dir)], check=True, timeout=60)


async def test_postgres_restart_mid_run_loses_no_task(
    mesh: ProcessHarness, pg_server: Server, embedded_data_dir: Path
) -> None:
    if pg_server.name != "embedded":
        pytest.skip("restarts PostgreSQL: only the embedded server is ours to stop and start")
    scheduler = await mesh.start_scheduler()
    stub = mesh.stub(scheduler)
    nodes = [await mesh.start_node(f"n{i}", scheduler=scheduler.address) for i in range(2)]
    await mesh.wait_registered(stub, nodes)
    specs = sleep_or_echo(60, "0.5")
    ids = await submit_all([stub], specs)
    await wait_completed_at_least(mesh, 10)

    await asyncio.to_thread(embedded.stop, embedded_data_dir)
    try:

        async def outage_seen_by_clients() -> bool:
            try:
                await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=ids[0]), timeout=10)
            except grpc.aio.AioRpcError:
                return True
            return False

        await mesh.wait_until(outage_seen_by_clients, "GetTask to fail", timeout=30)
        uri = await asyncio.to_thread(embedded.start, embedded_data_dir)
        assert embedded.is_running(embedded_data_dir), (
            f"embedded.start() returned {uri} after embedded.stop(), but no server runs"
        )
    finally:
        if not embedded.is_running(embedded_data_dir):
            _restart_embedded_in_a_fresh_process(embedded_data_dir)

    await wait_all_ended(mesh, len(specs), timeout=60)
    assert_each_completed_once(ids, await traces(mesh.database_uri), mesh)
    tasks = await list_all(stub)  # the scheduler answers again
    assert {tasks[task_id].state for task_id in ids} == {COMPLETED}
