"""Long-term facts (`custom_knowledge`): stored, embedded, listed, found, removed.

Visibility: a `private` row is its user's alone; a `shared` row is everyone's.

Every row gets an embedding in `vector_knowledge` (`metadata->>'knowledge_id'` points back
at it), made by an `Embedder` after `add` has returned, in the background (the tasks go to
`start_embedding`'s `spawn`: the scheduler's side tasks, cancelled when it stops); rows
that missed it (a restart, no key, a 429 on every key) are embedded by a periodic pass.
A row that is not embedded yet is still found by keyword.

Search is hybrid: the nearest rows by cosine similarity (pgvector's HNSW index; on a
database without pgvector, the `REAL[]` fallback compares every visible row: exact, and
slower) and the best by full-text rank (any of the query's words but English stop words,
stemmed; the more of them, the higher), fused by reciprocal rank (`ranking`). When the
query cannot be embedded, the full-text rank alone answers (method "keyword").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC
from typing import Any

import asyncpg

from agentmesh.db.migrate import SELECT_VECTOR_TYPE
from agentmesh.errors import NotFound
from agentmesh.memory.embedding import Embedder, EmbeddingUnavailable
from agentmesh.memory.model import KnowledgeRow, NewKnowledge, SearchResult
from agentmesh.memory.ranking import Ranked, fuse

log = logging.getLogger(__name__)

# Starts a coroutine in the background, by name (the scheduler's `on_the_side`).
Spawn = Callable[[Coroutine[Any, Any, None], str], None]

# A query waits this long for its embedding, then searches by keyword alone.
QUERY_EMBEDDING_SECONDS = 3.0
# The embeddings of this many recent queries are kept (a task's context asks again at
# each attempt): each new one spends an API request.
QUERY_CACHE_SIZE = 256
# Each ranking contributes this many candidates per hit asked for (at least the minimum).
CANDIDATES_PER_HIT = 4
MIN_CANDIDATES = 40
# HNSW's search breadth (pgvector's default is 40): the index returns at most this many
# rows, before visibility filters them; bench/memory.py measures recall against it.
EF_SEARCH = 200
# The periodic pass leaves rows this young to the task that embeds them as they are added.
PASS_MIN_AGE_SECONDS = 30.0
PASS_INTERVAL_SECONDS = 60.0
PASS_BATCH = 100
# One scheduler replica at a time runs the pass (session advisory lock): "agm" "kno".
PASS_LOCK_ID = 0x61676D_6B6E6F

COLUMNS = (
    "k.id, k.label, k.value, k.tags, k.visibility, k.user_name, k.task_id, k.source, k.inserted_at"
)
# What a user may see: their own rows, and the shared ones ($1: the user).
VISIBLE = "(k.visibility = 'shared' OR (k.user_name = $1 AND $1 <> ''))"
# The row's full-text document (migration 0011: label, value and tags, GIN-indexed).
DOCUMENT = "k.search_document"
EMBEDDING_OF_K = "v.metadata ? 'knowledge_id' AND v.metadata->>'knowledge_id' = k.id::text"
EMBEDDED = f"EXISTS (SELECT 1 FROM vector_knowledge v WHERE {EMBEDDING_OF_K}) AS embedded"

INSERT = f"""
INSERT INTO custom_knowledge AS k (label, value, tags, visibility, user_name, source, task_id)
VALUES ($1, $2, $3, $4, $5, $6, nullif($7, ''))
RETURNING {COLUMNS}, false AS embedded
"""
LIST = f"""
SELECT {COLUMNS}, {EMBEDDED} FROM custom_knowledge k
WHERE {VISIBLE} AND coalesce(k.tags, '{{}}') @> $2::text[]
ORDER BY k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""
DELETE = f"DELETE FROM custom_knowledge k WHERE k.id = $1 RETURNING {COLUMNS}, false AS embedded"
# Any of the query's words ($2): websearch syntax with `or` between the words.
KEYWORD_SEARCH = rf"""
SELECT {COLUMNS}, {EMBEDDED}, ts_rank({DOCUMENT}, q) AS rank
FROM custom_knowledge k,
     websearch_to_tsquery('english', regexp_replace($2, '\s+', ' or ', 'g')) AS q
WHERE {VISIBLE} AND {DOCUMENT} @@ q
ORDER BY rank DESC, k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""
# pgvector: the index's nearest rows first (ORDER BY distance LIMIT n, under ef_search),
# then visibility; $2 the query's unit vector. {pool}: how many the index is asked for.
VECTOR_SEARCH = """
WITH nearest AS MATERIALIZED (
    SELECT (v.metadata->>'knowledge_id')::int AS knowledge_id,
           v.embedding <=> $2::real[]::vector AS distance
    FROM vector_knowledge v
    ORDER BY v.embedding <=> $2::real[]::vector
    LIMIT {pool}
)
SELECT {columns}, true AS embedded, 1 - n.distance AS similarity
FROM nearest n JOIN custom_knowledge k ON k.id = n.knowledge_id
WHERE {visible}
ORDER BY n.distance, k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""
# REAL[] (no pgvector): the cosine similarity of every visible embedded row, computed here.
EXACT_SEARCH = f"""
SELECT {COLUMNS}, true AS embedded, s.similarity
FROM custom_knowledge k
JOIN vector_knowledge v ON {EMBEDDING_OF_K}
CROSS JOIN LATERAL (
    SELECT sum(a::float8 * b) / nullif(sqrt(sum(a::float8 * a)), 0) AS similarity
    FROM unnest(v.embedding, $2::float8[]) AS t(a, b)
) s
WHERE {VISIBLE}
ORDER BY s.similarity DESC NULLS LAST, k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""
# A row's embedding, written only if the row still says what was embedded ($4) and has
# none yet; the row is locked meanwhile, so that a concurrent delete leaves no orphan.
SAVE_EMBEDDING = """
WITH k AS (
    SELECT id, user_name, source, label, value FROM custom_knowledge
    WHERE id = $1 FOR KEY SHARE
)
INSERT INTO vector_knowledge (user_name, content, metadata, source, embedding)
SELECT coalesce(k.user_name, ''), $4, jsonb_build_object('knowledge_id', k.id, 'model', $3::text),
       k.source, $2::real[]{cast}
