"""The retention policy against real PostgreSQL: `retention.prune` deletes whole task trees
that ended before the cutoff, with their rows, in batches; live trees, recent trees and
trees with a live member stay, and what users keep (knowledge, forecast history) stays."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest

from agentmesh.scheduler import retention
from agentmesh.scheduler.store import DelegatingParent, TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import OWNER, start

AGE = timedelta(days=30)
OLD = timedelta(days=40)
LEAF = TaskSpec(kind="echo", prompt="hi", user="ada")
TREE = TaskSpec(
    kind="echo",
    prompt="sum up",
    user="ada",
    subtasks=(TaskSpec(kind="echo", prompt="a"), TaskSpec(kind="echo", prompt="b")),
)


async def ended_leaf(store: TaskStore) -> str:
    """A root without subtasks that ran and completed."""
    task_id = await store.submit(LEAF)
    attempt = await start(store, task_id)
    done = Result(TaskState.COMPLETED, output="hi")
    assert await store.finish_attempt(task_id, attempt.attempt, OWNER, "agent-1", done)
    return task_id


async def ended_tree(store: TaskStore) -> str:
    """A root with two subtasks, all ended (canceled)."""
    root = await store.submit(TREE)
    await store.cancel(root, "done with it")
    return root


async def backdate(pool: asyncpg.Pool, root: str, by: timedelta = OLD) -> None:
    """Make every task of the tree `by` older: created, started and ended that long ago."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE tasks SET created_at = created_at - $2::interval,"
            " started_at = started_at - $2::interval, finished_at = finished_at - $2::interval,"
            " updated_at = updated_at - $2::interval WHERE root_id = $1",
            root,
            by,
        )


async def tree_ids(pool: asyncpg.Pool, root: str) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM tasks WHERE root_id = $1 ORDER BY id", root)
    return [row["id"] for row in rows]


async def count(pool: asyncpg.Pool, table: str, task_ids: list[str]) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE task_id = ANY($1::text[])", task_ids
            )
        )


async def prune(pool: asyncpg.Pool, **options: int | bool) -> retention.PruneReport:
    async with pool.acquire() as conn:
        cutoff = await retention.cutoff_before(conn, AGE)
        return await retention.prune(conn, cutoff, **options)  # type: ignore[arg-type]


async def test_an_old_ended_tree_goes_with_its_rows_and_what_users_keep_stays(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    root = await ended_tree(store)
    members = await tree_ids(pool, root)
    child = next(task_id for task_id in members if task_id != root)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO approval_requests (task_id, attempt, command, rule, mode, answer)"
            " VALUES ($1, 1, 'rm -r build', 'destructive', 'weak', 'approved')",
            child,
        )
        await conn.execute(
            "INSERT INTO key_reservations (task_id, model, day) VALUES ($1, 'm', current_date)",
            child,
        )
        knowledge = await conn.fetchval(
            "INSERT INTO custom_knowledge (task_id, label, value) VALUES ($1, 'x', 'y')"
            " RETURNING id",
            child,
        )
        prediction = await conn.fetchval(
            "INSERT INTO token_prediction_log (task_id, model, predicted_tokens, actual_tokens)"
            " VALUES ($1, 'm', 100, 90) RETURNING id",
            child,
        )
    events = await count(pool, "task_events", members)
    await backdate(pool, root)

    report = await prune(pool)

    assert (report.trees, report.tasks, report.events) == (1, 3, events)
    assert await tree_ids(pool, root) == []
    for table in ("task_events", "approval_requests", "key_reservations", "task_queue"):
        assert await count(pool, table, members) == 0, table
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM subtasks WHERE parent_task_id = $1", root)
            == 0
        )
        kept = await conn.fetchrow(
            "SELECT task_id, value FROM custom_knowledge WHERE id = $1", knowledge
        )
        forecast = await conn.fetchrow(
            "SELECT task_id, actual_tokens FROM token_prediction_log WHERE id = $1", prediction
        )
    assert (kept["task_id"], kept["value"]) == (None, "y")
    assert (forecast["task_id"], forecast["actual_tokens"]) == (None, 90)


async def test_recent_and_live_trees_stay(store: TaskStore, pool: asyncpg.Pool) -> None:
    old = await ended_leaf(store)
    await backdate(pool, old)
    recent = await ended_tree(store)
    queued = await store.submit(LEAF)
    await backdate(pool, queued)  # submitted long ago, never ran: still live
    running = await store.submit(LEAF)
    await start(store, running)
    await backdate(pool, running)
    waiting = await store.submit(TREE)  # a root waiting for its subtasks
    await backdate(pool, waiting)
    late = await ended_leaf(store)  # created long ago, ended yesterday
    await backdate(pool, late)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE tasks SET finished_at = now() - interval '1 day' WHERE id = $1", late
        )

    report = await prune(pool)

    assert (report.trees, report.tasks) == (1, 1)
    assert await tree_ids(pool, old) == []
    for root in (recent, queued, running, waiting, late):
        assert await tree_ids(pool, root), root
    assert len(await tree_ids(pool, recent)) == 3
    assert len(await tree_ids(pool, waiting)) == 3


