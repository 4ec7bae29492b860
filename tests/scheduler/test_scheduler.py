"""The scheduler with real nodes: submit, place, stream, trace, subtasks, waiting, cancel."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end

COMPLETED = task_pb2.TASK_STATE_COMPLETED


async def test_echo_task_runs_and_its_trace_is_stored(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha")

    task, events = await run_to_end(stub, kind="echo", prompt="hello mesh")

    assert task.state == COMPLETED
    assert task.output == "hello mesh"
    assert task.assigned_agent == node.card().agent_id
    assert task.attempt == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].result.state == COMPLETED
    assert "".join(e.text.text for e in events if e.WhichOneof("payload") == "text") == "hello mesh"
    assert task.last_seq == events[-1].seq


async def test_subtasks_fan_out_and_the_parent_sees_their_outputs(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")
    await mesh.start_node("beta")

    task, events = await run_to_end(
        stub,
        description="inventory",
        subtasks=[
            task_pb2.TaskSpec(kind="shell", command="uname -s", description="kernel"),
            task_pb2.TaskSpec(kind="echo", prompt="second child", description="echo"),
            task_pb2.TaskSpec(kind="shell", command="pwd", description="where"),
        ],
    )

    assert task.state == COMPLETED, task.error
    assert len(task.child_ids) == 3
    assert "### kernel" in task.output
    assert "Linux" in task.output
    assert "second child" in task.output
    children = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=task.id))
    assert {c.state for c in children.tasks} == {COMPLETED}
    assert len({c.assigned_agent for c in children.tasks}) == 2  # spread over both nodes
    assert events[-1].result.state == COMPLETED


async def test_a_failed_child_fails_the_parent(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")

    task, _ = await run_to_end(
        stub,
        subtasks=[
            task_pb2.TaskSpec(kind="echo", prompt="fine"),
            task_pb2.TaskSpec(kind="shell", command="rm -rf /tmp/nothing"),
        ],
    )

    assert task.state == task_pb2.TASK_STATE_FAILED
    assert "rejected" in task.error


async def test_task_waits_with_its_reason_until_a_fitting_node_joins(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("plain")
    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(kind="echo", prompt="needs gpu", required_capabilities=["gpu"])
        )
    )
    for _ in range(100):
        current = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
        if current.waiting_reason:
            break
        await asyncio.sleep(0.05)
    assert current.state == task_pb2.TASK_STATE_SUBMITTED
    assert current.waiting_reason == "no online agent has capability gpu"

    gpu = await mesh.start_node("gpu-box", capabilities=["gpu"])
    events = [e async for e in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))]

    final = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
    assert final.state == COMPLETED
    assert final.assigned_agent == gpu.card().agent_id
    assert events[-1].result.state == COMPLETED


async def test_idempotency_key_returns_the_same_task(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    spec = task_pb2.TaskSpec(kind="echo", prompt="once", idempotency_key="job-42")
    first = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    second = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    assert first.id == second.id


async def test_cancel_cascades_to_children_and_the_running_node(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha")
    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                subtasks=[
                    task_pb2.TaskSpec(
                        kind="shell", command="sleep 300", permission_mode="superuser"
                    ),
                    task_pb2.TaskSpec(kind="echo", prompt="x", required_capabilities=["nowhere"]),
                ]
            )
        )
    )
    for _ in range(200):
        if node.runner.running:
            break
        await asyncio.sleep(0.05)
    assert node.runner.running == 1

    canceled = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=task.id))

    assert canceled.state == task_pb2.TASK_STATE_CANCELED
    children = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=task.id))
    assert {c.state for c in children.tasks} == {task_pb2.TASK_STATE_CANCELED}
    for _ in range(200):
        if not node.runner.running:
            break
        await asyncio.sleep(0.05)
    assert node.runner.running == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=task.id))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_task_and_bad_specs(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id="t-nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    for watch in (stub.WatchTask, stub.WatchTaskEvents):
        for request, code, words in [
            (scheduler_pb2.WatchTaskRequest(task_id="t-nope"), "NOT_FOUND", "t-nope"),
            (scheduler_pb2.WatchTaskRequest(task_id="x y"), "INVALID_ARGUMENT", "task_id"),
            (
                scheduler_pb2.WatchTaskRequest(task_id="t-nope", after_seq=-1),
                "INVALID_ARGUMENT",
                "after_seq: must not be negative",
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                [_ async for _ in watch(request)]
            assert caught.value.code().name == code
            assert words in (caught.value.details() or "")

    deep = task_pb2.TaskSpec(kind="echo", prompt="leaf")
    for _ in range(6):
        deep = task_pb2.TaskSpec(subtasks=[deep])
    cases = [
        (task_pb2.TaskSpec(), "spec.kind"),
        (
            task_pb2.TaskSpec(kind="echo", prompt="x", required_capabilities=["a b"]),
            "spec.required_capabilities[0]",
        ),
        (task_pb2.TaskSpec(subtasks=[task_pb2.TaskSpec(kind="shell")]), "spec.subtasks[0].command"),
        (deep, "spec.subtasks[0].subtasks[0].subtasks[0].subtasks[0].subtasks"),
    ]
    for spec, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(field + ":"), caught.value.details()


async def test_late_watcher_replays_the_same_trace(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")
    task, early = await run_to_end(stub, kind="shell", command="ls -la /")
    late = [e async for e in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))]
    assert late == early
    tail = [
        e
        async for e in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id, after_seq=3))
    ]
    assert tail == early[3:]
    batches = [
        b async for b in stub.WatchTaskEvents(scheduler_pb2.WatchTaskRequest(task_id=task.id))
    ]
    assert [e for b in batches for e in b.events] == early
    assert len(batches) < len(early)


async def test_a_large_trace_comes_in_batches_of_about_a_mebibyte(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")
    task, events = await run_to_end(
        stub, kind="shell", command="yes 0123456789 | head -c 5000000", permission_mode="superuser"
    )
    assert task.state == COMPLETED, task.error

    request = scheduler_pb2.WatchTaskRequest(task_id=task.id)
    batches = [batch async for batch in stub.WatchTaskEvents(request)]

    assert [e for b in batches for e in b.events] == events
    for batch in batches:  # a batch goes once it holds a mebibyte: one event more at most
        assert sum(e.ByteSize() for e in batch.events[:-1]) < 1 << 20
    # how the node cut the output into events varies (up to a mebibyte each); no batch holds
    # more than a mebibyte and its last event, so 5 MB needs at least this many
    largest = max(e.ByteSize() for e in events)
    total = sum(e.ByteSize() for e in events)
    assert len(batches) >= -(-total // ((1 << 20) + largest)) > 1
    after = scheduler_pb2.WatchTaskRequest(task_id=task.id, after_seq=events[-2].seq)
    assert [e for b in [b async for b in stub.WatchTaskEvents(after)] for e in b.events] == [
        events[-1]
    ]


async def test_list_agents_shows_registered_nodes(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha", capabilities=["inventory"])
    reply = await stub.ListAgents(scheduler_pb2.ListAgentsRequest())
    assert [a.card.name for a in reply.agents] == ["alpha"]
    assert reply.agents[0].status == "online"
    assert "inventory" in reply.agents[0].card.capabilities


async def test_list_tasks_filters_and_pages(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    ids = set()
    for i in range(7):
        spec = task_pb2.TaskSpec(kind="echo", prompt=f"p{i}", user="ana" if i % 2 else "bo")
        ids.add((await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))).id)

    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListTasks(
            scheduler_pb2.ListTasksRequest(user="ana", page_size=2, page_token=token)
        )
        assert len(page.tasks) <= 2
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 3
    assert set(seen) <= ids
    waiting = await stub.ListTasks(
        scheduler_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_SUBMITTED, page_size=100)
    )
    assert {t.id for t in waiting.tasks} == ids  # no node: all still submitted
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTasks(scheduler_pb2.ListTasksRequest(page_token="garbage"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_failed_child_cancels_its_siblings_whole_subtrees(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    node = await mesh.start_node("alpha", max_concurrency=1)
    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                subtasks=[
                    task_pb2.TaskSpec(kind="shell", command="rm -rf /tmp/nothing"),
                    task_pb2.TaskSpec(
                        subtasks=[
                            task_pb2.TaskSpec(
                                kind="echo", prompt="b1", required_capabilities=["x"]
                            ),
                            task_pb2.TaskSpec(
                                kind="echo", prompt="b2", required_capabilities=["x"]
                            ),
                        ]
                    ),
                ]
            )
        )
    )
    events = [e async for e in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))]
    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED
    branch = (await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))).child_ids[1]
    grandchildren = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=branch))
    assert {t.state for t in grandchildren.tasks} == {task_pb2.TASK_STATE_CANCELED}
    assert node.runner.running == 0


async def test_output_with_nul_characters_is_stored(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")
    task, _ = await run_to_end(
        stub, kind="shell", command="printf 'a\\0b'", permission_mode="superuser"
    )
    assert task.state == COMPLETED, task.error
    assert task.output == "a\ufffdb"
    assert task.attempt == 1
