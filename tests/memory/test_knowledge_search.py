"""Hybrid knowledge search on both servers, with vectors the test chooses: a fact that
matches by meaning or by keyword ranks above unrelated ones, recency breaks ties, another
user's private rows never appear, and the REAL[] fallback (no pgvector) gives the same order
as the HNSW index."""

from __future__ import annotations

import asyncpg
import pytest

from agentmesh.memory.knowledge import KnowledgeStore, embedded_text
from agentmesh.memory.model import KnowledgeRow, NewKnowledge
from tests.memory.conftest import ChosenEmbedder, direction, near
from tests.support.databases import Server

QUERY = "where is the router password"


def fact(label: str, value: str, user: str = "", visibility: str = "shared") -> NewKnowledge:
    return NewKnowledge(label=label, value=value, visibility=visibility, user=user, source="test")


BACKUPS = fact("home backups", "restic copies /home to the NAS every night", "alice", "private")
ROUTER = fact("router admin password", "in the drawer below the TV")
DENTIST = fact("dentist", "appointment on Friday at 9")
INSURANCE = fact("car insurance", "renews in March", "alice", "private")
BOBS = fact("router password of the office", "on a sticker under it", "bob", "private")


def vectors() -> dict[str, list[float]]:
    """The query is e0; cosine similarity with it: backups 0.95 (by meaning), dentist 0.30,
    insurance 0.20, router 0.10 (it matches by keyword), Bob's private row 1.0."""
    return {
        QUERY: direction(e0=1),
        embedded_text_of(BACKUPS): near(0.95, 1),
        embedded_text_of(DENTIST): near(0.30, 2),
        embedded_text_of(INSURANCE): near(0.20, 3),
        embedded_text_of(ROUTER): near(0.10, 4),
        embedded_text_of(BOBS): direction(e0=1),
    }


def embedded_text_of(new: NewKnowledge) -> str:
    return embedded_text(KnowledgeRow(id=0, label=new.label, value=new.value))


async def add_all(store: KnowledgeStore, *facts: NewKnowledge) -> dict[str, KnowledgeRow]:
    return {new.label: await store.add(new) for new in facts}


def expected_method(pg_server: Server) -> str:
    return "vector" if pg_server.has_pgvector else "exact"


async def test_meaning_and_keyword_rank_above_unrelated_facts(
    pool: asyncpg.Pool, pg_server: Server
) -> None:
    embedder = ChosenEmbedder(vectors())
    store = KnowledgeStore(pool, embedder)
    rows = await add_all(store, BACKUPS, ROUTER, DENTIST, INSURANCE, BOBS)
    assert await store.embed_pending(min_age_seconds=0) == 5

    result = await store.search(QUERY, "alice", 10)

    assert result.method == expected_method(pg_server)
    labels = [hit.row.label for hit in result.hits]
    # The router fact matches by keyword (and a little by meaning), the backups by meaning:
    # both above the unrelated ones, which follow by similarity. Bob's row never shows.
    assert labels == ["router admin password", "home backups", "dentist", "car insurance"]
    router, backups, dentist, insurance = result.hits
    assert router.text_rank > 0
    assert backups.text_rank == dentist.text_rank == insurance.text_rank == 0
    assert backups.similarity == pytest.approx(0.95, abs=1e-5)
    assert router.similarity == pytest.approx(0.10, abs=1e-5)
    assert router.score > backups.score > dentist.score > insurance.score
    assert all(hit.row.embedded for hit in result.hits)
    assert rows["home backups"].id == backups.row.id


async def test_private_rows_are_their_users_alone(pool: asyncpg.Pool, pg_server: Server) -> None:
    store = KnowledgeStore(pool, ChosenEmbedder(vectors()))
    await add_all(store, BACKUPS, ROUTER, DENTIST, INSURANCE, BOBS)
    await store.embed_pending(min_age_seconds=0)

    as_bob = await store.search(QUERY, "bob", 10)
    # Bob's own row is the nearest and matches by keyword; Alice's private rows never show.
    assert [hit.row.label for hit in as_bob.hits] == [
        "router password of the office",
        "router admin password",
        "dentist",
    ]
    nobody = await store.search(QUERY, "", 10)
    assert [hit.row.label for hit in nobody.hits] == ["router admin password", "dentist"]
    for user in ("alice", "bob", "", "carol"):
        for hit in (await store.search(QUERY, user, 100)).hits:
            assert hit.row.visibility == "shared" or hit.row.user == user
        listed = await store.list(user, (), 100)
        assert all(row.visibility == "shared" or row.user == user for row in listed)


async def test_recency_breaks_a_tie(pool: asyncpg.Pool, pg_server: Server) -> None:
    toner = fact("printer toner", "HP 305, two left")  # found by keyword only: no embedding
    supplies = fact("office supplies", "ordered from the usual shop")  # by meaning only
    embedder = ChosenEmbedder(
        {"printer": direction(e0=1), embedded_text_of(supplies): near(0.99, 5)}
    )
    store = KnowledgeStore(pool, embedder)
    rows = await add_all(store, toner, supplies)
    await store.embed_pending(min_age_seconds=0)

    async def make_newer(row: KnowledgeRow) -> None:
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE custom_knowledge SET inserted_at = now() + interval '1 hour' WHERE id = $1",
                row.id,
            )

    for newer, older in (
        ("printer toner", "office supplies"),
        ("office supplies", "printer toner"),
    ):
        await make_newer(rows[newer])
        result = await store.search("printer", "", 5)
        first, second = result.hits
        assert first.score == second.score  # both first in one ranking, absent from the other
        assert (first.row.label, second.row.label) == (newer, older)
        assert (first.row.embedded, second.row.embedded) == (
            newer == "office supplies",
            older == "office supplies",
        )


async def test_a_query_that_cannot_be_embedded_is_searched_by_keyword(
    pool: asyncpg.Pool, pg_server: Server
) -> None:
    embedder = ChosenEmbedder(vectors())
    store = KnowledgeStore(pool, embedder)
    await add_all(store, BACKUPS, ROUTER, DENTIST, BOBS)
    await store.embed_pending(min_age_seconds=0)
    embedder.no_capacity = True

    result = await store.search("router PASSWORDS", "alice", 5)

    assert result.method == "keyword"
    # Stemmed and case-folded: "PASSWORDS" finds "password"; Bob's row stays his.
    assert [hit.row.label for hit in result.hits] == ["router admin password"]
    assert result.hits[0].similarity == 0


async def test_rows_not_embedded_yet_are_found_by_keyword(
    pool: asyncpg.Pool, pg_server: Server
) -> None:
    store = KnowledgeStore(pool, ChosenEmbedder({QUERY: direction(e0=1)}))
    await add_all(store, ROUTER, DENTIST)

    result = await store.search(QUERY, "", 5)

    assert result.method == expected_method(pg_server)
    assert [(hit.row.label, hit.row.embedded) for hit in result.hits] == [
        ("router admin password", False)
    ]
