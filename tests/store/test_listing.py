"""Listing tasks as the scheduler's sessions do it: with plans made once, for any filter.

Each filter (state, user, parent, a page token, a start time) narrows the list alone and with
the others; pages follow each other without a gap or a repeat; and a filtered list is read
through the index that fits it, not by scanning the table newest first."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentmesh.db.connect import GENERIC_PLANS, create_pool
from agentmesh.scheduler import queries as q
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import start


@pytest.fixture
async def generic(database_uri: str) -> AsyncIterator[TaskStore]:
    """A store on sessions set as the scheduler's are."""
    pool = await create_pool(database_uri, min_size=1, max_size=2, settings=GENERIC_PLANS)
    try:
        assert await pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        yield TaskStore(pool, default_max_attempts=3)
    finally:
        await pool.close()


async def listed(store: TaskStore, page_size: int = 100, **filters: object) -> list[str]:
    """Every task the filters select, page after page."""
    ids: list[str] = []
    token = ""
    while True:
        page, token = await store.list_tasks(
            state=filters.get("state"),  # type: ignore[arg-type]
            user=str(filters.get("user", "")),
            parent_id=str(filters.get("parent_id", "")),
            page_size=page_size,
            page_token=token,
            created_after=filters.get("created_after"),  # type: ignore[arg-type]
        )
        ids += [record.id for record in page]
        if not token:
            return ids


async def test_each_filter_narrows_the_list_alone_and_together(generic: TaskStore) -> None:
    ana = [await generic.submit(TaskSpec(kind="echo", user="ana")) for _ in range(3)]
    bob = [await generic.submit(TaskSpec(kind="echo", user="bob")) for _ in range(2)]
    tree = await generic.submit(TaskSpec(kind="echo", subtasks=(TaskSpec(kind="echo"),) * 2))
    children = list((await generic.get(tree)).child_ids)  # not from a listing: it is tested
    assert len(children) == 2
    await start(generic, ana[0])

    assert sorted(await listed(generic)) == sorted([*ana, *bob, tree, *children])
    assert await listed(generic, user="ana") == list(reversed(ana))
    assert await listed(generic, user="ana", state=TaskState.SUBMITTED) == [ana[2], ana[1]]
    assert await listed(generic, state=TaskState.WORKING) == [tree, ana[0]]
    assert sorted(await listed(generic, parent_id=tree)) == sorted(children)
    assert await listed(generic, user="bob", parent_id=tree) == []
    since = (await generic.get(bob[0])).created_at
    assert set(await listed(generic, created_after=since)) == {*bob, tree, *children}


async def test_pages_follow_each_other_without_a_gap_or_a_repeat(generic: TaskStore) -> None:
    ids = [await generic.submit(TaskSpec(kind="echo", user="ana")) for _ in range(7)]

    for size in (1, 2, 3, 7, 8):
        assert await listed(generic, page_size=size, user="ana") == list(reversed(ids))


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"state": "submitted"}, "tasks_state_created_idx"),
        ({"user": "ana"}, "tasks_user_created_idx"),
        ({"parent": "t-x"}, "tasks_parent_idx"),
    ],
)
async def test_a_filtered_list_is_read_through_its_index(
    generic: TaskStore, pool: asyncpg.Pool, filters: dict[str, str], index: str
) -> None:
    sql, arguments = q.list_tasks(limit=50, **filters)  # type: ignore[arg-type]
    values = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in arguments)
    async with pool.acquire() as conn, conn.transaction():
        # As if the table were large: a plan that scans it whole costs too much to choose.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute(f"PREPARE listing AS {sql}")
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE listing({values})")
        await conn.execute("DEALLOCATE listing")

    assert index in json.dumps(plan), json.dumps(plan, indent=1)
