-- Approvals: a task whose command weak mode refused may ask its user (TaskSpec.on_refusal =
-- 'ask') instead of ending rejected. It waits in 'input_required' with one pending request
-- here; approving runs it again with that command permitted, denying ends it rejected.
CREATE TABLE approval_requests (
    id           SERIAL PRIMARY KEY,
    task_id      TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- The attempt that was refused, and what refused it (as its CommandRefusal said).
    attempt      INTEGER NOT NULL,
    user_id      TEXT NOT NULL DEFAULT '',
    command      TEXT NOT NULL,
    rule         TEXT NOT NULL,
    mode         TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL while pending; 'approved' or 'denied' once answered.
    answer       TEXT CHECK (answer IN ('approved', 'denied')),
    answered_at  TIMESTAMPTZ,
    -- What the answer permits: the command itself, or every command it begins (a prefix).
    permitted    TEXT,
    prefix       BOOLEAN NOT NULL DEFAULT false
);
-- At most one question open per task.
CREATE UNIQUE INDEX approval_requests_pending_idx ON approval_requests (task_id)
    WHERE answer IS NULL;

-- A remembered approval (`approve --always`) matches its command exactly, or by prefix when
-- the user approved one explicitly (`--prefix "git status"`).
ALTER TABLE permissions_profile ADD COLUMN prefix BOOLEAN NOT NULL DEFAULT false;
-- One per user, command and prefix among those for every mode and host (the table's unique
-- constraint has NULLs in it, which never conflict).
CREATE UNIQUE INDEX permissions_profile_everywhere_idx ON permissions_profile
    (user_id, command, prefix) WHERE mode IS NULL AND host_name IS NULL;
