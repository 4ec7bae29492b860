"""The task store against PostgreSQL, without gRPC or nodes: what its guards let through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from agentmesh.db.connect import create_pool
from agentmesh.scheduler.store import StartedAttempt, TaskStore
from agentmesh.tasks.events import Payload, Stdout
from agentmesh.tasks.model import TaskSpec

OWNER = "scheduler-test"
AGENT = "agent-test"


@pytest.fixture
async def pool(database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_uri, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def started(store: TaskStore, spec: TaskSpec) -> StartedAttempt:
    task_id = await store.submit(spec)
    (attempt,) = await store.start_attempts({task_id: AGENT}, OWNER, lease_seconds=30)
    return attempt


async def append(
    store: TaskStore, attempt: StartedAttempt, batch: list[Payload], after: int
) -> int | None:
    return await store.append_many(
        attempt.task_id, attempt.attempt, OWNER, AGENT, batch, after_seq=after
    )


async def test_a_batch_sent_twice_is_written_once(pool: asyncpg.Pool) -> None:
    store = TaskStore(pool, default_max_attempts=3)
    attempt = await started(store, TaskSpec(kind="echo", prompt="hi"))
    batch: list[Payload] = [Stdout("one"), Stdout("two")]

    first = await append(store, attempt, batch, attempt.last_seq)
    # The commit succeeded but the reply was lost: the writer sends the same batch again.
    again = await append(store, attempt, batch, attempt.last_seq)
    after = await append(store, attempt, [Stdout("three")], again)

    assert first == again == attempt.last_seq + 2
    assert after == attempt.last_seq + 3
    events = await store.events_after(attempt.task_id, 0, 1000)
    assert [e.seq for e in events] == list(range(1, attempt.last_seq + 4))
    texts = [e.payload.text for e in events if isinstance(e.payload, Stdout)]
    assert texts == ["one", "two", "three"]
    assert (await store.get(attempt.task_id)).last_seq == attempt.last_seq + 3


async def test_a_superseded_attempt_writes_nothing_even_when_retrying(pool: asyncpg.Pool) -> None:
    store = TaskStore(pool, default_max_attempts=3)
    attempt = await started(store, TaskSpec(kind="echo", prompt="hi"))
    written = await append(store, attempt, [Stdout("one")], attempt.last_seq)
    await store.retry_attempt(
        attempt.task_id, attempt.attempt, OWNER, "node lost", backoff_seconds=0
    )
    before = await store.events_after(attempt.task_id, 0, 1000)

    assert written is not None
    assert await append(store, attempt, [Stdout("one")], attempt.last_seq) is None
    assert await append(store, attempt, [Stdout("late")], written) is None
    assert await store.events_after(attempt.task_id, 0, 1000) == before


async def test_parked_tasks_leave_the_dispatch_window_until_unparked(pool: asyncpg.Pool) -> None:
    store = TaskStore(pool, default_max_attempts=3)
    ids = [await store.submit(TaskSpec(kind="echo", prompt=f"p{i}")) for i in range(6)]
    running = await started(store, TaskSpec(kind="echo", prompt="running"))

    parked = await store.park({i: "no online agent has capability gpu" for i in ids[:4]}, "agent")
    parked += await store.park({ids[4]: "no API key available: none", running.task_id: "x"}, "key")

    assert parked == 5  # a claimed (running) task's row is not parked
    assert [t.task_id for t in await store.ready(100)] == [ids[5]]
    assert (await store.get(ids[0])).waiting_reason == "no online agent has capability gpu"
    await store.unpark("key")
    assert [t.task_id for t in await store.ready(100)] == [ids[4], ids[5]]
    await store.unpark("agent", "key")
    assert [t.task_id for t in await store.ready(100)] == ids
    page = await store.ready(2, after=(await store.ready(100))[2].position)
    assert [t.task_id for t in page] == ids[3:5]


async def test_a_task_parked_until_a_time_comes_back_then_and_not_before(
    pool: asyncpg.Pool,
) -> None:
    store = TaskStore(pool, default_max_attempts=3)
    soon, later, forever = [await store.submit(TaskSpec(kind="gemini", prompt=p)) for p in "abc"]
    now = await pool.fetchval("SELECT now()")
    until = {soon: now - timedelta(seconds=1), later: now + timedelta(hours=1), forever: None}

    await store.park({t: "no API key has capacity" for t in until}, "key", until)
    await store.unpark_due("key")

    assert [t.task_id for t in await store.ready(100)] == [soon]
    await store.unpark_due("agent")  # another cause's rows are not looked at
    await store.unpark("key")
    assert {t.task_id for t in await store.ready(100)} == {soon, later, forever}
