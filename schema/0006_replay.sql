-- `agentmesh replay`: a task that runs another task's spec again names the original.
ALTER TABLE tasks ADD COLUMN replay_of TEXT REFERENCES tasks (id) ON DELETE SET NULL;
CREATE INDEX tasks_replay_of_idx ON tasks (replay_of) WHERE replay_of IS NOT NULL;
