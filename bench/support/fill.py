"""Fill a migrated agentmesh database with the history of a long-lived mesh, fast.

Every row is made by `INSERT ... SELECT` over `generate_series` (no round trip per row), in
the shapes the scheduler writes them (specs and event payloads come from the same
dataclasses), and spread over the last 90 days:
- `finished` ended tasks (`t-` and 20 hex digits, as the store names them): 85 % echo,
  10 % shell, 5 % gemini; mostly completed, some failed or canceled. One in 20 is the root
  of a tree of two subtasks (with their `subtasks` rows); each task has `EVENTS_PER_TASK`
  events (status submitted, status working, output lines, the result). Finished tasks keep
  no `task_queue` row (an ending deletes it). Gemini tasks have a `key_reservations` row
  (released: all zero) and a `token_prediction_log` row; one task in 100 remembered its
  output (`custom_knowledge`); one in 200 asked its user for an approval that was answered.
- `waiting` submitted tasks that need a capability no node has, with their queue rows (the
  scheduler parks them).
- one finished task with a long trace, for replay.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import asyncpg

from agentmesh.rpc.convert import payload_to_dict
from agentmesh.scheduler.store import spec_to_json
from agentmesh.tasks.events import Result, Status, Stdout, Text, Usage
from agentmesh.tasks.model import TaskSpec, TaskState

EVENTS_PER_TASK = 10
MISSING_CAPABILITY = "gpu-a100"
FILL_USER = "ana"

# Task number i (1..N): its id, its kind, its place in a tree and its state.
_NUMBERED = """
SELECT i, 't-' || substr(md5('scale-' || i), 1, 20) AS id,
       CASE WHEN i % 20 = 7 THEN 'gemini' WHEN i % 10 = 4 THEN 'shell' ELSE 'echo' END AS kind,
       CASE WHEN i % 20 IN (2, 3) THEN 't-' || substr(md5('scale-' || (i - i % 20 + 1)), 1, 20)
       END AS parent_id,
       CASE WHEN i % 50 = 13 THEN 'failed' WHEN i % 100 = 17 THEN 'canceled'
            ELSE 'completed' END AS state,
       now() - interval '90 days' + i * ($2::float8 * interval '1 second') AS created_at
FROM generate_series(1, $1::int) AS i
"""

INSERT_TASKS = f"""
INSERT INTO tasks (id, kind, spec, state, user_name, parent_id, root_id, priority,
                   assigned_agent, attempt, max_attempts, output, error, exit_code, usage,
                   last_seq, created_at, started_at, finished_at, updated_at)
SELECT n.id, n.kind,
       $3::jsonb || jsonb_build_object('kind', n.kind, 'prompt', 'history task ' || n.i,
                                       'command', CASE WHEN n.kind = 'shell'
                                                       THEN 'ls -la /srv/' || n.i ELSE '' END),
       n.state, $5, n.parent_id, coalesce(n.parent_id, n.id), 0,
       'agent-' || (n.i % 4), 1, 3,
       CASE WHEN n.state = 'completed' THEN 'history task ' || n.i ELSE '' END,
       CASE WHEN n.state = 'failed' THEN 'exit status 1'
            WHEN n.state = 'canceled' THEN 'canceled' ELSE '' END,
       CASE WHEN n.state = 'failed' THEN 1 ELSE 0 END,
       $4::jsonb, {EVENTS_PER_TASK}, n.created_at, n.created_at + interval '20 ms',
       n.created_at + CASE WHEN n.i % 20 = 1 THEN interval '3 s' ELSE interval '1 s' END,
       n.created_at + CASE WHEN n.i % 20 = 1 THEN interval '3 s' ELSE interval '1 s' END
FROM ({_NUMBERED}) AS n
"""

INSERT_SUBTASKS = f"""
INSERT INTO subtasks (parent_task_id, child_task_id, description, status, assigned_host,
                      agent_mode, created_at, started_at, completed_at)
