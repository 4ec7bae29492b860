"""The knowledge RPCs through a real in-process scheduler: bad input is INVALID_ARGUMENT
naming the field, and leaves nothing written; a row added is embedded in the background by
the Gemini API (the emulator) with a key from the pool, moving to another key on a 429, and
is then found by meaning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.config import TlsSettings
from agentmesh.memory.embedding import DEFAULT_MODEL, DIMENSIONS
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import memory_pb2, memory_pb2_grpc
from tests.scheduler.conftest import Mesh
from tests.scheduler.conftest import mesh as mesh  # the fixture
from tests.support.gemini_emulator import GeminiEmulator, quota_exhausted

KEY_A = "AIzaSy-knowledge-key-a-000000001"
KEY_B = "AIzaSy-knowledge-key-b-000000002"
EMBED_WAIT_SECONDS = 20.0


@pytest.fixture
async def memory(mesh: Mesh) -> AsyncIterator[Any]:
    """The Memory service of a scheduler (no node: knowledge needs none)."""
    await mesh.start_scheduler()
    async with open_channel(mesh.schedulers[0].address, token=None, tls=TlsSettings()) as channel:
        yield memory_pb2_grpc.MemoryStub(channel)


async def count(database_uri: str, table: str) -> int:
    conn = await asyncpg.connect(database_uri)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def violated_field(error: grpc.aio.AioRpcError) -> str:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    bad_request = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(details).details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


BAD_REQUESTS = [
    ("AddKnowledge", memory_pb2.AddKnowledgeRequest(label="", value="v", user="u"), "label"),
    ("AddKnowledge", memory_pb2.AddKnowledgeRequest(label="l", value="  ", user="u"), "value"),
    (
        "AddKnowledge",
        memory_pb2.AddKnowledgeRequest(label="l", value="v", user="u", visibility="public"),
        "visibility",
    ),
    ("AddKnowledge", memory_pb2.AddKnowledgeRequest(label="l", value="v"), "user"),
    (
        "AddKnowledge",
        memory_pb2.AddKnowledgeRequest(label="l", value="v", user="u", tags=["two words"]),
        "tags",
    ),
    (
        "AddKnowledge",
        memory_pb2.AddKnowledgeRequest(label="l", value="v", user="u\x00"),
        "user",
    ),
    ("AddKnowledge", memory_pb2.AddKnowledgeRequest(label="l", value="v" * 20_000), "value"),
    ("ListKnowledge", memory_pb2.ListKnowledgeRequest(limit=-1), "limit"),
    ("ListKnowledge", memory_pb2.ListKnowledgeRequest(limit=1001), "limit"),
    ("ListKnowledge", memory_pb2.ListKnowledgeRequest(user="\n"), "user"),
    ("SearchKnowledge", memory_pb2.SearchKnowledgeRequest(query=" "), "query"),
    ("SearchKnowledge", memory_pb2.SearchKnowledgeRequest(query="q" * 4097), "query"),
    ("SearchKnowledge", memory_pb2.SearchKnowledgeRequest(query="q", k=-1), "k"),
    ("SearchKnowledge", memory_pb2.SearchKnowledgeRequest(query="q", k=101), "k"),
    ("SearchKnowledge", memory_pb2.SearchKnowledgeRequest(query="q", user="a\tb"), "user"),
    ("DeleteKnowledge", memory_pb2.DeleteKnowledgeRequest(id=0), "id"),
    ("DeleteKnowledge", memory_pb2.DeleteKnowledgeRequest(id=-3), "id"),
]


async def test_bad_input_to_every_knowledge_rpc_names_the_field(
    memory: Any, database_uri: str
) -> None:
    for method, request, field in BAD_REQUESTS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(memory, method)(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        assert violated_field(caught.value) == field, (method, request)
        assert (caught.value.details() or "").startswith(f"{field}: "), (method, request)
    # Nothing half-written: no row, no embedding.
    assert await count(database_uri, "custom_knowledge") == 0
    assert await count(database_uri, "vector_knowledge") == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory.DeleteKnowledge(memory_pb2.DeleteKnowledgeRequest(id=12345), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_without_a_key_rows_wait_and_search_is_by_keyword(
    memory: Any, database_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    added = await memory.AddKnowledge(
        memory_pb2.AddKnowledgeRequest(label="nas address", value="nas.lan is 10.0.0.5", user="al"),
        timeout=10,
    )
    assert (added.visibility, added.user, added.source, added.embedded) == (
        "private",
        "al",
        "api",
        False,
    )
    for _ in range(2):
        found = await memory.SearchKnowledge(
            memory_pb2.SearchKnowledgeRequest(query="where is the NAS", user="al"), timeout=10
        )
        assert found.method == "keyword"
        assert [hit.row.id for hit in found.hits] == [added.id]
    # Said once, not at every search.
    said = [r for r in caplog.records if "by keyword only" in r.getMessage()]
    assert len(said) == 1, said
    assert await count(database_uri, "vector_knowledge") == 0


async def wait_embedded(database_uri: str, rows: int) -> list[asyncpg.Record]:
    deadline = time.monotonic() + EMBED_WAIT_SECONDS
    conn = await asyncpg.connect(database_uri)
    try:
        while True:
            found = await conn.fetch(
                "SELECT (metadata->>'knowledge_id')::int AS knowledge_id,"
                " metadata->>'model' AS model, user_name, content,"
                " array_length(embedding::real[], 1) AS dims"
                " FROM vector_knowledge ORDER BY id"
            )
            if len(found) >= rows or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_row_is_embedded_through_the_key_pool_moving_on_after_a_429(
    mesh: Mesh,
    database_uri: str,
    emulator: GeminiEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = tmp_path / "api_keys.env"
    keys.write_text(f"first={KEY_A}\nsecond={KEY_B}\n")
    # No per-minute spacing: the test's requests go at once.
    mesh.configure(sections={"api_policy": {"rpm_soft_limit": 0}}, GEMINI_API_KEY_FILE=str(keys))
    emulator.set_key_behaviour(KEY_A, quota_exhausted("minute", retry_seconds=40))
    await mesh.start_scheduler()
    async with open_channel(mesh.schedulers[0].address, token=None, tls=TlsSettings()) as channel:
        memory = memory_pb2_grpc.MemoryStub(channel)
        added = await memory.AddKnowledge(
            memory_pb2.AddKnowledgeRequest(
                label="garage door code", value="4711, change it in May", visibility="shared"
            ),
            timeout=10,
        )
        (embedding,) = await wait_embedded(database_uri, 1)
        assert (embedding["knowledge_id"], embedding["model"]) == (added.id, DEFAULT_MODEL)
        assert embedding["dims"] == DIMENSIONS
        assert embedding["content"] == "garage door code\n4711, change it in May"

        asked = [(r.api_key, r.body) for r in emulator.requests if r.action == "embedContent"]
        assert [key for key, _ in asked] == [KEY_A, KEY_B]
        assert asked[1][1] == {
            "content": {"parts": [{"text": "garage door code\n4711, change it in May"}]},
            "taskType": "RETRIEVAL_DOCUMENT",
            "outputDimensionality": DIMENSIONS,
        }
        conn = await asyncpg.connect(database_uri)
        try:
            cooling = await conn.fetch(
                "SELECT k.name,"
                " coalesce(m.cooling_until > now() + interval '30 s', false) AS cooling"
                " FROM api_key_models m JOIN api_keys k ON k.id = m.key_id WHERE m.model = $1"
                " ORDER BY k.name",
                DEFAULT_MODEL,
            )
            used = await conn.fetchval(
                "SELECT sum(requests) FROM api_key_usage u JOIN api_keys k ON k.id = u.key_id"
                " WHERE u.model = $1 AND k.name = 'second'",
                DEFAULT_MODEL,
            )
        finally:
            await conn.close()
        assert [(r["name"], r["cooling"]) for r in cooling] == [("first", True), ("second", False)]
        assert used == 1  # the 429 on the first key was not counted as spent

        listed = await memory.ListKnowledge(memory_pb2.ListKnowledgeRequest(), timeout=10)
        assert [(row.id, row.embedded) for row in listed.rows] == [(added.id, True)]
        # The same text as a query: the emulator's embedding of it is the row's.
        found = await memory.SearchKnowledge(
            memory_pb2.SearchKnowledgeRequest(query="garage door code\n4711, change it in May"),
            timeout=10,
        )
        assert found.method in ("vector", "exact")
        (hit,) = found.hits
        assert hit.row.id == added.id
        assert hit.similarity == pytest.approx(1.0, abs=1e-5)
        assert hit.text_rank > 0

        await memory.DeleteKnowledge(memory_pb2.DeleteKnowledgeRequest(id=added.id), timeout=10)
        assert await count(database_uri, "vector_knowledge") == 0
    # The cooled key is named in the log by its label; no secret is ever logged.
    cooled = [r for r in caplog.records if "cooling down" in r.getMessage()]
    assert [getattr(r, "key", None) for r in cooled] == ["first"]
    for secret in (KEY_A, KEY_B):
        assert secret not in caplog.text
