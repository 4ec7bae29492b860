-- `task_events (kind, created_at)` served no query (every read of the trace goes by task and
-- sequence number, the primary key), yet every event written kept it up to date: one index
-- write in two, for the table that takes the most writes.
DROP INDEX IF EXISTS task_events_kind_idx;