SELECT n.parent_id, n.id, 'step ' || n.i, n.state, 'host-' || (n.i % 4),
       CASE WHEN n.kind = 'gemini' THEN 'agentic' END,
       n.created_at AT TIME ZONE 'UTC', n.created_at AT TIME ZONE 'UTC',
       (n.created_at + interval '1 s') AT TIME ZONE 'UTC'
FROM ({_NUMBERED}) AS n WHERE n.parent_id IS NOT NULL
"""

# Ten events a task: status submitted, status working, output lines (stdout; gemini:
# text), the result. Payloads come from a table of the 60 there are (by output kind, state
# and seq), so that each row copies one instead of building it. $1..$5: the payloads of
# status submitted, status working, a stdout line, a text line and the result.
INSERT_EVENTS = f"""
WITH p AS (
    SELECT o.gemini, st.state, s.seq,
           CASE WHEN s.seq <= 2 THEN 'status' WHEN s.seq = {EVENTS_PER_TASK} THEN 'result'
                WHEN o.gemini THEN 'text' ELSE 'stdout' END AS kind,
           CASE WHEN s.seq = 1 THEN $1::jsonb WHEN s.seq = 2 THEN $2::jsonb
                WHEN s.seq = {EVENTS_PER_TASK}
                    THEN $5::jsonb || jsonb_build_object('state', st.state)
                WHEN o.gemini THEN $4::jsonb || jsonb_build_object('text', 'line ' || s.seq)
                ELSE $3::jsonb || jsonb_build_object('text', 'line ' || s.seq || E'\\n')
           END AS payload
    FROM (VALUES (true), (false)) AS o(gemini),
         (VALUES ('completed'), ('failed'), ('canceled')) AS st(state),
         generate_series(1, {EVENTS_PER_TASK}) AS s(seq)
)
INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload, created_at)
SELECT t.id, p.seq, CASE WHEN p.seq = 1 THEN 0 ELSE 1 END,
       CASE WHEN p.seq = 1 THEN NULL ELSE t.assigned_agent END, p.kind, p.payload,
       t.created_at + p.seq * interval '50 ms'
FROM tasks t JOIN p ON p.gemini = (t.kind = 'gemini') AND p.state = t.state
WHERE t.user_name = '{FILL_USER}' AND t.last_seq = {EVENTS_PER_TASK}
"""

INSERT_KEY_RESERVATIONS = f"""
INSERT INTO key_reservations (task_id, key_id, model, day, predicted_requests,
                              predicted_tokens, used_requests, used_tokens, budget)
SELECT n.id, NULL, 'gemini-2.5-flash', n.created_at::date, 3, 12000, 2, 9000 + n.i % 5000,
       100000
FROM ({_NUMBERED}) AS n WHERE n.kind = 'gemini'
"""

INSERT_PREDICTIONS = f"""
INSERT INTO token_prediction_log (task_id, model, prompt_chars, predicted_tokens,
    actual_tokens, request_timestamp, completed_at, api_key, delta, username, agent_mode,
    predicted_requests, actual_requests)
SELECT n.id, 'gemini-2.5-flash', 200 + n.i % 800, 12000, 9000 + n.i % 5000,
       n.created_at AT TIME ZONE 'UTC', n.created_at + interval '1 s', 'fp-0001',
       9000 + n.i % 5000 - 12000, $3, 'agentic', 3, 2
FROM ({_NUMBERED}) AS n WHERE n.kind = 'gemini'
"""

INSERT_KNOWLEDGE = f"""
INSERT INTO custom_knowledge (task_id, label, value, source, tags, visibility, user_name,
                              inserted_at)
SELECT n.id, 'note ' || n.i, 'history task ' || n.i, 'task:' || n.id, '{{}}', 'private', $3,
       n.created_at AT TIME ZONE 'UTC'
