-- Long-term facts with embeddings for similarity search.
--
-- Where the pgvector extension is available (the embedded PostgreSQL has it), `embedding`
-- is VECTOR(768) with an HNSW index for cosine distance. Where it is not, the column is
-- REAL[] (fallback mode: similarity is computed outside the index); `agentmesh db status`
-- reports which mode the database is in.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE vector_knowledge (
            id          BIGSERIAL PRIMARY KEY,
            user_name   TEXT NOT NULL DEFAULT '',
            content     TEXT NOT NULL,
            metadata    JSONB NOT NULL DEFAULT '{}'::jsonb,
            source      TEXT NOT NULL DEFAULT '',
            embedding   VECTOR(768) NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX vector_knowledge_embedding_idx
            ON vector_knowledge USING hnsw (embedding vector_cosine_ops);
    ELSE
        CREATE TABLE vector_knowledge (
            id          BIGSERIAL PRIMARY KEY,
            user_name   TEXT NOT NULL DEFAULT '',
            content     TEXT NOT NULL,
            metadata    JSONB NOT NULL DEFAULT '{}'::jsonb,
            source      TEXT NOT NULL DEFAULT '',
            embedding   REAL[] NOT NULL CHECK (array_length(embedding, 1) = 768),
            created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        );
    END IF;
END
$$;

CREATE INDEX vector_knowledge_user_idx ON vector_knowledge (user_name, created_at);
