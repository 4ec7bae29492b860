"""`agentmesh db status` says how knowledge search works on each server: through pgvector's
HNSW index, or, without pgvector, by comparing every row (exact, slower)."""

from __future__ import annotations

from pathlib import Path

from agentmesh.cli.db import status_text
from agentmesh.config import load_settings
from tests.support.databases import Server


async def test_db_status_says_how_knowledge_is_searched(
    database_uri: str, pg_server: Server, tmp_path: Path
) -> None:
    settings = load_settings({"DATABASE_URL": database_uri}, cwd=tmp_path)

    (line,) = [
        line
        for line in (await status_text(settings)).splitlines()
        if line.startswith("vector mode:")
    ]

    if pg_server.has_pgvector:
        assert (
            line == "vector mode: pgvector (knowledge search: nearest rows through the HNSW index)"
        )
    else:
        assert line == (
            "vector mode: real[] fallback (no pgvector: knowledge search compares every row's"
            " embedding, exact and slower)"
        )
