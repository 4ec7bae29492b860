"""Tasks that cannot run yet: they wait with their reason and never hold up the others."""

from __future__ import annotations

import asyncio

from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh

COMPLETED = task_pb2.TASK_STATE_COMPLETED
SUBMITTED = task_pb2.TASK_STATE_SUBMITTED
RUN_TIMEOUT = 60.0  # generous: a wait that fails, fails on its outcome, not its time


async def submit_all(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, specs: list[task_pb2.TaskSpec]
) -> list[str]:
    tasks = await asyncio.gather(
        *(stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)) for spec in specs)
    )
    return [task.id for task in tasks]


async def run_to_end(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str
) -> tuple[task_pb2.Task, list[task_pb2.TaskEvent]]:
    request = scheduler_pb2.WatchTaskRequest(task_id=task_id)
    events = [event async for event in stub.WatchTask(request, timeout=RUN_TIMEOUT)]
    return await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)), events


async def waiting(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> dict[str, task_pb2.Task]:
    reply = await stub.ListTasks(
        scheduler_pb2.ListTasksRequest(state=SUBMITTED, page_size=1000), timeout=30
    )
    return {task.id: task for task in reply.tasks}


async def waiting_reason(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> str:
    for _ in range(int(RUN_TIMEOUT / 0.05)):
        task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
        if task.waiting_reason:
            return task.waiting_reason
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never got a waiting reason")


async def test_tasks_nobody_can_run_do_not_hold_up_the_tasks_behind_them(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("plain")
    stuck = await submit_all(
        stub,
        [
            task_pb2.TaskSpec(kind="echo", prompt=f"gpu {i}", required_capabilities=["gpu"])
            for i in range(300)
        ],
    )

    (echo_id,) = await submit_all(stub, [task_pb2.TaskSpec(kind="echo", prompt="behind")])
    echo, _ = await run_to_end(stub, echo_id)

    assert echo.state == COMPLETED
    assert echo.output == "behind"
    still_waiting = await waiting(stub)
    assert set(still_waiting) == set(stuck)
    assert {t.waiting_reason for t in still_waiting.values()} == {
        "no online agent has capability gpu"
    }
    assert {t.attempt for t in still_waiting.values()} == {0}


async def test_tasks_waiting_for_a_busy_agent_hold_up_no_idle_agent_and_run_when_it_frees(
    mesh: Mesh,
) -> None:
    stub = await mesh.start_scheduler()
    gpu = await mesh.start_node("gpu", capabilities=["gpu"], max_concurrency=1)
    cpu = await mesh.start_node("cpu", max_concurrency=4)
    (blocker,) = await submit_all(
        stub,
        [
            task_pb2.TaskSpec(
                kind="shell",
                command="while [ ! -e release ]; do sleep 0.05; done",
                permission_mode="superuser",
                required_capabilities=["gpu"],
            )
        ],
    )
    for _ in range(int(RUN_TIMEOUT / 0.05)):
        if gpu.runner.running:
            break
        await asyncio.sleep(0.05)
    assert gpu.runner.running == 1
    # More than a dispatch window of tasks that only the busy agent fits.
    queued = await submit_all(
        stub,
        [
            task_pb2.TaskSpec(kind="echo", prompt=f"gpu {i}", required_capabilities=["gpu"])
            for i in range(80)
        ],
    )

    (echo_id,) = await submit_all(stub, [task_pb2.TaskSpec(kind="echo", prompt="behind")])
    echo, _ = await run_to_end(stub, echo_id)

    assert echo.state == COMPLETED
    assert echo.assigned_agent == cpu.card().agent_id
    assert set(await waiting(stub)) == set(queued)
    (mesh.tmp_path / "gpu" / "release").touch()
    ended = await asyncio.gather(*(run_to_end(stub, task_id) for task_id in queued))
    assert {task.state for task, _ in ended} == {COMPLETED}  # never parked: a slot was enough
    first, _ = await run_to_end(stub, blocker)
    assert first.state == COMPLETED


async def test_a_task_for_an_offline_host_waits_and_runs_there_when_it_returns(
    mesh: Mesh,
) -> None:
    stub = await mesh.start_scheduler()
    other = await mesh.start_node("other")
    target = await mesh.start_node("target")
    target_id = target.card().agent_id
    await target.shutdown(grace_seconds=1)
    mesh.nodes.remove(target)
    (task_id,) = await submit_all(
        stub, [task_pb2.TaskSpec(kind="echo", prompt="only there", target_host="target")]
    )

    reason = await waiting_reason(stub, task_id)
    back = await mesh.start_node("target")
    task, events = await run_to_end(stub, task_id)

    assert reason == "agent target is not online"
    assert back.card().agent_id == target_id
    assert task.state == COMPLETED
    assert task.assigned_agent == target_id
    assert task.attempt == 1
    ran_on = {e.agent_id for e in events if e.agent_id}
    assert ran_on == {target_id}, f"ran on {ran_on}, not only on the target"
    assert other.card().agent_id not in ran_on
