-- Every table of the seed document (../shared/seed/, "Advanced Agent Orchestration and
-- Knowledge Persistence") with the seed's column names, types and defaults.
--
-- Rules this migration follows, checked by tests/test_schema.py against the seed itself:
-- * a seed column has the seed's type and the seed's default (none where the seed has none),
--   and is nullable unless it is the seed's primary key, so that every INSERT written for
--   the seed's schema works here;
-- * a column of agentmesh's own stays only where it carries something the seed has no
--   place for (a task's queue priority, an agent's card); columns that only duplicated a
--   seed column under another name are renamed or merged into it, with their data;
-- * the seed's TIMESTAMP columns are timestamps without time zone holding UTC: every
--   agentmesh connection sets TimeZone to UTC, so their `now()` defaults are UTC too.

-- user_profile ------------------------------------------------------------------------
ALTER TABLE user_profile RENAME COLUMN user_name TO username;
ALTER TABLE user_profile ALTER COLUMN id TYPE integer;
ALTER SEQUENCE user_profile_id_seq AS integer;
ALTER TABLE user_profile ALTER COLUMN username DROP NOT NULL;
ALTER TABLE user_profile
    ADD COLUMN default_permissions TEXT,
    ADD COLUMN throttle_tolerance INT,
    ADD COLUMN max_token_per_request INT,
    ADD COLUMN preferred_format TEXT;
UPDATE user_profile SET preferred_format = nullif(response_style, '');
ALTER TABLE user_profile
    DROP COLUMN response_style,
    DROP COLUMN display_name,
    DROP COLUMN preferred_language,
    DROP COLUMN preferences;
ALTER TABLE user_profile ALTER COLUMN timezone DROP DEFAULT;
ALTER TABLE user_profile ALTER COLUMN timezone DROP NOT NULL;

-- home_network ------------------------------------------------------------------------
ALTER TABLE home_network ALTER COLUMN id TYPE integer;
ALTER SEQUENCE home_network_id_seq AS integer;
ALTER TABLE home_network ALTER COLUMN host_name DROP NOT NULL;
ALTER TABLE home_network ALTER COLUMN ip_address TYPE TEXT USING host(ip_address);
ALTER TABLE home_network ALTER COLUMN service DROP DEFAULT;
ALTER TABLE home_network ALTER COLUMN service DROP NOT NULL;
ALTER TABLE home_network ADD COLUMN notes TEXT;
ALTER TABLE home_network ALTER COLUMN tags DROP DEFAULT;
ALTER TABLE home_network ALTER COLUMN tags DROP NOT NULL;
ALTER TABLE home_network ALTER COLUMN last_seen DROP DEFAULT;
ALTER TABLE home_network ALTER COLUMN last_seen DROP NOT NULL;
ALTER TABLE home_network
    ALTER COLUMN last_seen TYPE TIMESTAMP USING last_seen AT TIME ZONE 'UTC';

-- permissions_profile: an approval is for a user and a command; `mode` (NULL: every mode)
-- and `host_name` (NULL: every host) narrow it, which the seed has no place for.
ALTER TABLE permissions_profile RENAME COLUMN user_name TO user_id;
ALTER TABLE permissions_profile RENAME COLUMN command_pattern TO command;
ALTER TABLE permissions_profile ALTER COLUMN id TYPE integer;
ALTER SEQUENCE permissions_profile_id_seq AS integer;
ALTER TABLE permissions_profile ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE permissions_profile ALTER COLUMN command DROP NOT NULL;
ALTER TABLE permissions_profile ALTER COLUMN mode DROP NOT NULL;
ALTER TABLE permissions_profile
    ADD COLUMN last_used TIMESTAMP,
    ADD COLUMN allow_by_default BOOLEAN,
    ADD COLUMN notes TEXT;
UPDATE permissions_profile SET allow_by_default = (decision = 'allow');
ALTER TABLE permissions_profile DROP COLUMN decision;

-- custom_knowledge: `user_name` says whose fact it is (the seed's `visibility` is relative
-- to an owner); `updated_at` when it last changed.
ALTER TABLE custom_knowledge RENAME COLUMN topic TO label;
ALTER TABLE custom_knowledge RENAME COLUMN content TO value;
ALTER TABLE custom_knowledge RENAME COLUMN created_at TO inserted_at;
ALTER INDEX custom_knowledge_topic_idx RENAME TO custom_knowledge_label_idx;
ALTER TABLE custom_knowledge ALTER COLUMN id TYPE integer;
ALTER SEQUENCE custom_knowledge_id_seq AS integer;
ALTER TABLE custom_knowledge
    ADD COLUMN task_id TEXT REFERENCES tasks (id) ON DELETE SET NULL,
    ADD COLUMN visibility TEXT DEFAULT 'private';
ALTER TABLE custom_knowledge ALTER COLUMN label DROP NOT NULL;
ALTER TABLE custom_knowledge ALTER COLUMN value DROP NOT NULL;
ALTER TABLE custom_knowledge ALTER COLUMN source DROP DEFAULT;
ALTER TABLE custom_knowledge ALTER COLUMN source DROP NOT NULL;
ALTER TABLE custom_knowledge ALTER COLUMN tags DROP DEFAULT;
ALTER TABLE custom_knowledge ALTER COLUMN tags DROP NOT NULL;
ALTER TABLE custom_knowledge ALTER COLUMN inserted_at DROP NOT NULL;
ALTER TABLE custom_knowledge
    ALTER COLUMN inserted_at TYPE TIMESTAMP USING inserted_at AT TIME ZONE 'UTC';
CREATE INDEX custom_knowledge_task_idx ON custom_knowledge (task_id) WHERE task_id IS NOT NULL;

-- api_keys: the seed's four added columns, with its defaults.
ALTER TABLE api_keys ALTER COLUMN priority DROP NOT NULL;
ALTER TABLE api_keys ALTER COLUMN rotating SET DEFAULT TRUE;
ALTER TABLE api_keys ALTER COLUMN rotating DROP NOT NULL;
-- Nothing chose `rotating` before: every key takes part in rotation, as the seed intends.
UPDATE api_keys SET rotating = TRUE;
ALTER TABLE api_keys ALTER COLUMN source DROP DEFAULT;
ALTER TABLE api_keys ALTER COLUMN source DROP NOT NULL;

-- token_prediction_log: `api_key` names the key by its fingerprint, never by its secret.
ALTER TABLE token_prediction_log RENAME COLUMN created_at TO request_timestamp;
ALTER TABLE token_prediction_log ALTER COLUMN id TYPE integer;
ALTER SEQUENCE token_prediction_log_id_seq AS integer;
ALTER TABLE token_prediction_log ADD COLUMN api_key TEXT, ADD COLUMN delta INT;
UPDATE token_prediction_log l SET api_key = k.fingerprint
FROM api_keys k WHERE k.id = l.api_key_id;
UPDATE token_prediction_log SET delta = actual_tokens - predicted_tokens
WHERE actual_tokens IS NOT NULL;
ALTER TABLE token_prediction_log DROP COLUMN api_key_id;
ALTER TABLE token_prediction_log ALTER COLUMN predicted_tokens DROP DEFAULT;
ALTER TABLE token_prediction_log ALTER COLUMN predicted_tokens DROP NOT NULL;
ALTER TABLE token_prediction_log ALTER COLUMN request_timestamp DROP NOT NULL;
ALTER TABLE token_prediction_log
    ALTER COLUMN request_timestamp TYPE TIMESTAMP USING request_timestamp AT TIME ZONE 'UTC';
CREATE INDEX token_prediction_log_key_idx ON token_prediction_log (api_key, request_timestamp);

-- vector_knowledge (VECTOR(768) with pgvector, REAL[] without): `content` is the text the
-- embedding stands for, `user_name` whose it is.
ALTER TABLE vector_knowledge ALTER COLUMN id TYPE integer;
ALTER SEQUENCE vector_knowledge_id_seq AS integer;
ALTER TABLE vector_knowledge ALTER COLUMN embedding DROP NOT NULL;
ALTER TABLE vector_knowledge ALTER COLUMN source DROP DEFAULT;
ALTER TABLE vector_knowledge ALTER COLUMN source DROP NOT NULL;
ALTER TABLE vector_knowledge ALTER COLUMN metadata DROP DEFAULT;
ALTER TABLE vector_knowledge ALTER COLUMN metadata DROP NOT NULL;

-- subtasks: `status` goes pending -> working -> completed | failed | canceled | rejected.
ALTER TABLE subtasks ALTER COLUMN id TYPE integer;
ALTER SEQUENCE subtasks_id_seq AS integer;
ALTER TABLE subtasks ALTER COLUMN parent_task_id DROP NOT NULL;
ALTER TABLE subtasks ALTER COLUMN child_task_id DROP NOT NULL;
ALTER TABLE subtasks ALTER COLUMN description DROP DEFAULT;
ALTER TABLE subtasks ALTER COLUMN description DROP NOT NULL;
UPDATE subtasks SET status = 'pending' WHERE status = 'submitted';
ALTER TABLE subtasks ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE subtasks ALTER COLUMN status DROP NOT NULL;
ALTER TABLE subtasks ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE subtasks
    ALTER COLUMN created_at TYPE TIMESTAMP USING created_at AT TIME ZONE 'UTC',
    ALTER COLUMN started_at TYPE TIMESTAMP USING started_at AT TIME ZONE 'UTC',
    ALTER COLUMN completed_at TYPE TIMESTAMP USING completed_at AT TIME ZONE 'UTC';
-- agent_mode is the gemini agent mode (it held the permission mode); other kinds have none.
UPDATE subtasks s SET agent_mode = CASE WHEN t.kind = 'gemini' THEN 'agentic' END
FROM tasks t WHERE t.id = s.child_task_id;
-- assigned_host is the host's name (it held the agent id).
UPDATE subtasks s SET assigned_host = a.hostname FROM agents a WHERE a.id = s.assigned_host;

-- agents: `endpoint` (where the scheduler dials), `card` (what the node advertised),
-- `running_tasks`, `max_concurrency` and `registered_at` are agentmesh's own.
ALTER TABLE agents ALTER COLUMN hostname DROP NOT NULL;
ALTER TABLE agents ALTER COLUMN ip_address TYPE TEXT USING host(ip_address);
ALTER TABLE agents ALTER COLUMN last_heartbeat DROP DEFAULT;
ALTER TABLE agents ALTER COLUMN last_heartbeat DROP NOT NULL;
ALTER TABLE agents
    ALTER COLUMN last_heartbeat TYPE TIMESTAMP USING last_heartbeat AT TIME ZONE 'UTC';
ALTER TABLE agents ALTER COLUMN status DROP DEFAULT;
ALTER TABLE agents ALTER COLUMN status DROP NOT NULL;
-- `unreachable`: the agent heartbeats, but the scheduler cannot dial its endpoint (or the
-- node refuses the scheduler's token); no work goes there until a dial succeeds.
ALTER TABLE agents DROP CONSTRAINT agents_status_check;
ALTER TABLE agents ADD CONSTRAINT agents_status_check
    CHECK (status IN ('online', 'draining', 'offline', 'unreachable'));
-- JSONB array to TEXT[] (a column type change cannot run a subquery: copy instead).
ALTER TABLE agents RENAME COLUMN capabilities TO capabilities_json;
ALTER TABLE agents ADD COLUMN capabilities TEXT[];
UPDATE agents SET capabilities = ARRAY(SELECT jsonb_array_elements_text(capabilities_json));
ALTER TABLE agents DROP COLUMN capabilities_json;
CREATE INDEX agents_capabilities_idx ON agents USING gin (capabilities);

-- task_queue: `target_host` and `payload` (the task's spec) are written with every entry;
-- `task_id`, `priority` and `available_at` (not before: a retry's backoff) are our own.
ALTER TABLE task_queue RENAME COLUMN enqueued_at TO created_at;
ALTER TABLE task_queue ALTER COLUMN id TYPE integer;
ALTER SEQUENCE task_queue_id_seq AS integer;
ALTER TABLE task_queue ADD COLUMN target_host TEXT, ADD COLUMN payload JSONB;
UPDATE task_queue q SET target_host = nullif(t.spec->>'target_host', ''), payload = t.spec
FROM tasks t WHERE t.id = q.task_id;
ALTER TABLE task_queue ALTER COLUMN claimed DROP NOT NULL;
ALTER TABLE task_queue ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE task_queue
    ALTER COLUMN created_at TYPE TIMESTAMP USING created_at AT TIME ZONE 'UTC',
    ALTER COLUMN claimed_at TYPE TIMESTAMP USING claimed_at AT TIME ZONE 'UTC';
