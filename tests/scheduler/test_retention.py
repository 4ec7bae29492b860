"""A scheduler with `scheduler.retention` deletes the task trees that ended longer ago."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.scheduler.conftest import Mesh

ENDED = """
INSERT INTO tasks (id, kind, spec, state, root_id, created_at, finished_at)
SELECT $1, 'echo', '{}', 'completed', $1, now() - age, now() - age
FROM (SELECT $2::text::interval AS age) AS a
"""


async def test_a_scheduler_with_retention_deletes_old_ended_trees(
    mesh: Mesh, database_uri: str
) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.execute(ENDED, "t-old", "40 days")
        await conn.execute(ENDED, "t-recent", "2 days")
        mesh.configure(scheduler={"retention": "30d"})
        await mesh.start_scheduler()

        async with asyncio.timeout(30):  # the scheduler prunes once it has started
            while await conn.fetchval("SELECT count(*) FROM tasks WHERE id = 't-old'"):
                await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE id = 't-recent'") == 1
    finally:
        await conn.close()