FROM ({_NUMBERED}) AS n WHERE n.i % 100 = 5 AND n.state = 'completed'
"""

INSERT_APPROVALS = f"""
INSERT INTO approval_requests (task_id, attempt, user_id, command, rule, mode, detail,
                               created_at, answer, answered_at, permitted)
SELECT n.id, 1, $3, 'rm -rf /srv/' || n.i, 'destructive', 'weak', '', n.created_at,
       CASE WHEN n.i % 400 = 9 THEN 'denied' ELSE 'approved' END, n.created_at,
       CASE WHEN n.i % 400 = 9 THEN NULL ELSE 'rm -rf /srv/' || n.i END
FROM ({_NUMBERED}) AS n WHERE n.i % 200 = 9
"""

# Tasks no node can run: submitted, with their first event and a ready queue row.
INSERT_WAITING = """
WITH t AS (
    INSERT INTO tasks (id, kind, spec, state, user_name, root_id, last_seq, created_at)
    SELECT 't-' || substr(md5('waiting-' || i), 1, 20), 'echo',
           $2::jsonb || jsonb_build_object('prompt', 'waiting ' || i), 'submitted', $4,
           't-' || substr(md5('waiting-' || i), 1, 20), 1, now() - interval '1 hour'
    FROM generate_series(1, $1::int) AS i
    RETURNING id, spec
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, kind, payload)
    SELECT id, 1, 0, 'status', $3::jsonb FROM t
)
INSERT INTO task_queue (task_id, priority, target_host, payload)
SELECT id, 0, NULL, spec FROM t
"""

# A finished echo task with a long trace: status, status, output lines, the result.
INSERT_LONG_TRACE = """
WITH t AS (
    INSERT INTO tasks (id, kind, spec, state, user_name, root_id, attempt, last_seq,
                       assigned_agent, output, created_at, started_at, finished_at)
    VALUES ($1, 'echo', $3::jsonb, 'completed', $7, $1, 1, $2, 'agent-0', 'long trace',
            now() - interval '1 day', now() - interval '1 day',
            now() - interval '1 day' + interval '1 minute')
    RETURNING id
)
INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload, created_at)
SELECT t.id, s.seq, CASE WHEN s.seq = 1 THEN 0 ELSE 1 END, 'agent-0',
       CASE WHEN s.seq <= 2 THEN 'status' WHEN s.seq = $2 THEN 'result' ELSE 'stdout' END,
       CASE WHEN s.seq = 1 THEN $4::jsonb WHEN s.seq = 2 THEN $5::jsonb
            WHEN s.seq = $2 THEN $6::jsonb
            ELSE jsonb_build_object('text', 'trace line ' || s.seq || E'\\n') END,
       now() - interval '1 day' + s.seq * interval '5 ms'
FROM t CROSS JOIN generate_series(1, $2::int) AS s(seq)
"""


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value)


def _spec(**fields: Any) -> str:
    return _json(spec_to_json(TaskSpec(**fields)))


def _status(state: TaskState, message: str) -> str:
    return _json(payload_to_dict(Status(state, message)))


# The trace's indexes are built after its rows go in (one sort each, not 10,000,000 inserts
# into a growing B-tree): ten times faster on the 2-core machine. They end up as compact as
# a freshly built index, not as a B-tree grown by splits; the scans that use them hardly
# differ.
TRACE_INDEXES = """
SELECT c.conname AS name, 'ALTER TABLE task_events ADD CONSTRAINT ' || quote_ident(c.conname)
       || ' ' || pg_get_constraintdef(c.oid) AS definition, true AS constraint
