"""Every SQL statement of the scheduler's task store, by name."""

from __future__ import annotations

from datetime import datetime

from agentmesh.db.notify import EVENTS_CHANNEL, QUEUE_CHANNEL, SLOT_FREED

TERMINAL = "('completed', 'failed', 'canceled', 'rejected')"


def announced(rows: str) -> str:
    """A CTE (one row) that tells watchers the tasks in `rows` (a CTE with an `id`
    column) have new events: one NOTIFY for many tasks, as few as the 8,000 bytes a payload
    may hold allow. One per task cost every listening connection a message per task."""
    return f"""(
    SELECT count(*) AS notifications FROM (
        SELECT pg_notify('{EVENTS_CHANNEL}', string_agg(id, ' '))
        FROM (SELECT id, sum(length(id) + 1) OVER (ORDER BY id) / 7900 AS part
              FROM {rows}) AS numbered
        GROUP BY part
    ) AS sent
)"""


def waiting(row: str) -> str:
    """The condition that task `row` still waits to be placed, written so that no index
    matches it: the statements that check it reach their rows by the ids in hand (primary
    key, task_queue.task_id), and must go on doing so whatever the statistics say. Taken when
    few tasks waited (the usual case: most tasks have ended), they make the state index look
    like the cheapest way in, and a plan made then (the scheduler's are made once) walked
    every waiting task on each call: during a backlog of 674, a claim of 34 probed the
    queue 674 times, each probe once per id in hand (22,916 index descents)."""
    return f"{row}.state || '' = 'submitted'"


def unclaimed(row: str) -> str:
    """The condition that queue row `row` is not claimed, written so that the claim index
    (task_queue_claim_idx, partial on NOT claimed) does not match it, for the same reason
    as `waiting`: taken when every queue row was claimed (all running, or parked), the
    statistics make that index look empty, and a plan made then read all of it, thousands of
    waiting rows, to find the few in hand. Only the dispatch window (SELECT_READY) reads
    the queue through it, in its order."""
    return f"{row}.claimed IS FALSE"


def lock_queued(ids: str, *, still_waiting: bool = True) -> str:
    """The unclaimed queue rows (`held.id`) of the tasks in `ids` (a FROM item with a
    `task_id` column), each locked with its task row, skipping any another transaction
    holds; only those whose task still waits, unless told otherwise. One lookup by key per
    id, whatever the planner thinks of the tables: a subquery that locks is never merged
    into its query, so LATERAL runs it once per id."""
    task = f" AND {waiting('t')}" if still_waiting else ""
    return f"""{ids}, LATERAL (
        SELECT q.id FROM task_queue q JOIN tasks t ON t.id = q.task_id
        WHERE q.task_id = ids.task_id AND {unclaimed("q")}{task}
        FOR UPDATE OF q, t SKIP LOCKED
    ) AS held"""


TASK_COLUMNS = """
    id, kind, spec, state, user_name, parent_id, priority, assigned_agent, attempt,
    max_attempts, waiting_reason, output, error, exit_code, usage, last_seq,
    created_at, started_at, finished_at, replay_of
"""

# A task just stored, as `TaskRecord` needs it: its spec is the one in hand (not read back).
NEW_TASK_COLUMNS = ", ".join(
    f"t.{column.strip()}" for column in TASK_COLUMNS.split(",") if column.strip() != "spec"
)

