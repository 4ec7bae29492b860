"""What a running task's mesh credential may read, as the store decides it: its own task and
that task's subtree, and nothing once the attempt it was minted for has ended."""

from __future__ import annotations

import pytest

from agentmesh.errors import FailedPrecondition, PermissionDenied, Reason
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_delegation import AGENT_TASK, as_given, running_parent
from tests.store.test_transitions import AGENT, OWNER, start


async def test_a_mesh_credential_reads_only_its_own_subtree(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given(AGENT_TASK))  # type: ignore[arg-type]
    child_attempt = await start(store, child)
    grandchild = await store.delegate(child, child_attempt.attempt, as_given())  # type: ignore[arg-type]
    stranger = await store.submit(TaskSpec(kind="echo", prompt="not yours", user="ada"))

    for target in (None, parent_id, child, grandchild):
        await store.check_mesh_reach(parent_id, attempt, target)
    assert await store.running_task_user(parent_id, attempt) == "ada"

    for outside in (stranger, "t-nope"):
        with pytest.raises(PermissionDenied, match=f"task {outside} is not a subtask of"):
            await store.check_mesh_reach(parent_id, attempt, outside)
    # The child's credential reaches down, not up to its parent.
    await store.check_mesh_reach(child, child_attempt.attempt, grandchild)
    with pytest.raises(PermissionDenied):
        await store.check_mesh_reach(child, child_attempt.attempt, parent_id)


async def test_a_mesh_credential_reads_nothing_once_its_attempt_ended(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]

    with pytest.raises(FailedPrecondition) as other_attempt:
        await store.check_mesh_reach(parent_id, attempt + 1, None)
    assert other_attempt.value.reason is Reason.TASK_NOT_RUNNING

    await store.finish_attempt(
        parent_id, attempt, OWNER, AGENT, Result(TaskState.COMPLETED), in_tree=False
    )

    for target in (None, parent_id, child):
        with pytest.raises(FailedPrecondition, match="its mesh credential ended") as ended:
            await store.check_mesh_reach(parent_id, attempt, target)
        assert ended.value.reason is Reason.TASK_NOT_RUNNING
    with pytest.raises(FailedPrecondition) as user:
        await store.running_task_user(parent_id, attempt)
    assert user.value.reason is Reason.TASK_NOT_RUNNING
