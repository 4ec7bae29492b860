"""A claim planned on a new database's small tables still reads only the tasks in hand once
they have grown.

The scheduler's sessions plan each statement once (db.connect.GENERIC_PLANS), and keep the
plan until the tables' statistics change, a minute or more later. On the tables of a new mesh
(a few tasks) the cheapest claim reads them whole; kept, that plan read the whole queue for
every id once a backlog arrived. The sessions' settings keep every plan on the indexes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentmesh.db.connect import GENERIC_PLANS, create_pool
from agentmesh.db.migrate import migrate
from agentmesh.scheduler import queries as q
from tests.store.test_backlog_plans import ADD_TASKS, QUEUE_WAITING

BACKLOG = 1_000
IN_HAND = 20
# Rows read in the task tables by this session: counts not yet flushed to the shared
# statistics (this transaction's, and possibly earlier ones').
ROWS_READ = """
SELECT sum(seq_tup_read + coalesce(idx_tup_fetch, 0))::int FROM pg_stat_xact_user_tables
WHERE relname IN ('tasks', 'task_queue')
"""


@pytest.fixture
async def one_session(empty_database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of one session set as the scheduler's are, on a new database (a recycled
    one's tables keep the pages of the tests before)."""
    conn = await asyncpg.connect(empty_database_uri)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await create_pool(empty_database_uri, min_size=1, max_size=1, settings=GENERIC_PLANS)
    try:
        yield pool
    finally:
        await pool.close()


async def claim_reads(pool: asyncpg.Pool, ids: list[str]) -> int:
    """Rows a claim of these tasks reads, through the session's own prepared statement (the
    plan it made at its first run); rolled back."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            before = await conn.fetchval(ROWS_READ)
            await conn.fetch(q.CLAIM_AND_START, ids, ["agent-1"] * len(ids), "owner", 30.0)
            return int(await conn.fetchval(ROWS_READ)) - int(before or 0)
        finally:
            await transaction.rollback()


async def test_a_claim_planned_on_small_tables_reads_the_tasks_in_hand_once_they_grew(
    one_session: asyncpg.Pool,
) -> None:
    async with one_session.acquire() as conn:
        await conn.execute(ADD_TASKS, "early-", "submitted", 5)
        await conn.execute(QUEUE_WAITING)
        await conn.execute("ANALYZE tasks, task_queue")
    assert await claim_reads(one_session, ["early-1"]) <= 10  # planned now, on 5 tasks

    async with one_session.acquire() as conn:
        await conn.execute(ADD_TASKS, "t", "submitted", BACKLOG)
        await conn.execute(QUEUE_WAITING)
    ids = [f"t{n}" for n in range(100, 100 + IN_HAND)]

    read = await claim_reads(one_session, ids)
    assert read <= 10 * IN_HAND, f"a claim of {IN_HAND} beside {BACKLOG} waiting read {read} rows"