INSERT_TASK = """
INSERT INTO tasks (id, kind, spec, state, user_name, parent_id, priority, idempotency_key,
                   max_attempts, waiting_reason, root_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""
INSERT_SUBTASK = """
INSERT INTO subtasks (parent_task_id, child_task_id, description, agent_mode)
VALUES ($1, $2, $3, $4)
"""
# The seed's queue row carries the task's target host and its spec (`payload`).
ENQUEUE = """
INSERT INTO task_queue (task_id, priority, available_at, target_host, payload)
SELECT id, $2, now() + make_interval(secs => $3), nullif(spec->>'target_host', ''), spec
FROM tasks WHERE id = $1
ON CONFLICT (task_id) DO UPDATE
SET claimed = false, claimed_by = NULL, claimed_at = NULL, available_at = EXCLUDED.available_at
"""
# Every change to a tree (an ending, a cancel) first locks the tree's root row, so that
# siblings ending at once, and a cancel meanwhile, never lock each other's rows in turn.
LOCK_TREE = """
SELECT r.id FROM tasks t JOIN tasks r ON r.id = t.root_id WHERE t.id = $1 FOR UPDATE OF r
"""
# New tasks without subtasks, many in one statement (see TaskStore's group commit): each
# one's row, first event and queue entry. $1..$6 and $8 one entry per task, $7 the status
# event every one starts with, $9 the queue notification's payload (see submitted_by).
# Returns the rows as stored, with their queue entries' ids.
SUBMIT_LEAVES = f"""
WITH t AS (
    INSERT INTO tasks (id, kind, spec, state, user_name, parent_id, priority, idempotency_key,
                       max_attempts, waiting_reason, root_id, last_seq)
    SELECT i.id, i.kind, i.spec, 'submitted', i.user_name, NULL, i.priority, i.idempotency_key,
           i.max_attempts, '', i.id, 1
    FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int[], $6::int[],
                $8::text[])
         AS i(id, kind, spec, user_name, priority, max_attempts, idempotency_key)
    RETURNING {TASK_COLUMNS}
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, kind, payload)
    SELECT id, 1, 0, 'status', $7 FROM t
), q AS (
    INSERT INTO task_queue (task_id, priority, target_host, payload)
    SELECT id, priority, nullif(spec->>'target_host', ''), spec FROM t
    RETURNING task_id, id
)
SELECT {NEW_TASK_COLUMNS}, q.id AS queue_id
FROM t JOIN q ON q.task_id = t.id, (SELECT pg_notify('{QUEUE_CHANNEL}', $9)) AS woken
"""
# SUBMIT_LEAVES when some of the tasks have an agent (in $10, one entry per task, NULL for
# the others; see Dispatcher.place_new): those are stored started there, as CLAIM_AND_START
# would have started them (their first attempt leased to $11 for $12 seconds, their queue
# rows claimed, their placement events), so that their submit's statement is their claim
# and start too. It notifies as SUBMIT_LEAVES does, placed or not: the replica that placed
# them ignores its own payload, and every other replica's view of the agents no longer
# holds (those agents are busier than it knows). (Apart from SUBMIT_LEAVES,
# which a statement that places nothing keeps using: this one took a few percent longer
# for the same 8 tasks, 0.90 against 0.87 ms, and at full speed most submissions place
# nothing.)
SUBMIT_STARTED_LEAVES = f"""
WITH i AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                         $6::int[], $8::text[], $10::text[])
        AS i(id, kind, spec, user_name, priority, max_attempts, idempotency_key, agent_id)
), t AS (
    INSERT INTO tasks (id, kind, spec, state, user_name, parent_id, priority, idempotency_key,
                       max_attempts, waiting_reason, root_id, last_seq, assigned_agent,
                       attempt, lease_owner, lease_expires_at, started_at)
    SELECT i.id, i.kind, i.spec, 'submitted', i.user_name, NULL, i.priority, i.idempotency_key,
           i.max_attempts, '', i.id, 1, NULL, 0, NULL, NULL, NULL
    FROM i WHERE i.agent_id IS NULL
    UNION ALL
    SELECT i.id, i.kind, i.spec, 'working', i.user_name, NULL, i.priority, i.idempotency_key,
           i.max_attempts, '', i.id, 2, i.agent_id, 1, $11::text,
           now() + make_interval(secs => $12::float8), now()
    FROM i WHERE i.agent_id IS NOT NULL
    RETURNING {TASK_COLUMNS}
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, kind, payload)
    SELECT id, 1, 0, 'status', $7 FROM t
    UNION ALL
    SELECT id, 2, 1, 'status',
           jsonb_build_object('state', 'working',
                              'message', format('attempt 1 placed on %s', assigned_agent))
    FROM t WHERE assigned_agent IS NOT NULL
), q AS (
    INSERT INTO task_queue (task_id, priority, target_host, payload, claimed, claimed_by,
                            claimed_at)
    SELECT id, priority, nullif(spec->>'target_host', ''), spec, assigned_agent IS NOT NULL,
           CASE WHEN assigned_agent IS NOT NULL THEN $11::text END,
           CASE WHEN assigned_agent IS NOT NULL THEN now() END
    FROM t
    RETURNING task_id, id
)
SELECT {NEW_TASK_COLUMNS}, q.id AS queue_id
FROM t JOIN q ON q.task_id = t.id, (SELECT pg_notify('{QUEUE_CHANNEL}', $9)) AS woken
"""
SELECT_BY_IDEMPOTENCY_KEY = "SELECT id FROM tasks WHERE idempotency_key = $1"
SELECT_BY_IDEMPOTENCY_KEYS = """
SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1::text[])
"""
# A replay names the task it runs again (set in the transaction that submits it).
SET_REPLAY_OF = "UPDATE tasks SET replay_of = $2 WHERE id = $1"
SELECT_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
SELECT_STATE = "SELECT state FROM tasks WHERE id = $1"
SELECT_USER = "SELECT user_name FROM tasks WHERE id = $1"
SELECT_TASK_FOR_UPDATE = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE"
SELECT_CHILD_IDS = """
SELECT child_task_id FROM subtasks WHERE parent_task_id = $1 ORDER BY id
"""
SELECT_TASKS = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::text[])"
SELECT_CHILD_IDS_OF = """
SELECT parent_task_id, child_task_id FROM subtasks WHERE parent_task_id = ANY($1::text[])
ORDER BY id
"""
# The subtasks submitted up front (delegated ones are their agent's own business).
SELECT_CHILD_RESULTS = """
SELECT t.id, s.description, t.spec, t.state, t.output, t.error, t.assigned_agent
FROM subtasks s JOIN tasks t ON t.id = s.child_task_id
WHERE s.parent_task_id = $1 AND NOT t.delegated ORDER BY s.id
"""
SELECT_SUBTREE = """
WITH RECURSIVE tree AS (
    SELECT id, state, lease_owner FROM tasks WHERE id = $1
    UNION ALL
    SELECT t.id, t.state, t.lease_owner FROM tasks t JOIN tree ON t.parent_id = tree.id
)
SELECT id, state, lease_owner FROM tree
"""


def list_tasks(
    *,
    limit: int,
    state: str | None = None,
    user: str | None = None,
    parent: str | None = None,
    before: tuple[datetime, str] | None = None,
    since: datetime | None = None,
) -> tuple[str, list[object]]:
    """A page of tasks, newest first, with only the filters given (`before`: created_at
    and id of the last task of the page before): the statement and its arguments. A filter
    written in as `$1 IS NULL OR state = $1` would leave a plan made for any value (the
    scheduler's sessions keep generic plans: see db.connect) unable to use its index."""
    arguments: list[object] = []

    def argument(value: object) -> str:
        arguments.append(value)
        return f"${len(arguments)}"

    conditions = [
        f"{column} = {argument(value)}"
        for column, value in (("state", state), ("user_name", user), ("parent_id", parent))
        if value is not None
    ]
    if before is not None:
        stamp, last_id = before
        conditions.append(f"(created_at, id) < ({argument(stamp)}, {argument(last_id)})")
    if since is not None:
        conditions.append(f"created_at >= {argument(since)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    order = f"ORDER BY created_at DESC, id DESC LIMIT {argument(limit)}"
    return f"SELECT {TASK_COLUMNS} FROM tasks {where} {order}", arguments


# The dispatch window: ready queue rows in priority order, read without locking; from the
# head of the queue, or after the row at queue position ($2 priority, $3 id).
SELECT_READY = """
SELECT q.task_id, q.priority, q.id AS queue_id, t.spec, t.kind, t.parent_id, t.user_name,
       t.waiting_reason
FROM task_queue q JOIN tasks t ON t.id = q.task_id
WHERE NOT q.claimed AND q.available_at <= now()
  AND ($2::int IS NULL OR q.priority < $2 OR (q.priority = $2 AND q.id > $3))
ORDER BY q.priority DESC, q.id
LIMIT $1
"""
# A parked queue row belongs to a task nobody can run now (no agent fits it, or no API key is
# free): it is kept out of the dispatch window, whose index covers unclaimed rows only, until
# what it waits for changes. `claimed_by` says what that is.
PARKED_FOR_AGENT = "(parked: no agent fits)"
PARKED_FOR_KEY = "(parked: no API key)"
# Park rows with their waiting reasons; rows someone else holds (a claim, a cancel) are
# skipped, never waited for.
# A parked row's available_at is when it comes back by itself (a key's capacity returns, a
# task's throttle tolerance runs out); 'infinity' when only a change can bring it back.
PARK = f"""
WITH p AS (
    SELECT * FROM unnest($1::text[], $2::text[], $4::timestamptz[]) AS p(task_id, reason, until)
), locked AS (
    SELECT held.id, ids.task_id, ids.reason, ids.until
    FROM {lock_queued("p AS ids")}
), parked AS (
    UPDATE task_queue q
    SET claimed = true, claimed_by = $3, claimed_at = now(),
        available_at = coalesce(locked.until, 'infinity')
    FROM locked WHERE q.id = locked.id
    RETURNING q.id
), explained AS (
    UPDATE tasks t SET waiting_reason = locked.reason
    FROM locked
    WHERE t.id = locked.task_id AND t.waiting_reason IS DISTINCT FROM locked.reason
)
SELECT count(*) FROM parked
"""
UNPARK = """
UPDATE task_queue SET claimed = false, claimed_by = NULL, claimed_at = NULL, available_at = now()
WHERE id IN (
    SELECT id FROM task_queue WHERE claimed AND claimed_by = ANY($1::text[])
    FOR UPDATE SKIP LOCKED
)
"""
# Parked rows whose time has come (see PARK).
UNPARK_DUE = """
UPDATE task_queue SET claimed = false, claimed_by = NULL, claimed_at = NULL, available_at = now()
WHERE id IN (
    SELECT id FROM task_queue
    WHERE claimed AND claimed_by = ANY($1::text[]) AND available_at <= now()
    FOR UPDATE SKIP LOCKED
)
"""
# Claims lock the task rows too (skipping any a cancel or an ending holds), so dispatch
# never waits on a lock while holding one.
CLAIM = f"""
UPDATE task_queue SET claimed = true, claimed_by = $2, claimed_at = now()
WHERE id IN (
    SELECT held.id FROM {lock_queued("unnest($1::text[]) AS ids(task_id)", still_waiting=False)}
)
RETURNING task_id
"""
# Start the next attempt of each placed task and record where it was placed (and, for a
# gemini task, with which API key), in one go.
_START = f"""
    UPDATE tasks t
    SET state = 'working', assigned_agent = p.agent_id, attempt = t.attempt + 1,
        lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4),
        started_at = coalesce(t.started_at, now()), waiting_reason = '', updated_at = now(),
        last_seq = t.last_seq + 1, api_key_id = p.key_id, key_wait_since = NULL
    FROM {{placed}}
    WHERE t.id = p.task_id AND {waiting("t")}
    RETURNING t.id, t.attempt, t.spec, t.user_name, t.parent_id, t.last_seq, p.agent_id
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, kind, payload)
    SELECT id, last_seq, attempt, 'status',
           jsonb_build_object('state', 'working',
                              'message', format('attempt %s placed on %s', attempt, agent_id))
    FROM s
)"""
START_ATTEMPTS = f"""
WITH s AS ({
    _START.format(
        placed="unnest($1::text[], $2::text[], $5::bigint[]) AS p(task_id, agent_id, key_id)"
    )
}, n AS {announced("s")}
SELECT id, attempt, spec, user_name, parent_id, last_seq FROM s, n
"""
# A round without gemini tasks (nothing to reserve between the claim and the start): claim
# the placed tasks' queue rows, start their attempts and mark the subtasks among them
# started, in one statement. Only rows whose task is still waiting are claimed, under the
# lock of both rows, so each claimed task starts.
CLAIM_AND_START = f"""
WITH claimed AS (
    UPDATE task_queue SET claimed = true, claimed_by = $3, claimed_at = now()
    WHERE id IN (
        SELECT held.id FROM {lock_queued("unnest($1::text[]) AS ids(task_id)")}
    )
    RETURNING task_id
), s AS ({
    _START.format(
        placed="(SELECT u.task_id, u.agent_id, NULL::bigint AS key_id"
        " FROM unnest($1::text[], $2::text[]) AS u(task_id, agent_id)"
        " JOIN claimed c ON c.task_id = u.task_id) AS p"
    )
}, st AS (
    UPDATE subtasks SET status = 'working', started_at = coalesce(subtasks.started_at, now()),
        assigned_host = coalesce(ag.hostname, s.agent_id)
    FROM s LEFT JOIN agents ag ON ag.id = s.agent_id
    WHERE s.parent_id IS NOT NULL AND subtasks.child_task_id = s.id
), n AS {announced("s")}
SELECT id, attempt, spec, user_name, parent_id, last_seq FROM s, n
"""
MARK_SUBTASK_STARTED = """
UPDATE subtasks s SET status = 'working', started_at = coalesce(s.started_at, now()),
    assigned_host = coalesce(a.hostname, p.agent_id)
FROM unnest($1::text[], $2::text[]) AS p(task_id, agent_id)
LEFT JOIN agents a ON a.id = p.agent_id
WHERE s.child_task_id = p.task_id
"""
RELEASE_CLAIMS = """
UPDATE task_queue SET claimed = false, claimed_by = NULL, claimed_at = NULL
WHERE task_id = ANY($1::text[]) AND claimed_by = $2
"""
DROP_STALE_QUEUE_ROWS = f"""
DELETE FROM task_queue q USING tasks t
WHERE q.task_id = t.id AND q.task_id = ANY($1::text[]) AND t.state IN {TERMINAL}
"""
# A waiting reason is worth no wait: rows another transaction holds (a replica claiming
# them, or explaining them too) are skipped. Locking them in whatever order the array gave
# let two replicas explaining the same queue deadlock each other.
SET_WAITING_REASON = f"""
UPDATE tasks SET waiting_reason = p.reason
FROM unnest($1::text[], $2::text[]) AS p(task_id, reason),
     (SELECT id FROM tasks w WHERE id = ANY($1::text[]) AND {waiting("w")}
      FOR UPDATE SKIP LOCKED) AS held
WHERE tasks.id = p.task_id AND held.id = p.task_id AND {waiting("tasks")}
  AND tasks.waiting_reason IS DISTINCT FROM p.reason
"""
WORKING_PER_AGENT = """
SELECT assigned_agent, count(*) AS running FROM tasks
WHERE state = 'working' AND lease_owner IS NOT NULL AND assigned_agent IS NOT NULL
GROUP BY assigned_agent
"""

# Events: the attempt guard makes a superseded attempt's late events vanish.
APPEND_EVENT = f"""
WITH t AS (
    UPDATE tasks SET last_seq = last_seq + 1, updated_at = now()
    WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
    RETURNING last_seq
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload)
    SELECT $1, t.last_seq, $2, $4, $5, $6 FROM t
    RETURNING seq
)
SELECT seq, pg_notify('{EVENTS_CHANNEL}', $1) FROM e
"""
APPEND_SCHEDULER_EVENT = """
WITH t AS (
    UPDATE tasks SET last_seq = last_seq + 1, updated_at = now() WHERE id = $1
    RETURNING last_seq, attempt
)
INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload)
SELECT $1, t.last_seq, t.attempt, NULL, $2, $3 FROM t
RETURNING seq
"""
# A batch goes after the sequence number its writer last saw ($7): a batch retried after
# its commit succeeded (the reply was lost) finds last_seq moved on and writes nothing.
APPEND_EVENTS = f"""
WITH t AS (
    UPDATE tasks SET last_seq = last_seq + cardinality($5::text[]), updated_at = now()
    WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
      AND last_seq = $7
    RETURNING last_seq
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload)
    SELECT $1, $7 + b.n, $2, $4, b.kind, b.payload
    FROM t, unnest($5::text[], $6::jsonb[]) WITH ORDINALITY AS b(kind, payload, n)
)
SELECT last_seq, pg_notify('{EVENTS_CHANNEL}', $1) FROM t
"""
# Was that batch written already? Yes if the attempt still owns the task and its last event
# is the batch's last one, where the batch put it.
BATCH_WRITTEN = """
SELECT t.last_seq FROM tasks t
WHERE t.id = $1 AND t.attempt = $2 AND t.lease_owner = $3 AND t.state = 'working'
  AND t.last_seq = $5::bigint + $6::int
  AND EXISTS (
      SELECT 1 FROM task_events e
      WHERE e.task_id = $1 AND e.seq = $5::bigint + $6::int
        AND e.attempt = $2 AND e.agent_id = $4 AND e.kind = $7
  )
"""
SELECT_EVENTS_AFTER = """
SELECT task_id, seq, attempt, agent_id, kind, payload, created_at FROM task_events
WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""

# A completed task with `remember_as` keeps its output as knowledge, in the statement that
# ends it (`{ended}`: the CTE of the ended row, with its state, spec, user and output).
REMEMBER = """
    INSERT INTO custom_knowledge (task_id, label, value, source, tags, visibility, user_name)
    SELECT e.id, e.spec->>'remember_as', e.output, 'task:' || e.id, '{{}}',
           CASE WHEN coalesce(e.user_name, '') = '' THEN 'shared' ELSE 'private' END,
           coalesce(e.user_name, '')
    FROM {ended} e
    WHERE e.state = 'completed' AND coalesce(e.spec->>'remember_as', '') <> ''
"""

# The end of tasks that have no parent, many in one statement (the common case; see
# TaskStore's group commit); tasks in a tree end in a transaction that locks the tree first,
# and so does a task that delegated (its children end with it): `delegations` is set under
# the tree lock, on this very row, so this statement sees it even when a delegation
# committed while it waited. $1 is the owner; $2.. hold one entry per attempt. Each
# attempt's events not written yet ($11: {"events": [{kind, payload}, ...]}) go before its
# result, after its event $12 (nothing is done for an attempt whose trace moved on
# meanwhile). What comes back: the tasks that ended.
FINISH_ROOT_ATTEMPTS = f"""
WITH ending AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],
                         $7::text[], $8::text[], $9::int[], $10::jsonb[], $11::jsonb[],
                         $12::bigint[])
        AS i(id, attempt, agent_id, result, state, output, error, exit_code, usage, trail,
             after_seq)
), owned AS (
    UPDATE tasks t SET state = i.state, output = i.output, error = i.error,
        exit_code = i.exit_code, usage = i.usage, finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL, waiting_reason = '',
        last_seq = t.last_seq + jsonb_array_length(i.trail->'events') + 1, updated_at = now()
    FROM (
        SELECT ending.* FROM ending JOIN tasks mine ON mine.id = ending.id
        ORDER BY ending.id FOR UPDATE OF mine
    ) AS i
    WHERE t.id = i.id AND t.attempt = i.attempt AND t.lease_owner = $1 AND t.state = 'working'
      AND t.delegations = 0 AND (i.after_seq IS NULL OR t.last_seq = i.after_seq)
    RETURNING t.id, t.last_seq, t.state, t.spec, t.user_name, t.output, i.attempt,
              i.agent_id, i.result, i.trail, i.after_seq
), trail AS (
    INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload)
    SELECT o.id, o.after_seq + b.n, o.attempt, o.agent_id, b.event->>'kind', b.event->'payload'
    FROM owned o, jsonb_array_elements(o.trail->'events') WITH ORDINALITY AS b(event, n)
), e AS (
    INSERT INTO task_events (task_id, seq, attempt, agent_id, kind, payload)
    SELECT id, last_seq, attempt, agent_id, 'result', result FROM owned
), d AS (
    DELETE FROM task_queue WHERE task_id IN (SELECT id FROM owned)
), k AS (
    {REMEMBER.format(ended="owned")}
), n AS {announced("owned")}, w AS (
    SELECT pg_notify('{QUEUE_CHANNEL}', '{SLOT_FREED}')
    FROM (SELECT FROM owned LIMIT 1) AS any_ended
)
SELECT id FROM owned, n, w
"""
FINISH_TASK = f"""
WITH ended AS (
    UPDATE tasks SET output = $2, state = $3, error = $4, exit_code = $5, usage = $6,
        finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
        waiting_reason = ''
    WHERE id = $1 AND state NOT IN {TERMINAL}
    RETURNING id, parent_id, delegated, delegations, state, spec, user_name, output
), k AS (
    {REMEMBER.format(ended="ended")}
)
SELECT id, parent_id, delegated, delegations FROM ended
"""
DELETE_QUEUE_ROW = "DELETE FROM task_queue WHERE task_id = $1"
FINISH_SUBTASK = """
UPDATE subtasks SET status = $2, completed_at = now() WHERE child_task_id = $1
"""
RETRY_ATTEMPT = """
UPDATE tasks SET state = 'submitted', lease_owner = NULL, lease_expires_at = NULL,
    assigned_agent = NULL, waiting_reason = $4, updated_at = now()
WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
RETURNING attempt, max_attempts, priority
"""
# An attempt that never started keeps its number (numbers are never reused) but does not
# use up one of the task's attempts.
GIVE_BACK_ATTEMPT = """
UPDATE tasks SET state = 'submitted', max_attempts = max_attempts + 1, lease_owner = NULL,
    lease_expires_at = NULL, assigned_agent = NULL, waiting_reason = $4, updated_at = now()
WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
RETURNING priority
"""
OWNED_ATTEMPT = """
SELECT attempt, max_attempts FROM tasks
WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working' FOR UPDATE
"""
OWNED_EXPIRED_ATTEMPT = """
SELECT attempt, max_attempts FROM tasks
WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
  AND lease_expires_at < now()
FOR UPDATE
"""
# Statements that change many rows of `tasks` or `agents` lock them in id order (a
# subquery ORDER BY id FOR UPDATE): two of them at once then wait for each other, never
# deadlock (which PostgreSQL would notice only after deadlock_timeout, a second).
RENEW_LEASES = """
UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $2)
FROM (
    SELECT mine.id FROM tasks mine
    JOIN unnest($3::text[], $4::int[]) AS live(id, attempt)
        ON mine.id = live.id AND mine.attempt = live.attempt
    WHERE mine.lease_owner = $1 AND mine.state = 'working'
    ORDER BY mine.id FOR UPDATE OF mine
) AS held
WHERE t.id = held.id AND t.lease_owner = $1 AND t.state = 'working'
"""
EXPIRED_LEASES = """
SELECT id, attempt, lease_owner FROM tasks
WHERE state = 'working' AND lease_owner IS NOT NULL AND lease_expires_at < now()
ORDER BY lease_expires_at LIMIT $1
FOR UPDATE SKIP LOCKED
"""
SIBLINGS_NOT_COMPLETED = """
SELECT count(*) FROM subtasks s JOIN tasks t ON t.id = s.child_task_id
WHERE s.parent_task_id = $1 AND t.state <> 'completed' AND NOT t.delegated
"""
# Of the attempts a replica streams, those that no longer own their task (it ended, was
# cancelled, or another attempt took over) while the replica was not listening.
STALE_ATTEMPTS = """
SELECT live.id FROM unnest($2::text[], $3::int[]) AS live(id, attempt)
LEFT JOIN tasks t
    ON t.id = live.id AND t.attempt = live.attempt AND t.lease_owner = $1 AND t.state = 'working'
