"""A dispatch round issues a bounded number of statements, however many tasks it starts.

The round reads the agents (with their running counts) and the ready window, claims and
starts everything it placed in one statement, and records the waiting reasons of what it
could not place in one more. A change that made any of these per task (a claim per row, a
start per attempt, a read per agent) would make the count grow with the tasks: this test
counts the statements of one round at 10 and at 150 ready tasks, on the database.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import pytest

from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.dispatching import card, dispatcher_on, hold_attempts

AGENTS = 4
SLOTS = 16
COUNTED = ("fetch", "fetchrow", "fetchval", "execute", "executemany")


class CountingPool:
    """A pool that records which asyncio task issued each statement."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements: list[tuple[asyncio.Task[Any] | None, str]] = []

    def acquire(self) -> _Acquire:
        return _Acquire(self)

    def record(self, query: str) -> None:
        self.statements.append((asyncio.current_task(), query))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _Acquire:
    def __init__(self, counting: CountingPool) -> None:
        self._counting = counting
        self._context: Any = None

    async def __aenter__(self) -> _Connection:
        self._context = self._counting._pool.acquire()
        return _Connection(await self._context.__aenter__(), self._counting)

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(*exc)


class _Connection:
    def __init__(self, conn: Any, counting: CountingPool) -> None:
        self._conn = conn
        self._counting = counting

    def transaction(self) -> Any:
        self._counting.record("BEGIN ... COMMIT")
        return self._conn.transaction()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._conn, name)
        if name not in COUNTED:
            return attribute

        async def counted(query: str, *args: Any, **kwargs: Any) -> Any:
            self._counting.record(query)
            return await attribute(query, *args, **kwargs)

        return counted


async def statements_of_one_round(
    pool: asyncpg.Pool, tasks: int, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    counting = CountingPool(pool)
    cards = [card(f"node{n}", slots=SLOTS) for n in range(AGENTS)]
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), cards, owner="counter"
    )
    # No dial: one that fails marks its agent, which would wake a round.
    await hold_attempts(dispatcher, monkeypatch)
    await dispatcher.round()  # the first look at the mesh and the keys
    await asyncio.gather(
        *(store.submit(TaskSpec(kind="echo", prompt=f"t {n}")) for n in range(tasks))
    )
    counting.statements.clear()
    dispatcher._wake.clear()  # set by the submits, which the round below reads
    this_round = asyncio.create_task(dispatcher.round())
    await this_round
    # Everything ready was read in one page: no other round follows at once.
    assert not dispatcher._wake.is_set()
    await dispatcher.stop()
    await channels.close()
    return [query for task, query in counting.statements if task is this_round]


@pytest.mark.parametrize("tasks", [10, 150])
async def test_a_round_issues_the_same_few_statements_for_10_or_150_tasks(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, tasks: int
) -> None:
    statements = await statements_of_one_round(pool, tasks, monkeypatch)

    started = await pool.fetchval("SELECT count(*) FROM tasks WHERE state = 'working'")
    assert started == min(tasks, AGENTS * SLOTS)
    # Agents, the window, claim-and-start; at 150 also the waiting reasons of the rest.
    assert len(statements) <= 4, "\n".join(" ".join(q.split())[:120] for q in statements)


async def test_a_task_starts_and_ends_without_writing_its_agents_row(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agents table is read by every round: a start or an end that rewrote an agent's
    row (its card and all) grew it by a row version per task at full speed, and made every
    replica's claims and ends wait on each other's row locks. Its heartbeats keep the row."""
    dispatcher, store, channels = await dispatcher_on(pool, [card("one", slots=4)], "rows")
    await hold_attempts(dispatcher, monkeypatch)
    try:
        version = "SELECT xmin::text FROM agents WHERE id = 'agent-one'"
        before = await pool.fetchval(version)
        task = await store.submit(TaskSpec(kind="echo", prompt="t"))
        await dispatcher.round()
        [(started, attempt)] = dispatcher.live_attempts()
        assert started == task
        assert await store.finish_attempt(
            task, attempt, "rows", "agent-one", Result(TaskState.COMPLETED), in_tree=False
        )

        assert await pool.fetchval("SELECT state FROM tasks WHERE id = $1", task) == "completed"
        assert await pool.fetchval(version) == before
    finally:
        await dispatcher.stop()
        await channels.close()
