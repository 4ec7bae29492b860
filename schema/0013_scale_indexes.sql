-- Indexes for tables that hold a long history (measured by bench/scale.py --explain on
-- 1,000,000 ended tasks and 10,000,000 events).

-- A tree's members below its root, by root: what `agentmesh db prune` reads to tell an
-- ended tree from one with a live member. Roots are most tasks and never looked up this
-- way, so they stay out of the index.
CREATE INDEX tasks_tree_members_idx ON tasks (root_id) WHERE id <> root_id;

-- A task's approval requests, answered or not (the pending-only unique index does not
-- serve them): the approvals an attempt may use, and the cascade when a task is deleted.
CREATE INDEX approval_requests_task_idx ON approval_requests (task_id);

-- Parked queue rows by what they wait for (see scheduler.parking): unparking, and the
-- look every poll for those whose time has come, read these instead of every claimed row.
CREATE INDEX task_queue_parked_idx ON task_queue (claimed_by, available_at) WHERE claimed;