WHERE t.id IS NULL
"""
RELEASE_OWNED = """
SELECT id, attempt FROM tasks WHERE lease_owner = $1 AND state = 'working'
"""

# Delegation (see TaskStore.delegate): the parent as a delegation sees it, with its depth in
# its tree (a root is 0) and the tokens its delegated gemini children hold: what a running
# one was granted, what an ended one spent.
SELECT_DELEGATING_PARENT = f"""
WITH RECURSIVE up AS (
    SELECT id, parent_id, 0 AS depth FROM tasks WHERE id = $1
    UNION ALL
    SELECT t.id, t.parent_id, up.depth + 1 FROM tasks t JOIN up ON t.id = up.parent_id
)
SELECT p.id, p.spec, p.state, p.attempt, p.user_name, p.root_id, p.delegations,
       (SELECT max(depth) FROM up) AS depth,
       (SELECT coalesce(sum(CASE WHEN c.state IN {TERMINAL}
                                 THEN coalesce((c.usage->>'total_tokens')::bigint, 0)
                                 ELSE (c.spec->>'max_tokens')::bigint END), 0)
        FROM tasks c
        WHERE c.parent_id = p.id AND c.delegated AND c.kind = 'gemini') AS tokens_granted
FROM tasks p WHERE p.id = $1 FOR UPDATE OF p
"""
INSERT_DELEGATED = """
INSERT INTO tasks (id, kind, spec, state, user_name, parent_id, priority, idempotency_key,
                   max_attempts, waiting_reason, root_id, delegated)
