-- Self-orchestration: a running agent starts subtasks of its own task through its node's
-- mesh tools (the Scheduler's DelegateTask). Such a child is `delegated`: its parent does not
-- wait for it as for subtasks submitted up front (the agent waits, through its tool), its
-- failure is the agent's to handle, and it is cancelled when its parent's attempt ends.
ALTER TABLE tasks ADD COLUMN delegated BOOLEAN NOT NULL DEFAULT false;
-- How many subtasks the task delegated (all attempts), against agent_defaults.max_delegations.
ALTER TABLE tasks ADD COLUMN delegations INTEGER NOT NULL DEFAULT 0;