FROM k
WHERE coalesce(k.label, '') || E'\\n' || coalesce(k.value, '') = $4
ON CONFLICT ((metadata->>'knowledge_id')) WHERE metadata ? 'knowledge_id' DO NOTHING
RETURNING id
"""
UNEMBEDDED = f"""
SELECT {COLUMNS}, false AS embedded FROM custom_knowledge k
WHERE k.id > $1
  AND NOT EXISTS (SELECT 1 FROM vector_knowledge v WHERE {EMBEDDING_OF_K})
  AND (k.inserted_at IS NULL
       OR k.inserted_at <= (now() AT TIME ZONE 'UTC') - make_interval(secs => $2))
ORDER BY k.id
LIMIT $3
"""


def knowledge_row(row: asyncpg.Record) -> KnowledgeRow:
    return KnowledgeRow(
        id=row["id"],
        label=row["label"] or "",
        value=row["value"] or "",
        tags=tuple(row["tags"] or ()),
        visibility=row["visibility"] or "private",
        user=row["user_name"] or "",
        task_id=row["task_id"] or "",
        source=row["source"] or "",
        inserted_at=row["inserted_at"].replace(tzinfo=UTC) if row["inserted_at"] else None,
        embedded=row["embedded"],
    )


def embedded_text(row: KnowledgeRow) -> str:
    """What a row's embedding stands for (`vector_knowledge.content`): label, then value."""
    return f"{row.label}\n{row.value}"


