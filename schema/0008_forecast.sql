-- Token forecasting: one `token_prediction_log` row per task, and the indexes the forecaster
-- reads its history through (the most recent finished tasks of a group, newest first).

-- One row per task: a second prediction for a task (a later attempt) replaces the first.
-- Rows from before this migration may repeat a task: keep the newest of each.
DELETE FROM token_prediction_log l
USING token_prediction_log newer
WHERE l.task_id = newer.task_id AND l.id < newer.id;
CREATE UNIQUE INDEX token_prediction_log_task_idx ON token_prediction_log (task_id);

-- The forecaster learns from the most specific group with enough history: (user, model,
-- agent mode), then (model, agent mode), then (agent mode). Each index answers one group's
-- "newest N finished tasks" in index order; only tasks that spent tokens teach anything.
CREATE INDEX token_prediction_log_user_model_idx
    ON token_prediction_log (model, agent_mode, username, request_timestamp DESC NULLS LAST)
    WHERE actual_tokens > 0;
CREATE INDEX token_prediction_log_model_idx
    ON token_prediction_log (model, agent_mode, request_timestamp DESC NULLS LAST)
    WHERE actual_tokens > 0;
CREATE INDEX token_prediction_log_mode_idx
    ON token_prediction_log (agent_mode, request_timestamp DESC NULLS LAST)
    WHERE actual_tokens > 0;
-- Superseded by token_prediction_log_user_model_idx (which also covers the agent mode and
-- holds finished rows only).
DROP INDEX token_prediction_log_learn_idx;
