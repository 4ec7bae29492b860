-- The agents' memory of the user: profile, approved commands, facts, keys and their cost.

CREATE TABLE user_profile (
    id                   BIGSERIAL PRIMARY KEY,
    user_name            TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL DEFAULT '',
    preferred_language   TEXT NOT NULL DEFAULT 'en',
    response_style       TEXT NOT NULL DEFAULT '',
    timezone             TEXT NOT NULL DEFAULT 'UTC',
    preferences          JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Commands the user approved (or refused) for a permission mode, by program or pattern.
CREATE TABLE permissions_profile (
    id               BIGSERIAL PRIMARY KEY,
    user_name        TEXT NOT NULL,
    mode             TEXT NOT NULL CHECK (mode IN ('weak', 'superuser')),
    command_pattern  TEXT NOT NULL,
    decision         TEXT NOT NULL DEFAULT 'allow' CHECK (decision IN ('allow', 'deny')),
    host_name        TEXT,
    approved_by      TEXT,
    approved_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ,
    UNIQUE (user_name, mode, command_pattern, host_name)
);

CREATE TABLE custom_knowledge (
    id          BIGSERIAL PRIMARY KEY,
    user_name   TEXT NOT NULL DEFAULT '',
    topic       TEXT NOT NULL,
    content     TEXT NOT NULL,
    source      TEXT NOT NULL DEFAULT '',
    tags        TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX custom_knowledge_topic_idx ON custom_knowledge (user_name, topic);

-- API keys. The secret itself is in `key_value`; everything that is shown or logged uses
-- `fingerprint` (a short hash), never the key.
CREATE TABLE api_keys (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    provider        TEXT NOT NULL DEFAULT 'gemini',
    key_value       TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    priority        INTEGER NOT NULL DEFAULT 0,
    assigned_user   TEXT,
    rotating        BOOLEAN NOT NULL DEFAULT false,
    source          TEXT NOT NULL DEFAULT 'manual',
    cooldown_until  TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at    TIMESTAMPTZ
);

CREATE INDEX api_keys_pick_idx ON api_keys (priority DESC, id) WHERE enabled;

CREATE TABLE token_prediction_log (
    id                BIGSERIAL PRIMARY KEY,
    task_id           TEXT REFERENCES tasks (id) ON DELETE SET NULL,
    api_key_id        BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    model             TEXT NOT NULL DEFAULT '',
    prompt_chars      INTEGER NOT NULL DEFAULT 0,
    predicted_tokens  INTEGER NOT NULL DEFAULT 0,
    actual_tokens     INTEGER,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ
);

CREATE INDEX token_prediction_log_key_idx ON token_prediction_log (api_key_id, created_at);
