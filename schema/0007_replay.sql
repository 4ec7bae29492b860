-- `agentmesh replay`: a task that runs another task's spec again names the original.
-- (0006 is left to another change in flight; migrations apply in order, gaps allowed.)
ALTER TABLE tasks ADD COLUMN replay_of TEXT REFERENCES tasks (id) ON DELETE SET NULL;
CREATE INDEX tasks_replay_of_idx ON tasks (replay_of) WHERE replay_of IS NOT NULL;
