"""`TaskSpec.remember_as`: a task that completes keeps its output as knowledge, in the
statement that ends it (nothing is kept for a task that did not complete)."""

from __future__ import annotations

import asyncpg
import pytest

from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import AGENT, OWNER, start


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
@pytest.mark.parametrize(("user", "visibility"), [("ada", "private"), ("", "shared")])
async def test_a_completed_task_with_remember_as_keeps_its_output_as_knowledge(
    store: TaskStore, pool: asyncpg.Pool, in_tree: bool, user: str, visibility: str
) -> None:
    spec = TaskSpec(kind="echo", prompt="x", user=user, remember_as="printer address")
    kept = await store.submit(spec)
    failed = await store.submit(spec)
    for task_id, result in (
        (kept, Result(TaskState.COMPLETED, output="10.0.0.7")),
        (failed, Result(TaskState.FAILED, output="10.0.0.8", error="no")),
    ):
        attempt = await start(store, task_id)
        await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, result, in_tree=in_tree)

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, label, value, source, visibility, user_name FROM custom_knowledge"
        )
    assert [dict(row) for row in rows] == [
        {
            "task_id": kept,
            "label": "printer address",
            "value": "10.0.0.7",
            "source": f"task:{kept}",
            "visibility": visibility,
            "user_name": user,
        }
    ]
