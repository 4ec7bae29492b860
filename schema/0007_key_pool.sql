-- The key pool: secrets encrypted at rest, keys held by nodes, per-key limits, and the
-- quotas counted per key and model in PostgreSQL, so that any number of scheduler replicas
-- spend together no more than a key allows.

-- `key_value` holds the Fernet token of the secret ("fernet:..."); a key held by a node
-- has none here (`node_id` names the agent that holds it, `source` is 'node:NAME').
ALTER TABLE api_keys ALTER COLUMN key_value DROP NOT NULL;
ALTER TABLE api_keys
    ADD COLUMN disabled_reason TEXT,
    ADD COLUMN node_id TEXT,
    -- Per-key limits; NULL = the configured api_policy's.
    ADD COLUMN requests_per_minute INT CHECK (requests_per_minute >= 0),
    ADD COLUMN requests_per_day INT CHECK (requests_per_day >= 0),
    ADD COLUMN tokens_per_day BIGINT CHECK (tokens_per_day >= 0);
-- One secret, one quota: the same key under two names would be spent twice.
CREATE UNIQUE INDEX api_keys_fingerprint_idx ON api_keys (fingerprint);
-- Google limits a key per model: cooling down is per model too (api_key_models).
ALTER TABLE api_keys DROP COLUMN cooldown_until;

-- Per key and model: the cooldown after a 429, and the earliest time the next request may
-- go (requests are spaced 60 s / requests_per_minute apart).
CREATE TABLE api_key_models (
    key_id           BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    model            TEXT NOT NULL,
    cooling_until    TIMESTAMPTZ,
    cooling_reason   TEXT,
    next_request_at  TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (key_id, model)
);

-- Per key, model and day (midnight to midnight Pacific time, when Google resets its daily
-- quotas): what was spent, and what running tasks hold by their forecasts.
CREATE TABLE api_key_usage (
    key_id             BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    model              TEXT NOT NULL,
    day                DATE NOT NULL,
    requests           INT NOT NULL DEFAULT 0,
    tokens             BIGINT NOT NULL DEFAULT 0,
    reserved_requests  INT NOT NULL DEFAULT 0 CHECK (reserved_requests >= 0),
    reserved_tokens    BIGINT NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    PRIMARY KEY (key_id, model, day)
);

-- A gemini task's hold on a key: what is left of its forecast (released when the attempt
-- ends), and what the task spent in all (on any key), against its budget.
CREATE TABLE key_reservations (
    task_id             TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    key_id              BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    model               TEXT NOT NULL,
    day                 DATE NOT NULL,
    requests            INT NOT NULL DEFAULT 0 CHECK (requests >= 0),
    tokens              BIGINT NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    -- The request slot booked with the reservation (the first request's, per-minute spacing).
    first_slot          TIMESTAMPTZ,
    predicted_requests  INT NOT NULL DEFAULT 0,
    predicted_tokens    BIGINT NOT NULL DEFAULT 0,
    used_requests       INT NOT NULL DEFAULT 0,
    used_tokens         BIGINT NOT NULL DEFAULT 0,
    budget              BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX key_reservations_key_idx ON key_reservations (key_id) WHERE requests > 0 OR tokens > 0;

-- The forecast's inputs, so that `agentmesh tokens report` can score the plain rule beside
-- it, and the forecaster can learn per user, model and agent mode.
ALTER TABLE token_prediction_log
    ADD COLUMN username TEXT,
    ADD COLUMN agent_mode TEXT,
    ADD COLUMN predicted_requests INT,
    ADD COLUMN actual_requests INT;
CREATE INDEX token_prediction_log_learn_idx
    ON token_prediction_log (model, username, request_timestamp DESC);

-- A reservation is released when its attempt stops working, however that happens (a
-- result, a cancel, a lost node, a lease taken over): the forecast it held goes back to the
-- key, and what the task spent stays counted.
CREATE FUNCTION release_key_reservation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_key_usage u
    SET reserved_requests = greatest(u.reserved_requests - r.requests, 0),
        reserved_tokens = greatest(u.reserved_tokens - r.tokens, 0)
    FROM key_reservations r
    WHERE r.task_id = NEW.id AND (r.requests > 0 OR r.tokens > 0)
      AND u.key_id = r.key_id AND u.model = r.model AND u.day = r.day;
    UPDATE key_reservations SET requests = 0, tokens = 0, first_slot = NULL
    WHERE task_id = NEW.id AND (requests > 0 OR tokens > 0 OR first_slot IS NOT NULL);
    RETURN NEW;
END
$$;
CREATE TRIGGER tasks_release_key_reservation
    AFTER UPDATE OF state, attempt ON tasks
    FOR EACH ROW
    WHEN (OLD.state = 'working' AND (NEW.state <> 'working' OR NEW.attempt <> OLD.attempt))
    EXECUTE FUNCTION release_key_reservation();

-- Since when a task has waited for a key with capacity: past its user's throttle tolerance
-- it fails with the reason.
ALTER TABLE tasks ADD COLUMN key_wait_since TIMESTAMPTZ;
