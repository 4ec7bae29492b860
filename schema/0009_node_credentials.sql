-- Node credentials: each node heartbeats and leases keys with a token of its own, not with
-- the user credential (AGENTMESH_TOKEN). `agentmesh nodes enroll` issues one and shows it
-- once; only its SHA-256 is kept. Its first heartbeat binds the agent id it names: from
-- then on it speaks for that agent only, and no other live credential may.
CREATE TABLE node_credentials (
    -- "nc-" and 12 hex digits: how `agentmesh nodes` names it (or by its name).
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    -- SHA-256 of the token, hex: the token is 256 random bits, so a plain hash is enough.
    token_hash   TEXT NOT NULL UNIQUE,
    agent_id     TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
-- One live credential per agent id, and per name.
CREATE UNIQUE INDEX node_credentials_agent_idx ON node_credentials (agent_id)
    WHERE revoked_at IS NULL AND agent_id IS NOT NULL;
CREATE UNIQUE INDEX node_credentials_name_idx ON node_credentials (name)
    WHERE revoked_at IS NULL;

-- The credential whose heartbeat last wrote the agent's row (its endpoint above all); NULL
-- in an open mesh. A secured scheduler dispatches only to agents whose row was written
-- under their own live, bound credential.
ALTER TABLE agents ADD COLUMN credential_id TEXT;