FROM pg_constraint c WHERE c.conrelid = 'task_events'::regclass AND c.contype = 'p'
UNION ALL
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), false
FROM pg_index i WHERE i.indrelid = 'task_events'::regclass AND NOT i.indisprimary
"""


# For the fill only: no foreign-key checks (their triggers would run 11,000,000 times on
# rows made consistent by construction), and checkpoints far apart; a checkpoint after
# puts the server back as it was.
FILL_SESSION = (
    "SET session_replication_role = replica",
    "ALTER SYSTEM SET max_wal_size = '16GB'",
    "SELECT pg_reload_conf()",
)
AFTER_FILL = (
    "RESET session_replication_role",
    "ALTER SYSTEM RESET max_wal_size",
    "SELECT pg_reload_conf()",
    "CHECKPOINT",
)


async def fill_history(conn: asyncpg.Connection, finished: int) -> dict[str, int]:
    """Insert `finished` ended tasks and what they leave behind; rows per table."""
    for statement in FILL_SESSION:
        await conn.execute(statement)
    try:
        return await _fill_history(conn, finished)
    finally:
        for statement in AFTER_FILL:
            await conn.execute(statement)


async def _fill_history(conn: asyncpg.Connection, finished: int) -> dict[str, int]:
    spacing = 90 * 86400 / finished  # seconds between two tasks' creation
    spec = _spec(kind="echo", prompt="", user=FILL_USER)
    usage = _json(dataclasses.asdict(Usage(input_tokens=12, output_tokens=30, total_tokens=42)))
    counts = {}
    counts["tasks"] = _rows(
        await conn.execute(INSERT_TASKS, finished, spacing, spec, usage, FILL_USER)
    )
    counts["subtasks"] = _rows(await conn.execute(INSERT_SUBTASKS, finished, spacing))
    payloads = (
        _status(TaskState.SUBMITTED, "submitted"),
        _status(TaskState.WORKING, "attempt 1 placed on agent-0"),
        _json(payload_to_dict(Stdout("line\n"))),
        _json(payload_to_dict(Text("line"))),
        _json(payload_to_dict(Result(TaskState.COMPLETED, output="history task"))),
    )
    indexes = await conn.fetch(TRACE_INDEXES)
    for index in indexes:
        if index["constraint"]:
            await conn.execute(f"ALTER TABLE task_events DROP CONSTRAINT {index['name']}")
        else:
            await conn.execute(f"DROP INDEX {index['name']}")
    counts["task_events"] = _rows(await conn.execute(INSERT_EVENTS, *payloads))
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for index in indexes:
        await conn.execute(index["definition"])
    await conn.execute("RESET maintenance_work_mem")
    counts["key_reservations"] = _rows(
        await conn.execute(INSERT_KEY_RESERVATIONS, finished, spacing)
    )
    counts["token_prediction_log"] = _rows(
        await conn.execute(INSERT_PREDICTIONS, finished, spacing, FILL_USER)
    )
    counts["custom_knowledge"] = _rows(
        await conn.execute(INSERT_KNOWLEDGE, finished, spacing, FILL_USER)
    )
    counts["approval_requests"] = _rows(
        await conn.execute(INSERT_APPROVALS, finished, spacing, FILL_USER)
    )
    return counts


async def fill_waiting(conn: asyncpg.Connection, waiting: int) -> int:
    """Queue `waiting` tasks that need a capability no node has; how many."""
    spec = _spec(kind="echo", user=FILL_USER, required_capabilities=(MISSING_CAPABILITY,))
    status = _status(TaskState.SUBMITTED, "submitted")
    return _rows(await conn.execute(INSERT_WAITING, waiting, spec, status, FILL_USER))


async def fill_long_trace(conn: asyncpg.Connection, task_id: str, events: int) -> None:
    """One finished task with `events` events."""
    await conn.execute(
        INSERT_LONG_TRACE,
        task_id,
        events,
        _spec(kind="echo", prompt="long trace", user=FILL_USER),
        _status(TaskState.SUBMITTED, "submitted"),
        _status(TaskState.WORKING, "attempt 1 placed on agent-0"),
        _json(payload_to_dict(Result(TaskState.COMPLETED, output="long trace"))),
        FILL_USER,
    )


def _rows(status: str) -> int:
    """The row count of a command tag ("INSERT 0 1000")."""
    return int(status.rsplit(" ", 1)[-1])
