"""Every SQL statement of the retention policy (`agentmesh db prune`), by name.

A tree may go when it is over: its root ended before the cutoff, every member of it (its
subtasks, delegated or not, at any depth: the tasks whose `root_id` is the root) ended
before the cutoff too, and no task that still runs replays one of its tasks. The root's
row is the tree's lock (see queries.LOCK_TREE): a batch locks the roots it takes and skips
any someone else holds. No ended task becomes live again, and a live tree is never
eligible, so what a batch saw stays true until it commits.
"""

from __future__ import annotations

from agentmesh.scheduler.queries import TERMINAL

DATABASE_NOW = "SELECT now()"

# $1: the cutoff. A tree's members come through tasks_tree_members_idx (0013).
_ELIGIBLE = f"""
  AND r.parent_id IS NULL AND coalesce(r.finished_at, r.updated_at) < $1
  AND NOT EXISTS (
      SELECT 1 FROM tasks m
      WHERE m.root_id = r.id AND m.id <> m.root_id
        AND (m.state NOT IN {TERMINAL} OR coalesce(m.finished_at, m.updated_at) >= $1)
  )
  AND NOT EXISTS (
      SELECT 1 FROM tasks p WHERE p.replay_of = r.id AND p.state NOT IN {TERMINAL}
  )
  AND NOT EXISTS (
      SELECT 1 FROM tasks m JOIN tasks p ON p.replay_of = m.id
      WHERE m.root_id = r.id AND m.id <> m.root_id AND p.state NOT IN {TERMINAL}
  )
"""

# One batch, in one statement (its own transaction): the next $2 tasks in state $3 created
# before the cutoff, in the order of tasks_state_created_idx after the one at ($4, $5) (the
# last one the previous batch read; the earliest time and '' at first): a prune reads that
# index once, a bounded slice a batch, never again over the rows it deleted. Of those, the
# eligible trees' roots (locked; one another transaction holds is skipped) go, with their
# trees: events by key, then tasks. The foreign keys take the rest with them (subtasks, queue
# rows, approval_requests and key_reservations cascade) and unlink what stays
# (custom_knowledge, token_prediction_log, a later replay's replay_of: SET NULL).
# Returns how many candidates were read, how many trees, tasks and events went, and the
# last candidate (where the next batch starts).
PRUNE_BATCH = f"""
WITH candidates AS (
    SELECT id, created_at FROM tasks
    WHERE state = $3 AND created_at < $1 AND (created_at, id) > ($4::timestamptz, $5::text)
    ORDER BY created_at, id
    LIMIT $2
), roots AS (
    SELECT r.id FROM tasks r
    WHERE r.id IN (SELECT id FROM candidates) AND r.state = $3
      {_ELIGIBLE}
    FOR UPDATE OF r SKIP LOCKED
), members AS (
    SELECT id FROM roots
    UNION ALL
    SELECT m.id FROM tasks m JOIN roots ON m.root_id = roots.id WHERE m.id <> m.root_id
), events AS (
    DELETE FROM task_events WHERE task_id = ANY (ARRAY(SELECT id FROM members)) RETURNING 1
), gone AS (
    DELETE FROM tasks WHERE id = ANY (ARRAY(SELECT id FROM members)) RETURNING 1
), last AS (
    SELECT created_at, id FROM candidates ORDER BY created_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM candidates) AS candidates, (SELECT count(*) FROM roots) AS trees,
       (SELECT count(*) FROM gone) AS tasks, (SELECT count(*) FROM events) AS events,
       (SELECT created_at FROM last) AS last_created_at, (SELECT id FROM last) AS last_id
"""

# What a prune with this cutoff would delete now (`--dry-run`), deleting nothing.
PRUNE_PREVIEW = f"""
WITH roots AS (
    SELECT r.id FROM tasks r
    WHERE r.state IN {TERMINAL} AND r.created_at < $1
      {_ELIGIBLE}
), members AS (
    SELECT id FROM roots
    UNION ALL
    SELECT m.id FROM tasks m JOIN roots ON m.root_id = roots.id WHERE m.id <> m.root_id
)
SELECT (SELECT count(*) FROM roots) AS trees, (SELECT count(*) FROM members) AS tasks,
       (SELECT count(*) FROM task_events e JOIN members ON e.task_id = members.id) AS events
"""
