-- The durable task model: tasks, their queue, their subtask tree and their execution trace.

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    spec              JSONB NOT NULL,
    state             TEXT NOT NULL DEFAULT 'submitted'
                      CHECK (state IN ('submitted', 'working', 'input_required', 'completed',
                                       'failed', 'canceled', 'rejected')),
    user_name         TEXT NOT NULL DEFAULT '',
    parent_id         TEXT REFERENCES tasks (id) ON DELETE CASCADE,
    -- The top of the task's tree; its row is the tree's lock (see the scheduler's store).
    root_id           TEXT NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    assigned_agent    TEXT,
    attempt           INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    -- Who holds the running attempt and until when; another scheduler may take it over after.
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    waiting_reason    TEXT NOT NULL DEFAULT '',
    result            JSONB,
    output            TEXT NOT NULL DEFAULT '',
    error             TEXT NOT NULL DEFAULT '',
    exit_code         INTEGER NOT NULL DEFAULT 0,
    usage             JSONB NOT NULL DEFAULT '{}'::jsonb,
    api_key_id        BIGINT,
    last_seq          BIGINT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX tasks_idempotency_key_idx ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_parent_idx ON tasks (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_state_created_idx ON tasks (state, created_at, id);
CREATE INDEX tasks_user_created_idx ON tasks (user_name, created_at, id);
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state = 'working';

-- The hot queue: one row per task that is ready to be placed. Finished rows are deleted,
-- so the table stays small under steady churn.
CREATE TABLE task_queue (
    id            BIGSERIAL PRIMARY KEY,
    task_id       TEXT NOT NULL UNIQUE REFERENCES tasks (id) ON DELETE CASCADE,
    priority      INTEGER NOT NULL DEFAULT 0,
    available_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed       BOOLEAN NOT NULL DEFAULT false,
    claimed_by    TEXT,
    claimed_at    TIMESTAMPTZ,
    enqueued_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX task_queue_claim_idx ON task_queue (priority DESC, id) WHERE NOT claimed;

-- The seed's record of delegated work: one row per child task.
CREATE TABLE subtasks (
    id              BIGSERIAL PRIMARY KEY,
    parent_task_id  TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    child_task_id   TEXT NOT NULL UNIQUE REFERENCES tasks (id) ON DELETE CASCADE,
    description     TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL DEFAULT 'submitted',
    assigned_host   TEXT,
    agent_mode      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ
);

CREATE INDEX subtasks_parent_idx ON subtasks (parent_task_id);

-- The replayable, queryable execution trace: every event of every attempt, in order.
CREATE TABLE task_events (
    task_id     TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL CHECK (seq > 0),
    attempt     INTEGER NOT NULL DEFAULT 0,
    agent_id    TEXT,
    kind        TEXT NOT NULL,
    payload     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, seq)
);

CREATE INDEX task_events_kind_idx ON task_events (kind, created_at);