async def delegated_child(store: TaskStore) -> tuple[str, str]:
    root = await store.submit(LEAF)
    attempt = await start(store, root)

    def shape(parent: DelegatingParent) -> TaskSpec:
        return TaskSpec(kind="echo", prompt="child", user="ada")

    return root, await store.delegate(root, attempt.attempt, shape)


async def up_front_child(store: TaskStore) -> tuple[str, str]:
    root = await store.submit(TREE)
    return root, (await store.get(root)).child_ids[0]


MakeTree = Callable[[TaskStore], Awaitable[tuple[str, str]]]


@pytest.mark.parametrize(
    "make_tree", [delegated_child, up_front_child], ids=["delegated", "subtask"]
)
@pytest.mark.parametrize("member", ["live", "ended-after-the-cutoff"])
async def test_a_tree_whose_root_ended_long_ago_stays_while_a_member_does_not_qualify(
    store: TaskStore, pool: asyncpg.Pool, make_tree: MakeTree, member: str
) -> None:
    root, child = await make_tree(store)
    await backdate(pool, root)
    async with pool.acquire() as conn:
        # The root ended long ago, whatever its children do (as if it raced them).
        await conn.execute(
            "UPDATE tasks SET state = 'completed', lease_owner = NULL"
            " WHERE id = $1 OR (id <> $2 AND root_id = $1)",
            root,
            child,
        )
        await conn.execute(
            "UPDATE tasks SET finished_at = now() - interval '40 days' WHERE root_id = $1"
            " AND id <> $2",
            root,
            child,
        )
        if member != "live":
            await conn.execute(
                "UPDATE tasks SET state = 'failed', finished_at = now() - interval '1 day'"
                " WHERE id = $1",
                child,
            )
    before = await tree_ids(pool, root)

    report = await prune(pool)

    assert report.trees == 0
    assert await tree_ids(pool, root) == before


async def test_an_old_tree_a_running_replay_points_at_stays(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    original = await ended_leaf(store)
    await backdate(pool, original)
    replay = await store.submit(LEAF, replay_of=original)

    assert (await prune(pool)).trees == 0
    assert await tree_ids(pool, original) == [original]

    await store.cancel(replay, "enough")
    assert (await prune(pool)).trees == 1
    assert await tree_ids(pool, original) == []
    assert (await store.get(replay)).replay_of == ""


async def test_batches_take_every_old_tree_in_turn(store: TaskStore, pool: asyncpg.Pool) -> None:
    # The oldest two completed roots are not eligible (a live child each): the first batch
    # reads them and takes nothing, the next ones read on past them.
    held = [await delegated_child(store) for _ in range(2)]
    for root, _ in held:
        await backdate(pool, root)
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE tasks SET state = 'completed', lease_owner = NULL,"
                " finished_at = now() - interval '40 days' WHERE id = $1",
                root,
            )
    roots = [await ended_leaf(store) for _ in range(5)] + [await ended_tree(store)]
    for root in roots:
        await backdate(pool, root)
    keep = await ended_leaf(store)

    report = await prune(pool, batch_size=2)

    # The completed: a batch that takes nothing, then the 5 leaves in 2, 2, 1; the canceled
    # tree in 1.
    assert (report.trees, report.tasks, report.batches) == (6, 8, 4)
    for root in roots:
        assert await tree_ids(pool, root) == []
    assert await tree_ids(pool, keep) == [keep]
    for root, child in held:
        assert await tree_ids(pool, root) == sorted([root, child])


async def test_a_dry_run_counts_and_deletes_nothing(store: TaskStore, pool: asyncpg.Pool) -> None:
    roots = [await ended_tree(store), await ended_leaf(store)]
    for root in roots:
        await backdate(pool, root)
    await ended_leaf(store)  # recent
    async with pool.acquire() as conn:
        before = await conn.fetch("SELECT * FROM tasks ORDER BY id")
        events = await conn.fetchval("SELECT count(*) FROM task_events")

    dry = await prune(pool, dry_run=True)

    async with pool.acquire() as conn:
        assert await conn.fetch("SELECT * FROM tasks ORDER BY id") == before
        assert await conn.fetchval("SELECT count(*) FROM task_events") == events
    report = await prune(pool)
    assert (dry.trees, dry.tasks, dry.events) == (report.trees, report.tasks, report.events)
    assert (dry.dry_run, dry.trees, dry.tasks) == (True, 2, 4)


class Stop(Exception):
    """Ends keep_pruning's loop from its wait."""


async def test_keep_pruning_prunes_at_once_then_after_every_wait(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    first = await ended_leaf(store)
    await backdate(pool, first)
    later: list[str] = []
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)
        assert await tree_ids(pool, first) == []  # pruned before the first wait
        if len(waits) == 2:
            raise Stop
        later.append(await ended_leaf(store))  # ends old while the loop waits
        await backdate(pool, later[0])

    with pytest.raises(Stop):
        await retention.keep_pruning(pool, AGE, every_seconds=60.0, wait=wait)

    assert waits == [60.0, 60.0]
    assert await tree_ids(pool, later[0]) == []
