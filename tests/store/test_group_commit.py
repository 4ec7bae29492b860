"""The store's group commits: concurrent submits, and concurrent ends of tasks without a
parent, share statements, and each still gets exactly its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
import pytest

from agentmesh.scheduler.store import AttemptEnd, TaskStore
from agentmesh.tasks.events import Result, Stdout
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.conftest import DEFAULT_MAX_ATTEMPTS
from tests.store.test_round_statements import CountingPool
from tests.store.test_transitions import AGENT, LEASE, OTHER, OWNER, lose, snapshot, start, trace

TASKS = 40


class CountingStore(TaskStore):
    """A store that counts the statements its group commits issue."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.submit_batches: list[int] = []
        self.finish_batches: list[int] = []
        super().__init__(pool, default_max_attempts=DEFAULT_MAX_ATTEMPTS)

    async def _insert_leaves(self, specs: Sequence[TaskSpec], *args: Any) -> Any:
        self.submit_batches.append(len(specs))
        return await super()._insert_leaves(specs, *args)

    async def _finish_root_attempts(self, ends: Sequence[AttemptEnd]) -> list[bool]:
        self.finish_batches.append(len(ends))
        return await super()._finish_root_attempts(ends)


@pytest.fixture
def counting(pool: asyncpg.Pool) -> CountingStore:
    return CountingStore(pool)


async def test_concurrent_submits_share_statements_and_each_gets_its_task(
    counting: CountingStore, pool: asyncpg.Pool
) -> None:
    specs = [TaskSpec(kind="echo", prompt=f"task {n}", priority=n % 3) for n in range(TASKS)]

    records = await asyncio.gather(*(counting.submit_and_get(spec) for spec in specs))

    assert [r.spec.prompt for r in records] == [s.prompt for s in specs]
    assert len({r.id for r in records}) == TASKS
    assert all(r.state is TaskState.SUBMITTED for r in records)
    assert sum(counting.submit_batches) == TASKS
    assert len(counting.submit_batches) < TASKS, counting.submit_batches
    queued = await pool.fetch("SELECT task_id, priority FROM task_queue")
    assert {(row["task_id"], row["priority"]) for row in queued} == {
        (r.id, r.spec.priority) for r in records
    }
    for record in records:
        assert [e.payload.KIND for e in await trace(counting, record.id)] == ["status"]


async def test_submits_with_an_idempotency_key_go_alone(
    counting: CountingStore, pool: asyncpg.Pool
) -> None:
    """A key already taken fails its own statement only, never a batch of others."""
    keyed = TaskSpec(kind="echo", prompt="once", idempotency_key="k-1")
    plain = [TaskSpec(kind="echo", prompt=f"p {n}") for n in range(5)]

    ids = await asyncio.gather(
        counting.submit(keyed), counting.submit(keyed), *(counting.submit(s) for s in plain)
    )

    assert ids[0] == ids[1]
    assert len(set(ids[2:])) == 5
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 5 + 1


async def test_concurrent_ends_share_statements_and_each_ends_exactly_once(
    counting: CountingStore,
) -> None:
    ids = [await counting.submit(TaskSpec(kind="echo", prompt=f"t {n}")) for n in range(TASKS)]
    attempts = [await start(counting, task_id) for task_id in ids]
    # One attempt superseded (lost, then started again) and one owned by another scheduler:
    # their results, in the same batches as the rest, must change nothing.
    stale = attempts[3]
    await lose(counting, stale)
    current = await start(counting, stale.task_id)
    foreign_id = await counting.submit(TaskSpec(kind="echo", prompt="theirs"))
    foreign = await start(counting, foreign_id, owner=OTHER, lease=LEASE)
    before = {
        stale.task_id: await snapshot(counting, stale.task_id),
        foreign_id: await snapshot(counting, foreign_id),
    }

    def result(n: int) -> Result:
        return Result(TaskState.COMPLETED, output=f"out {n}")

    outcomes = await asyncio.gather(
        *(
            counting.finish_attempt(
                a.task_id, a.attempt, OWNER, AGENT, result(n), in_tree=False,
                trail=[Stdout(f"line {n}")], after_seq=a.last_seq,
            )
            for n, a in enumerate(attempts)
        ),
        counting.finish_attempt(
            foreign_id, foreign.attempt, OWNER, AGENT, result(-1), in_tree=False
        ),
    )  # fmt: skip

    assert outcomes == [n != 3 for n in range(TASKS)] + [False]
    assert len(counting.finish_batches) < TASKS, counting.finish_batches
    for n, attempt in enumerate(attempts):
        if n == 3:
            continue
        record = await counting.get(attempt.task_id)
        assert (record.state, record.output) == (TaskState.COMPLETED, f"out {n}")
        events = await trace(counting, attempt.task_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.payload for e in events[attempt.last_seq :]] == [Stdout(f"line {n}"), result(n)]
    assert await snapshot(counting, stale.task_id) == before[stale.task_id]
    assert await snapshot(counting, foreign_id) == before[foreign_id]
    # The superseded task's current attempt still ends it, once.
    assert await counting.finish_attempt(
        current.task_id, current.attempt, OWNER, AGENT, result(3), in_tree=False
    )
    assert not await counting.finish_attempt(
        current.task_id, current.attempt, OWNER, AGENT, result(3), in_tree=False
    )


async def test_a_root_tasks_end_is_one_statement_with_its_trail(pool: asyncpg.Pool) -> None:
    """The fast path's point: the result, the events not written yet and the task's end go
    in together, not as a transaction of several statements."""
    counting = CountingPool(pool)
    store = TaskStore(cast(asyncpg.Pool, counting), default_max_attempts=DEFAULT_MAX_ATTEMPTS)
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi"))
    attempt = await start(store, task_id)
    done = Result(TaskState.COMPLETED, output="hi")
    counting.statements.clear()

    assert await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, done, in_tree=False,
        trail=[Stdout("hi")], after_seq=attempt.last_seq,
    )  # fmt: skip

    assert len(counting.statements) == 1, counting.statements
    assert (await store.get(task_id)).state is TaskState.COMPLETED
    assert [e.payload for e in await trace(store, task_id)][-2:] == [Stdout("hi"), done]
