"""Long-term facts (`custom_knowledge`): stored, listed, found, removed.

Visibility: a `private` row is its user's alone; a `shared` row is everyone's. Search is by
PostgreSQL full-text rank over the label, value and tags, any of the query's words matching
(the more, and the rarer, the higher the rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import asyncpg

from agentmesh.errors import NotFound
from agentmesh.memory.model import (
    KnowledgeHit,
    KnowledgeRow,
    NewKnowledge,
    SearchResult,
)

COLUMNS = "id, label, value, tags, visibility, user_name, task_id, source, inserted_at"
# What a user may see: their own rows, and the shared ones.
VISIBLE = "(k.visibility = 'shared' OR (k.user_name = $1 AND $1 <> ''))"
INSERT = f"""
INSERT INTO custom_knowledge (label, value, tags, visibility, user_name, source, task_id)
VALUES ($1, $2, $3, $4, $5, $6, nullif($7, ''))
RETURNING {COLUMNS}
"""
LIST = f"""
SELECT {COLUMNS} FROM custom_knowledge k
WHERE {VISIBLE} AND coalesce(k.tags, '{{}}') @> $2::text[]
ORDER BY k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""
DELETE = f"DELETE FROM custom_knowledge WHERE id = $1 RETURNING {COLUMNS}"
DOCUMENT = (
    "to_tsvector('simple', coalesce(k.label, '') || ' ' || coalesce(k.value, '') || ' '"
    " || array_to_string(coalesce(k.tags, '{}'), ' '))"
)
KEYWORD_SEARCH = rf"""
SELECT {COLUMNS}, ts_rank_cd({DOCUMENT}, q) AS rank
FROM custom_knowledge k,
     websearch_to_tsquery('simple', regexp_replace($2, '\s+', ' or ', 'g')) AS q
WHERE {VISIBLE} AND {DOCUMENT} @@ q
ORDER BY rank DESC, k.inserted_at DESC NULLS LAST, k.id DESC
LIMIT $3
"""


def knowledge_row(row: asyncpg.Record, embedded: bool = False) -> KnowledgeRow:
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
        embedded=embedded,
    )


class KnowledgeStore:
    """The `KnowledgeBase` on PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, new: NewKnowledge) -> KnowledgeRow:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                INSERT,
                new.label,
                new.value,
                list(new.tags),
                new.visibility,
                new.user,
                new.source,
                new.task_id,
            )
        assert row is not None
        return knowledge_row(row)

    async def list(self, user: str, tags: Sequence[str], limit: int) -> list[KnowledgeRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(LIST, user, list(tags), limit)
        return [knowledge_row(row) for row in rows]

    async def search(self, query: str, user: str, k: int) -> SearchResult:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(KEYWORD_SEARCH, user, query, k)
        hits = [
            KnowledgeHit(knowledge_row(row), score=row["rank"], text_rank=row["rank"])
            for row in rows
        ]
        return SearchResult(hits, method="keyword")

    async def delete(self, knowledge_id: int) -> KnowledgeRow:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(DELETE, knowledge_id)
        if row is None:
            raise NotFound(f"no knowledge row {knowledge_id}")
        return knowledge_row(row)
