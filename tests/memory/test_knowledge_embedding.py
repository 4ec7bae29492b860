"""Embedding knowledge rows (both servers): the pass embeds what is missing, one failing row
does not stop the others, no capacity stops the pass (the rows wait), and a row's embedding
goes when the row goes or changes what it says."""

from __future__ import annotations

import asyncpg
import pytest

from agentmesh.memory.knowledge import KnowledgeStore, embedded_text
from agentmesh.memory.model import NewKnowledge
from tests.memory.conftest import ChosenEmbedder, direction


def fact(label: str) -> NewKnowledge:
    return NewKnowledge(label=label, value=f"{label} value", visibility="shared", source="test")


async def embeddings(pool: asyncpg.Pool) -> dict[int, str]:
    """knowledge id -> the embedded text, for every row of vector_knowledge."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT (metadata->>'knowledge_id')::int AS id, content FROM vector_knowledge"
        )
    return {row["id"]: row["content"] for row in rows}


async def test_the_pass_embeds_every_row_but_the_failing_one(pool: asyncpg.Pool) -> None:
    facts = [fact(f"fact {n}") for n in range(5)]
    texts = [f"{new.label}\n{new.value}" for new in facts]
    embedder = ChosenEmbedder({text: direction(**{f"e{n}": 1}) for n, text in enumerate(texts)})
    embedder.failing.add(texts[1])
    store = KnowledgeStore(pool, embedder)
    rows = [await store.add(new) for new in facts]
    # Young rows are left to the task that embeds them as they are added.
    assert await store.embed_pending() == 0

    assert await store.embed_pending(min_age_seconds=0) == 4

    done = await embeddings(pool)
    assert done == {row.id: embedded_text(row) for n, row in enumerate(rows) if n != 1}
    listed = {row.id: row.embedded for row in await store.list("", (), 10)}
    assert listed == {row.id: n != 1 for n, row in enumerate(rows)}
    assert {purpose for _, _, purpose in embedder.asked} == {"document"}

    embedder.failing.clear()
    assert await store.embed_pending(min_age_seconds=0) == 1
    assert await store.embed_pending(min_age_seconds=0) == 0  # nothing is embedded twice


async def test_no_capacity_stops_the_pass_and_the_rows_wait(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = ChosenEmbedder({})
    embedder.no_capacity = True
    store = KnowledgeStore(pool, embedder)
    for n in range(3):
        await store.add(fact(f"fact {n}"))

    assert await store.embed_pending(min_age_seconds=0) == 0
    assert await store.embed_pending(min_age_seconds=0) == 0

    assert len(embedder.asked) == 2  # one try per pass, not one per row
    said = [r for r in caplog.records if "wait for their embeddings" in r.getMessage()]
    assert len(said) == 1, said
    assert await embeddings(pool) == {}


async def test_an_embedding_goes_with_its_row_or_when_the_row_changes(
    pool: asyncpg.Pool,
) -> None:
    facts = [fact("kept"), fact("changed"), fact("removed")]
    embedder = ChosenEmbedder(
        {f"{new.label}\n{new.value}": direction(**{f"e{n}": 1}) for n, new in enumerate(facts)}
    )
    store = KnowledgeStore(pool, embedder)
    kept, changed, removed = [await store.add(new) for new in facts]
    await store.embed_pending(min_age_seconds=0)
    assert set(await embeddings(pool)) == {kept.id, changed.id, removed.id}

    await store.delete(removed.id)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE custom_knowledge SET value = 'new' WHERE id = $1", changed.id)
        await conn.execute("UPDATE custom_knowledge SET tags = '{t}' WHERE id = $1", kept.id)

    assert set(await embeddings(pool)) == {kept.id}
    # The changed row's old text is not written back for it: the row says something else.
    assert not await store.embed_row(changed)
    assert set(await embeddings(pool)) == {kept.id}
