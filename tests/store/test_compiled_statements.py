"""No statement of the scheduler's sessions is compiled by the server (JIT).

The scheduler's sessions price a sequential scan out of reach (db.connect.GENERIC_PLANS), so
a read of a small table without an index for it passes every cost threshold of PostgreSQL's
JIT, and a server that can compile (the packages of Debian, Ubuntu and the PostgreSQL project
can, and do by default) compiled it at each run: 60 to 160 ms of its CPU for a statement
that runs in 0.1 to 6 ms. The statement here is a real one: the read of a node's keys when it
registers, on a table that holds some.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from agentmesh.db.connect import GENERIC_PLANS, create_pool
from agentmesh.keys.held import SELECT_HELD_ROWS

SOURCE = "node:desk"
# The node's source, and no labels or fingerprints besides.
HELD_ARGUMENTS = f"'{SOURCE}', '{{}}'::text[], '{{}}'::text[]"


async def plan_of(conn: asyncpg.Connection, sql: str, arguments: str) -> dict[str, Any]:
    """The statement's plan as this session makes and runs it on these arguments (SQL
    literals), rolled back."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("PREPARE probe AS " + sql)
        text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({arguments})")
    finally:
        await transaction.rollback()
    plan: dict[str, Any] = (json.loads(text) if isinstance(text, str) else text)[0]
    return plan


async def can_compile(conn: asyncpg.Connection) -> bool:
    """Whether the server has a JIT compiler (`pg_jit_available` also asks whether this
    session's `jit` is on)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = on")
        return bool(await conn.fetchval("SELECT pg_jit_available()"))


async def add_keys(conn: asyncpg.Connection, count: int) -> None:
    await conn.executemany(
        "INSERT INTO api_keys (name, key_value, fingerprint, source) VALUES ($1, NULL, $2, $3)",
        [(f"desk/key{n}", f"sha256:{n:012x}", SOURCE) for n in range(count)],
    )


async def test_the_schedulers_sessions_do_not_compile_a_read_of_a_small_table(
    database_uri: str,
) -> None:
    pool = await create_pool(database_uri, min_size=1, max_size=1, settings=GENERIC_PLANS)
    try:
        async with pool.acquire() as conn:
            if not await can_compile(conn):
                pytest.skip("this server cannot compile statements (built without JIT)")
            await add_keys(conn, 5)
            plan = await plan_of(conn, SELECT_HELD_ROWS, HELD_ARGUMENTS)
    finally:
        await pool.close()
    assert plan["Plan"]["Actual Rows"] == 5, plan  # the statement did read the keys
    assert "JIT" not in plan, plan["JIT"]
