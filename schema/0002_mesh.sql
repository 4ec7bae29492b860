-- The machines of the mesh: the agents that run tasks and the network they live on.

CREATE TABLE agents (
    id               TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    ip_address       INET,
    endpoint         TEXT NOT NULL DEFAULT '',
    last_heartbeat   TIMESTAMPTZ NOT NULL DEFAULT now(),
    capabilities     JSONB NOT NULL DEFAULT '[]'::jsonb,
    card             JSONB NOT NULL DEFAULT '{}'::jsonb,
    current_task_id  TEXT,
    running_tasks    INTEGER NOT NULL DEFAULT 0,
    max_concurrency  INTEGER NOT NULL DEFAULT 1,
    status           TEXT NOT NULL DEFAULT 'online'
                     CHECK (status IN ('online', 'draining', 'offline')),
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX agents_status_idx ON agents (status, last_heartbeat);
CREATE INDEX agents_capabilities_idx ON agents USING gin (capabilities);

CREATE TABLE home_network (
    id          BIGSERIAL PRIMARY KEY,
    host_name   TEXT NOT NULL,
    ip_address  INET,
    service     TEXT NOT NULL DEFAULT '',
    tags        TEXT[] NOT NULL DEFAULT '{}',
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (host_name, service)
);

CREATE INDEX home_network_tags_idx ON home_network USING gin (tags);