VALUES ($1, $2, $3, 'submitted', $4, $5, $6, $7, $8, '', $9, true)
"""
COUNT_DELEGATION = "UPDATE tasks SET delegations = delegations + 1 WHERE id = $1"
# A task's delegated children still running: they end with their parent's attempt.
SELECT_UNFINISHED_DELEGATED = f"""
SELECT id FROM tasks WHERE parent_id = $1 AND delegated AND state NOT IN {TERMINAL}
"""
# Whether task $2 is task $1 or below it, and whether $1 still runs attempt $3: what a mesh
# credential of ($1, $3) may read.
MESH_REACH = """
WITH RECURSIVE up AS (
    SELECT id, parent_id FROM tasks WHERE id = $2
    UNION ALL
    SELECT t.id, t.parent_id FROM tasks t JOIN up ON t.id = up.parent_id
)
SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND state = 'working' AND attempt = $3)
           AS running,
       EXISTS (SELECT 1 FROM up WHERE id = $1) AS below
"""

# Approvals (TaskSpec.on_refusal = 'ask'): the refused attempt leaves the task waiting for
# its user, with one pending question.
AWAIT_APPROVAL = """
UPDATE tasks SET state = 'input_required', lease_owner = NULL, lease_expires_at = NULL,
    assigned_agent = NULL, waiting_reason = $4, updated_at = now()
WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'working'
RETURNING user_name
"""
INSERT_APPROVAL_REQUEST = """
INSERT INTO approval_requests (task_id, attempt, user_id, command, rule, mode, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
SELECT_PENDING_REQUEST = """
SELECT r.id, r.command, r.rule, r.mode, t.user_name, t.priority
FROM approval_requests r JOIN tasks t ON t.id = r.task_id
WHERE r.task_id = $1 AND r.answer IS NULL AND t.state = 'input_required'
FOR UPDATE OF r, t
"""
ANSWER_REQUEST = """
UPDATE approval_requests SET answer = $2, answered_at = now(), permitted = $3, prefix = $4
WHERE id = $1
"""
# A remembered approval: NULL mode and host (every mode, every host), one per user,
# command and prefix (a partial unique index: the table's own constraint has NULLs in it).
REMEMBER_APPROVAL = """
INSERT INTO permissions_profile
    (user_id, mode, command, host_name, approved_by, allow_by_default, notes, prefix)
VALUES ($1, NULL, $2, NULL, $1, true, $4, $3)
ON CONFLICT (user_id, command, prefix) WHERE mode IS NULL AND host_name IS NULL
DO UPDATE SET allow_by_default = true, notes = EXCLUDED.notes
"""
RESUME_APPROVED = """
UPDATE tasks SET state = 'submitted', max_attempts = max_attempts + 1, waiting_reason = '',
    updated_at = now()
WHERE id = $1 AND state = 'input_required'
"""
# What a task's next attempt may run besides the rules: what its user approved for it, and
# the user's remembered approvals (each with whether it is remembered, to mark its use).
SELECT_APPROVALS_FOR = """
SELECT NULL::int AS remembered_id, permitted AS command, prefix FROM approval_requests
WHERE task_id = $1 AND answer = 'approved'
UNION ALL
SELECT id, command, prefix FROM permissions_profile
WHERE user_id = $2 AND allow_by_default AND command IS NOT NULL
  AND (expires_at IS NULL OR expires_at > now())
  -- Approvals let weak mode run more; one narrowed to a mode or a host applies there only
  -- (a host is not known before placement: those are not given).
  AND (mode IS NULL OR mode = 'weak') AND host_name IS NULL
"""
MARK_APPROVALS_USED = """
UPDATE permissions_profile SET last_used = (now() AT TIME ZONE 'UTC') WHERE id = ANY($1::int[])
"""
