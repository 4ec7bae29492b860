"""The retention policy: delete task trees that ended long ago, with everything they own.

A tree goes when its root and every task in it ended before the cutoff, and no running
task replays one of its tasks (see retention_queries). A tree with any live member
(submitted, working, waiting for an approval), or a member that ended after the cutoff,
stays whole: a prune never takes part of a tree.

What goes with a tree: its tasks, their events, `subtasks` rows, queue rows, approval
requests and key reservations (a released reservation is only the task's own spending;
the key's use per day is in `api_key_usage`, which stays). What stays:
- `custom_knowledge` (and so its `vector_knowledge` embedding): what a task remembered is
  the user's knowledge, not the task's trace; its `task_id` becomes NULL (the foreign key
  says SET NULL), its `source` still names the task.
- `token_prediction_log`: the forecaster learns from these rows by model, agent mode and
  user, never through the task, so deleting them would make forecasts worse for nothing;
  its `task_id` becomes NULL (SET NULL too) and `agentmesh tokens report` still counts it.
- a later task's `replay_of` pointing at a deleted task becomes NULL.

Deletes go in batches of at most `batch_size` trees, each one statement and so its own
transaction: a prune of millions of rows never holds a long transaction, and the
scheduler's transactions wait on at most one batch's locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from agentmesh.db.connect import Connection
from agentmesh.scheduler import retention_queries as rq
from agentmesh.tasks.model import TaskState

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
# How often a scheduler with `scheduler.retention` set prunes.
PRUNE_INTERVAL_SECONDS = 3600.0


async def cutoff_before(conn: Connection, age: timedelta) -> datetime:
    """`age` before now, by the database's clock (the one `finished_at` was written by)."""
    now: datetime = await conn.fetchval(rq.DATABASE_NOW)
    return now - age


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed (or, dry, would remove)."""

    cutoff: datetime
    trees: int
    tasks: int
    events: int
    # How many batches deleted something (each its own transaction).
    batches: int
    dry_run: bool


async def prune(
    conn: Connection,
    cutoff: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> PruneReport:
    """Delete the trees that ended before `cutoff`, `batch_size` trees at a time; with
    `dry_run`, count what would go and delete nothing. `conn` must not be in a transaction
    (each batch commits on its own)."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is not positive")
    if dry_run:
        row = await conn.fetchrow(rq.PRUNE_PREVIEW, cutoff)
        assert row is not None  # an aggregate returns one row
        return PruneReport(cutoff, row["trees"], row["tasks"], row["events"], 0, dry_run=True)
    trees = tasks = events = batches = 0
    for state in (s for s in TaskState if s.terminal):
        after: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
        while True:
            row = await conn.fetchrow(rq.PRUNE_BATCH, cutoff, batch_size, state.value, *after)
            assert row is not None
            batches += bool(row["trees"])
            trees += row["trees"]
            tasks += row["tasks"]
            events += row["events"]
            if row["trees"]:
                log.info(
                    "pruned a batch of ended task trees",
                    extra={"trees": row["trees"], "tasks": row["tasks"], "events": row["events"]},
                )
            if row["candidates"] < batch_size:
                break  # the last roots in this state that ended before the cutoff were read
            after = (row["last_created_at"], row["last_id"])
    return PruneReport(cutoff, trees, tasks, events, batches, dry_run=False)


async def keep_pruning(
    pool: asyncpg.Pool,
    age: timedelta,
    *,
    every_seconds: float = PRUNE_INTERVAL_SECONDS,
    wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Prune the trees that ended more than `age` ago, now and then every `every_seconds`
    (a scheduler with `scheduler.retention`). Replicas may all do it: each batch skips the
    trees another one holds. A failed prune is logged and tried again next time."""
    while True:
        try:
            async with pool.acquire() as conn:
                report = await prune(conn, await cutoff_before(conn, age))
            if report.trees:
                log.info(
                    "retention: deleted the task trees that ended before the cutoff",
                    extra={"trees": report.trees, "tasks": report.tasks, "events": report.events},
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("retention: prune skipped, database unavailable: %s", exc)
        except Exception:
            log.exception("retention: prune failed")
        await wait(every_seconds)
