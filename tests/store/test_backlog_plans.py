"""The statements a dispatch round runs on the tasks in hand read those tasks, not the backlog.

The scheduler's sessions plan each statement once (see db.connect.GENERIC_PLANS), on the
statistics of the moment. Those are usually taken when few tasks wait: most of a mesh's
tasks have ended. A plan that trusted them to reach waiting tasks through the state index
walked every waiting task on each call once a backlog built up (a claim of 34 tasks probed
the queue 674 times, each probe once per id in hand). Taken when every queue row was claimed
(all running, or parked), they make the claim index look empty, and a plan that trusted them
read all of it. Here the statistics are taken in either state, then 3,000 tasks arrive, and
each statement, planned as the scheduler plans it, must read rows in proportion to the ids
it is given.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from agentmesh.db.connect import GENERIC_PLANS
from agentmesh.keys.reservations import WAITING_SINCE
from agentmesh.scheduler import queries as q

HISTORY = 2_000
BACKLOG = 3_000
IN_HAND = 20
# Each id in hand may cost a few index probes and rows in each table a statement touches.
ROWS_PER_ID = 20
TABLES = ("tasks", "task_queue")

ADD_TASKS = """
INSERT INTO tasks (id, kind, spec, state, user_name, priority, max_attempts, waiting_reason,
                   root_id, last_seq)
SELECT $1 || g, 'echo', '{"kind": "echo"}', $2, '', 0, 3, '', $1 || g, 1
FROM generate_series(1, $3) AS g
"""
QUEUE_WAITING = """
INSERT INTO task_queue (task_id, priority, payload)
SELECT id, 0, spec FROM tasks
WHERE state = 'submitted' AND NOT EXISTS (SELECT FROM task_queue WHERE task_id = tasks.id)
"""
PARK_ALL = f"""
UPDATE task_queue SET claimed = true, claimed_by = '{q.PARKED_FOR_AGENT}', available_at = 'infinity'
"""


@pytest.fixture(params=["few waiting", "every row claimed"])
async def stale(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A database whose statistics were taken before its backlog arrived: when 5 tasks
    waited, or when every queue row was claimed (all of them running, or parked)."""
    async with pool.acquire() as conn:
        for table in TABLES:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        await conn.execute(ADD_TASKS, "done-", "completed", HISTORY)
        await conn.execute(ADD_TASKS, "early-", "submitted", 5)
        await conn.execute(QUEUE_WAITING)
        if request.param == "every row claimed":
            await conn.execute(PARK_ALL)
        await conn.execute("ANALYZE tasks, task_queue")
        await conn.execute(ADD_TASKS, "t", "submitted", BACKLOG)
        await conn.execute(QUEUE_WAITING)
    try:
        yield pool
    finally:
        async with pool.acquire() as conn:
            for table in TABLES:
                await conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


_probes = itertools.count()


async def generic_plan(conn: asyncpg.Connection, sql: str, *arguments: object) -> Any:
    """The statement's plan as the scheduler's sessions make it (once, without the
    arguments' values, with their settings), run on the arguments and rolled back."""
    name = f"probe_{next(_probes)}"
    transaction = conn.transaction()
    await transaction.start()
    try:
        for setting, value in GENERIC_PLANS.items():
            await conn.execute(f"SET LOCAL {setting} = {value}")
        await conn.execute(f"PREPARE {name} AS {sql}")
        types = await conn.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = $1", name
        )
        literals = [
            await conn.fetchval(f"SELECT quote_nullable($1::{kind}::text) || '::{kind}'", value)
            for kind, value in zip(types, arguments, strict=True)
        ]
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({', '.join(literals)})"
        )
        return json.loads(plan) if isinstance(plan, str) else plan
    finally:
        await transaction.rollback()


def rows_read(node: dict[str, Any]) -> int:
    """Rows the plan's scans of the task tables went through, and the probes they made (a
    probe that finds nothing still descends an index)."""
    own = 0
    name = node.get("Relation Name") or node.get("Index Name") or ""
    if "Scan" in node["Node Type"] and name.startswith(TABLES):
        seen = (
            node["Actual Rows"]
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        )
        own = node["Actual Loops"] * max(seen, 1)
    return own + sum(rows_read(child) for child in node.get("Plans", ()))


def statements(ids: list[str]) -> dict[str, tuple[str, tuple[object, ...]]]:
    agents = ["agent-1"] * len(ids)
    reasons = ["every slot is busy"] * len(ids)
    return {
        "CLAIM_AND_START": (q.CLAIM_AND_START, (ids, agents, "owner", 30.0)),
        "CLAIM": (q.CLAIM, (ids, "owner")),
        "START_ATTEMPTS": (q.START_ATTEMPTS, (ids, agents, "owner", 30.0, [None] * len(ids))),
        "PARK": (q.PARK, (ids, reasons, q.PARKED_FOR_AGENT, [None] * len(ids))),
        "SET_WAITING_REASON": (q.SET_WAITING_REASON, (ids, reasons)),
        "WAITING_SINCE": (WAITING_SINCE, (ids,)),
        "SELECT_READY": (q.SELECT_READY, (len(ids), None, None)),
    }


async def test_round_statements_read_the_tasks_in_hand_not_the_backlog(
    stale: asyncpg.Pool,
) -> None:
    ids = [f"t{n}" for n in range(1_000, 1_000 + IN_HAND)]
    read: dict[str, int] = {}
    plans: dict[str, Any] = {}
    async with stale.acquire() as conn:
        for name, (sql, arguments) in statements(ids).items():
            plans[name] = await generic_plan(conn, sql, *arguments)
            read[name] = rows_read(plans[name][0]["Plan"])

    over = {name: rows for name, rows in read.items() if rows > ROWS_PER_ID * IN_HAND}
    assert not over, (
        f"rows read for {IN_HAND} tasks beside a backlog of {BACKLOG}: {read}\n"
        + "\n".join(json.dumps(plans[name], indent=1) for name in over)
    )
