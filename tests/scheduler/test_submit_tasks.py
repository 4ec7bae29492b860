"""SubmitTasks: many tasks in one call, all or none, each as SubmitTask would store it."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from agentmesh.v1 import scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh

COMPLETED = task_pb2.TASK_STATE_COMPLETED


def echo(text: str, **fields: object) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(kind="echo", prompt=text, **fields)  # type: ignore[arg-type]


async def stored_tasks(database_uri: str) -> int:
    conn = await asyncpg.connect(database_uri)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


async def test_a_batch_comes_back_in_order_and_every_task_runs(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("alpha")
    tree = task_pb2.TaskSpec(
        description="pair", subtasks=[echo("left", description="l"), echo("right")]
    )
    specs = [echo("first"), tree, echo("third"), echo("fourth")]

    reply = await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs))

    assert [task.spec.prompt for task in reply.tasks] == ["first", "", "third", "fourth"]
    assert len(reply.tasks[1].child_ids) == 2
    assert len({task.id for task in reply.tasks}) == 4
    ended = [
        await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id, wait_seconds=20))
        for task in reply.tasks
    ]
    assert [task.state for task in ended] == [COMPLETED] * 4, [t.error for t in ended]
    assert [ended[i].output for i in (0, 2, 3)] == ["first", "third", "fourth"]
    assert "left" in ended[1].output
    assert "right" in ended[1].output


async def test_one_wrong_spec_fails_the_call_by_its_index_and_nothing_is_stored(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()
    specs = [echo("fine"), echo("also fine"), task_pb2.TaskSpec(kind="shell")]

    error = await refusal(stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("specs[2].command:"), error.details()
    assert await stored_tasks(database_uri) == 0


async def test_an_empty_call_and_one_past_the_limit_are_refused(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()

    empty = await refusal(stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest()))
    # The limit counts the tasks of every spec together, subtasks included.
    over = [task_pb2.TaskSpec(subtasks=[echo("x")] * 9)] * 100  # 1,000 tasks
    too_many = await refusal(
        stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=[*over, echo("one more")]))
    )
    at_limit = await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=over))

    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.details() == "specs: is empty: give at least one task spec"
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_many.details() == "specs: more than 1000 tasks in one request; the limit is 1000"
    assert len(at_limit.tasks) == 100
    assert await stored_tasks(database_uri) == 1000


async def test_idempotency_keys_return_the_task_that_has_them(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()
    earlier = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=echo("earlier", idempotency_key="k-old"))
    )
    specs = [
        echo("new", idempotency_key="k-new"),
        echo("again", idempotency_key="k-old"),
        echo("twice", idempotency_key="k-new"),
        echo("no key"),
    ]

    first = await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs))
    # A client that lost the answer sends the same call again.
    retried = await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs[:3]))

    ids = [task.id for task in first.tasks]
    assert ids[1] == earlier.id
    assert ids[0] == ids[2] != earlier.id
    assert first.tasks[2].spec.prompt == "new"  # the task that has the key, as stored
    assert [task.id for task in retried.tasks] == ids[:3]
    assert await stored_tasks(database_uri) == 3  # earlier, new, no key


async def test_concurrent_batches_with_the_same_keys_store_each_key_once(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()
    specs = [echo(f"keyed {i}", idempotency_key=f"k-{i}") for i in range(50)]

    replies = await asyncio.gather(
        *(stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs)) for _ in range(4))
    )

    ids = [[task.id for task in reply.tasks] for reply in replies]
    assert all(call == ids[0] for call in ids)
    assert await stored_tasks(database_uri) == 50


async def test_users_default_permission_modes_fill_the_specs_that_name_none(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.execute(
            "INSERT INTO user_profile (username, default_permissions) VALUES ('ana', 'superuser')"
        )
    finally:
        await conn.close()
    specs = [
        echo("ana's", user="ana"),
        echo("ana's, weak", user="ana", permission_mode="weak"),
        echo("bo's", user="bo"),
    ]

    reply = await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs))

    assert [task.spec.permission_mode for task in reply.tasks] == ["superuser", "weak", ""]


async def test_a_subtask_key_another_task_has_is_refused_by_name(
    mesh: Mesh, database_uri: str
) -> None:
    stub = await mesh.start_scheduler()
    await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=echo("first", idempotency_key="k")))
    tree = task_pb2.TaskSpec(subtasks=[echo("child", idempotency_key="k")])

    one = await refusal(stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=tree)))
    many = await refusal(
        stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=[echo("fine"), tree]))
    )

    for error in (one, many):
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        assert "idempotency key of a subtask is another task's" in (error.details() or "")
        assert "(idempotency_key)=(k)" in (error.details() or "")
    assert await stored_tasks(database_uri) == 1
