-- Hybrid search over `custom_knowledge`: full-text rank on a GIN index, and each row's
-- embedding in `vector_knowledge`, found through `metadata->>'knowledge_id'`.
--
-- * `knowledge_document` is the text search document of a row (label, value and tags, in
--   the 'english' configuration: stemmed, and without stop words, which would otherwise
--   match nearly every row and crowd the full-text ranking of a hybrid search with rows
--   unrelated to the query). It is IMMUTABLE, as a generated column's expression must be
--   (array_to_string is only STABLE in general, but not for text[]). `search_document`, a
--   column of agentmesh's own, holds it: the seed has no place for a search document.
-- * A row has at most one embedding (the unique index); deleting a row, or changing what
--   it says, removes its embedding (the trigger), so that a search never finds a stale one;
--   the scheduler embeds a changed row again.

CREATE FUNCTION knowledge_document(label TEXT, value TEXT, tags TEXT[]) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector(
    'english'::regconfig,
    coalesce(label, '') || ' ' || coalesce(value, '') || ' '
        || coalesce(array_to_string(tags, ' '), '')
);

-- Stored, so that ranking a match reads its document instead of parsing the row again.
ALTER TABLE custom_knowledge ADD COLUMN search_document tsvector
    GENERATED ALWAYS AS (knowledge_document(label, value, tags)) STORED;
CREATE INDEX custom_knowledge_document_idx ON custom_knowledge USING gin (search_document);
CREATE INDEX custom_knowledge_recent_idx ON custom_knowledge (inserted_at DESC, id DESC);

CREATE UNIQUE INDEX vector_knowledge_knowledge_idx
    ON vector_knowledge ((metadata->>'knowledge_id'))
    WHERE metadata ? 'knowledge_id';

-- The HNSW index of 0004 again, built wider: ef_construction 128 instead of pgvector's 64.
-- Measured by bench/memory.py on 100,000 768-dimension vectors: recall@10 0.96 at
-- ef_search 200 with 64, 0.998 with 128, for twice the build time.
DO $$
BEGIN
    IF to_regclass('vector_knowledge_embedding_idx') IS NOT NULL THEN
        DROP INDEX vector_knowledge_embedding_idx;
        CREATE INDEX vector_knowledge_embedding_idx ON vector_knowledge
            USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128);
    END IF;
END
$$;

CREATE FUNCTION custom_knowledge_forget_embedding() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM vector_knowledge WHERE metadata->>'knowledge_id' = OLD.id::text;
    RETURN NULL;
END
$$;

CREATE TRIGGER custom_knowledge_deleted
    AFTER DELETE ON custom_knowledge
    FOR EACH ROW EXECUTE FUNCTION custom_knowledge_forget_embedding();
CREATE TRIGGER custom_knowledge_changed
    AFTER UPDATE OF label, value ON custom_knowledge
    FOR EACH ROW
    WHEN (OLD.label IS DISTINCT FROM NEW.label OR OLD.value IS DISTINCT FROM NEW.value)
    EXECUTE FUNCTION custom_knowledge_forget_embedding();
