"""Statement compilation benchmark: the scheduler's sessions against PostgreSQL's default JIT.

PostgreSQL compiles (JIT) any statement whose estimated cost passes `jit_above_cost`, and
the scheduler's sessions price a sequential scan out of reach (agentmesh.db.connect), so a
read of a small table without an index for it would be compiled at each run: they turn
JIT off. This prints, from one run on this machine's system PostgreSQL
(127.0.0.1:5432; the embedded server is built without JIT), the median time of two real
statements in the scheduler's sessions, and in the same with `jit` on as the server's
packages ship it, and the ratio:
- a knowledge search without pgvector (the cosine similarity of every visible embedded row,
  what a gemini task's context asks for), over 50 rows of 768 dimensions;
- the read of a node's keys when it registers, 5 keys.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db.connect import GENERIC_PLANS, connect, create_pool, quote_ident  # noqa: E402
from agentmesh.db.migrate import migrate  # noqa: E402
from agentmesh.keys.held import SELECT_HELD_ROWS  # noqa: E402
from agentmesh.memory.knowledge import EXACT_SEARCH  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN_DATABASE = "postgres"
DATABASE = "agentmesh_bench_jit"
KNOWLEDGE_ROWS = 50
DIMENSIONS = 768
KEYS = 5
RUNS = 12
WARMUP = 2  # the first runs of a session also plan the statement
USER = "ann"
SOURCE = "node:desk"


async def fill(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        for i in range(KNOWLEDGE_ROWS):
            knowledge_id = await conn.fetchval(
                "INSERT INTO custom_knowledge (label, value, visibility, user_name, source)"
                " VALUES ($1, 'a fact', 'shared', $2, 'bench') RETURNING id",
                f"fact {i}",
                USER,
            )
            await conn.execute(
                "INSERT INTO vector_knowledge (user_name, content, metadata, source, embedding)"
                " VALUES ($1, 'a fact', jsonb_build_object('knowledge_id', $2::int), 'bench',"
                " $3::real[])",
                USER,
                knowledge_id,
                [random.random() for _ in range(DIMENSIONS)],
            )
        await conn.executemany(
            "INSERT INTO api_keys (name, key_value, fingerprint, source) VALUES ($1, NULL, $2, $3)",
            [(f"desk/key{n}", f"sha256:{n:012x}", SOURCE) for n in range(KEYS)],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def median_ms(dsn: str, jit: str | None, sql: str, arguments: Sequence[object]) -> float:
    """The statement's median time in a session as the scheduler opens it (with `jit` set
    so if given), after its first runs."""
    settings = GENERIC_PLANS if jit is None else {**GENERIC_PLANS, "jit": jit}
    pool = await create_pool(dsn, min_size=1, max_size=1, settings=settings)
    try:
        async with pool.acquire() as conn:
            times = []
            for _ in range(RUNS):
                started = time.perf_counter()
                await conn.fetch(sql, *arguments)
                times.append((time.perf_counter() - started) * 1000)
    finally:
        await pool.close()
    return statistics.median(times[WARMUP:])


async def can_compile(admin: asyncpg.Connection) -> bool:
    async with admin.transaction():
        await admin.execute("SET LOCAL jit = on")
        return bool(await admin.fetchval("SELECT pg_jit_available()"))


async def main() -> None:
    try:
        admin = await asyncpg.connect(f"{SERVER}/{ADMIN_DATABASE}", timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"Statement compilation benchmark: skipped, no PostgreSQL at {SERVER} ({exc})")
        return
    try:
        if not await can_compile(admin):
            print("Statement compilation benchmark: skipped, the server has no JIT compiler")
            return
        default = await admin.fetchval("SELECT boot_val FROM pg_settings WHERE name = 'jit'")
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(DATABASE)}")
        await admin.execute(f"CREATE DATABASE {quote_ident(DATABASE)}")
        dsn = f"{SERVER}/{DATABASE}"
        try:
            await fill(dsn)
            query = [random.random() for _ in range(DIMENSIONS)]
            statements = {
                f"knowledge search without pgvector, {KNOWLEDGE_ROWS} rows": (
                    EXACT_SEARCH,
                    (USER, query, 5),
                ),
                f"a node's keys read at its registration, {KEYS} keys": (
                    SELECT_HELD_ROWS,
                    (SOURCE, [], []),
                ),
            }
            print(
                f"Statement compilation benchmark (one run, this machine, PostgreSQL {version}"
                f" at 127.0.0.1:5432, jit {default} by default; median of {RUNS - WARMUP} runs)"
            )
            for name, (sql, arguments) in statements.items():
                ours = await median_ms(dsn, None, sql, arguments)
                compiled = await median_ms(dsn, "on", sql, arguments)
                print(
                    f"  {name}: {ours:.2f} ms in the scheduler's sessions, {compiled:.2f} ms with"
                    f" jit on: ratio {ours / compiled:.3f}"
                )
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(DATABASE)} WITH (FORCE)")
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