class KnowledgeStore:
    """The `KnowledgeBase` on PostgreSQL. Without an embedder, rows are never embedded and
    search is by keyword; until `start_embedding`, rows wait for `embed_pending`."""

    def __init__(self, pool: asyncpg.Pool, embedder: Embedder | None = None) -> None:
        self._pool = pool
        self._embedder = embedder
        self._spawn: Spawn | None = None
        self._query_vectors: OrderedDict[str, Sequence[float]] = OrderedDict()
        self._pgvector: bool | None = None
        # What was said in the log about embeddings that cannot be made (said once, until
        # one can again).
        self._said_rows_wait = False
        self._said_keyword_only = False

    def start_embedding(self, spawn: Spawn) -> None:
        """Embed each row as it is added from now on, in a short task of its own (through
        `spawn`); the rows that missed it are `keep_embedded`'s, which the owner runs."""
        if self._embedder is None:
            return
        self._spawn = spawn

    async def add(self, new: NewKnowledge) -> KnowledgeRow:
        async with self._pool.acquire() as conn:
            record = await conn.fetchrow(
                INSERT,
                new.label,
                new.value,
                list(new.tags),
                new.visibility,
                new.user,
                new.source,
                new.task_id,
            )
        assert record is not None
        row = knowledge_row(record)
        if self._embedder is not None and self._spawn is not None:
            self._spawn(self._embed_in_background(row), f"embed knowledge {row.id}")
        return row

    async def list(self, user: str, tags: Sequence[str], limit: int) -> list[KnowledgeRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(LIST, user, list(tags), limit)
        return [knowledge_row(row) for row in rows]

    async def delete(self, knowledge_id: int) -> KnowledgeRow:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(DELETE, knowledge_id)
        if row is None:
            raise NotFound(f"no knowledge row {knowledge_id}")
        return knowledge_row(row)

    # ------------------------------------------------------------------------- search

    async def search(self, query: str, user: str, k: int) -> SearchResult:
        candidates = max(k * CANDIDATES_PER_HIT, MIN_CANDIDATES)
        vector = await self._query_vector(query, user)
        pgvector = await self.has_pgvector()
        # The two rankings at once, on two connections.
        by_text, by_vector = await asyncio.gather(
            self._by_text(query, user, candidates),
            self._by_vector(vector, user, candidates, pgvector=pgvector),
        )
        hits = fuse(
            [Ranked(knowledge_row(r), float(r["similarity"] or 0.0)) for r in by_vector],
            [Ranked(knowledge_row(r), float(r["rank"])) for r in by_text],
            k,
        )
        method = "keyword" if vector is None else "vector" if pgvector else "exact"
        return SearchResult(hits, method=method)

    async def _by_text(self, query: str, user: str, candidates: int) -> Sequence[asyncpg.Record]:
        async with self._pool.acquire() as conn:
            return await conn.fetch(KEYWORD_SEARCH, user, query, candidates)

    async def _by_vector(
        self, vector: Sequence[float] | None, user: str, candidates: int, *, pgvector: bool
    ) -> Sequence[asyncpg.Record]:
        if vector is None:
            return ()
        async with self._pool.acquire() as conn:
            if not pgvector:
                return await conn.fetch(EXACT_SEARCH, user, vector, candidates)
            breadth = max(EF_SEARCH, candidates)
            sql = VECTOR_SEARCH.format(pool=breadth, columns=COLUMNS, visible=VISIBLE)
            async with conn.transaction():
                # SET LOCAL takes no parameters: `breadth` is an int of ours.
                await conn.execute(f"SET LOCAL hnsw.ef_search = {int(breadth)}")
                return await conn.fetch(sql, user, vector, candidates)

    async def has_pgvector(self) -> bool:
        """Whether `vector_knowledge.embedding` is pgvector's VECTOR (else REAL[])."""
        if self._pgvector is None:
            async with self._pool.acquire() as conn:
                column_type = await conn.fetchval(SELECT_VECTOR_TYPE)
            self._pgvector = str(column_type or "").startswith("vector")
        return self._pgvector

    async def _query_vector(self, query: str, user: str) -> Sequence[float] | None:
        if self._embedder is None:
            return None
        if (known := self._query_vectors.get(query)) is not None:
            self._query_vectors.move_to_end(query)
            return known
        try:
            async with asyncio.timeout(QUERY_EMBEDDING_SECONDS):
                vector = await self._embedder.embed(query, user=user, purpose="query")
        except (EmbeddingUnavailable, TimeoutError) as exc:
            why = str(exc) or "no answer in time"
            if not self._said_keyword_only:
                self._said_keyword_only = True
                log.warning(
                    "knowledge search by keyword only: the query cannot be embedded: %s", why
                )
            else:
                log.debug("knowledge search by keyword only: %s", why)
            return None
        self._said_keyword_only = False
        self._query_vectors[query] = vector
        if len(self._query_vectors) > QUERY_CACHE_SIZE:
            self._query_vectors.popitem(last=False)
        return vector

    # ---------------------------------------------------------------------- embedding

    async def embed_row(self, row: KnowledgeRow) -> bool:
        """Embed one row and store its vector; False if the row changed or went meanwhile
        (or has one already). Raises EmbeddingUnavailable."""
        assert self._embedder is not None, "a store without an embedder embeds nothing"
        text = embedded_text(row)
        vector = await self._embedder.embed(text, user=row.user, purpose="document")
        cast = "::vector" if await self.has_pgvector() else ""
        async with self._pool.acquire() as conn:
            saved = await conn.fetchval(
                SAVE_EMBEDDING.format(cast=cast), row.id, vector, self._embedder.model, text
            )
        self._said_rows_wait = False
        return saved is not None

    async def embed_pending(self, min_age_seconds: float = PASS_MIN_AGE_SECONDS) -> int:
        """One pass over the rows without an embedding (older than `min_age_seconds`):
        embed each; a row that fails is left for the next pass, and the pass stops when no
        key has capacity. Returns how many were embedded; 0 when another replica is at it."""
        if self._embedder is None:
            return 0
        embedded = 0
        async with self._pool.acquire() as lock:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", PASS_LOCK_ID):
                return 0
            try:
                after = 0
                while True:
                    async with self._pool.acquire() as conn:
                        batch = await conn.fetch(UNEMBEDDED, after, min_age_seconds, PASS_BATCH)
                    for record in batch:
                        row = knowledge_row(record)
                        after = row.id
                        try:
                            embedded += await self.embed_row(row)
                        except EmbeddingUnavailable as exc:
                            if exc.no_capacity:
                                self._say_rows_wait(str(exc))
                                return embedded
                            log.warning(
                                "knowledge row not embedded: %s",
                                exc,
                                extra={"knowledge_id": row.id},
                            )
                    if len(batch) < PASS_BATCH:
                        return embedded
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", PASS_LOCK_ID)

    async def keep_embedded(self, interval_seconds: float = PASS_INTERVAL_SECONDS) -> None:
        """Run `embed_pending` now and every `interval_seconds`, until cancelled."""
        while True:
            try:
                done = await self.embed_pending()
                if done:
                    log.info("knowledge rows embedded by the periodic pass", extra={"rows": done})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the knowledge embedding pass failed; trying again later")
            await asyncio.sleep(interval_seconds)

    async def _embed_in_background(self, row: KnowledgeRow) -> None:
        """Embed a row just added; any failure leaves it to the periodic pass."""
        try:
            await self.embed_row(row)
        except EmbeddingUnavailable as exc:
            if exc.no_capacity:
                self._say_rows_wait(str(exc))
            else:
                log.warning("knowledge row not embedded: %s", exc, extra={"knowledge_id": row.id})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("embedding a knowledge row failed", extra={"knowledge_id": row.id})

    def _say_rows_wait(self, why: str) -> None:
        if not self._said_rows_wait:
            self._said_rows_wait = True
            log.warning(
                "knowledge rows wait for their embeddings (found by keyword meanwhile): %s", why
            )
        else:
            log.debug("knowledge rows wait for their embeddings: %s", why)
