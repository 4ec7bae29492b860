"""The migrations build the seed's schema on both servers, once, even when run concurrently."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from agentmesh.db.migrate import load_migrations, migrate, schema_status
from tests.support.databases import Server

# The seed document's tables and columns, with their types as PostgreSQL reports them.
SEED_COLUMNS: dict[str, dict[str, str]] = {
    "user_profile": {
        "id": "bigint",
        "user_name": "text",
        "display_name": "text",
        "preferred_language": "text",
        "response_style": "text",
        "timezone": "text",
        "preferences": "jsonb",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
    "home_network": {
        "id": "bigint",
        "host_name": "text",
        "ip_address": "inet",
        "service": "text",
        "tags": "text[]",
        "last_seen": "timestamp with time zone",
    },
    "permissions_profile": {
        "id": "bigint",
        "user_name": "text",
        "mode": "text",
        "command_pattern": "text",
        "decision": "text",
        "host_name": "text",
        "approved_by": "text",
        "approved_at": "timestamp with time zone",
        "expires_at": "timestamp with time zone",
    },
    "custom_knowledge": {
        "id": "bigint",
        "user_name": "text",
        "topic": "text",
        "content": "text",
        "source": "text",
        "tags": "text[]",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
    "api_keys": {
        "id": "bigint",
        "name": "text",
        "key_value": "text",
        "fingerprint": "text",
        "enabled": "boolean",
        "priority": "integer",
        "assigned_user": "text",
        "rotating": "boolean",
        "source": "text",
    },
    "token_prediction_log": {
        "id": "bigint",
        "task_id": "text",
        "api_key_id": "bigint",
        "model": "text",
        "prompt_chars": "integer",
        "predicted_tokens": "integer",
        "actual_tokens": "integer",
        "created_at": "timestamp with time zone",
    },
    "vector_knowledge": {
        "id": "bigint",
        "content": "text",
        "metadata": "jsonb",
        "created_at": "timestamp with time zone",
    },
    "subtasks": {
        "parent_task_id": "text",
        "child_task_id": "text",
        "description": "text",
        "status": "text",
        "assigned_host": "text",
        "agent_mode": "text",
        "created_at": "timestamp with time zone",
        "started_at": "timestamp with time zone",
        "completed_at": "timestamp with time zone",
    },
    "agents": {
        "id": "text",
        "hostname": "text",
        "ip_address": "inet",
        "last_heartbeat": "timestamp with time zone",
        "capabilities": "jsonb",
        "current_task_id": "text",
        "status": "text",
    },
    "task_queue": {
        "id": "bigint",
        "task_id": "text",
        "priority": "integer",
        "claimed": "boolean",
        "claimed_by": "text",
        "claimed_at": "timestamp with time zone",
    },
    "tasks": {
        "id": "text",
        "spec": "jsonb",
        "state": "text",
        "user_name": "text",
        "parent_id": "text",
        "assigned_agent": "text",
        "attempt": "integer",
        "lease_owner": "text",
        "lease_expires_at": "timestamp with time zone",
        "result": "jsonb",
        "created_at": "timestamp with time zone",
        "started_at": "timestamp with time zone",
        "finished_at": "timestamp with time zone",
    },
    "task_events": {
        "task_id": "text",
        "seq": "bigint",
        "kind": "text",
        "payload": "jsonb",
        "created_at": "timestamp with time zone",
    },
}

COLUMNS_QUERY = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""


async def _columns(uri: str) -> dict[str, dict[str, str]]:
    conn = await asyncpg.connect(uri)
    try:
        rows = await conn.fetch(COLUMNS_QUERY)
    finally:
        await conn.close()
    tables: dict[str, dict[str, str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], {})[row["column_name"]] = row["column_type"]
    return tables


async def _migrate_and_describe(uri: str) -> tuple[int, int, dict[str, dict[str, str]]]:
    conn = await asyncpg.connect(uri)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
    finally:
        await conn.close()
    return len(first), len(second), await _columns(uri)


def test_migrations_build_every_seed_table_and_column(
    empty_database_uri: str, pg_server: Server
) -> None:
    applied_first, applied_second, tables = asyncio.run(_migrate_and_describe(empty_database_uri))

    assert applied_first == len(load_migrations())
    assert applied_second == 0
    for table, columns in SEED_COLUMNS.items():
        assert table in tables, f"table {table} is missing"
        for column, column_type in columns.items():
            assert tables[table].get(column) == column_type, f"{table}.{column}"
    expected_embedding = "vector(768)" if pg_server.has_pgvector else "real[]"
    assert tables["vector_knowledge"]["embedding"] == expected_embedding


def test_applying_again_changes_nothing(database_uri: str) -> None:
    async def scenario() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], int]:
        before = await _columns(database_uri)
        conn = await asyncpg.connect(database_uri)
        try:
            applied = await migrate(conn)
            count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            await conn.close()
        assert applied == ()
        return before, await _columns(database_uri), count

    before, after, count = asyncio.run(scenario())
    assert before == after
    assert count == len(load_migrations())


def test_status_reports_vector_mode(database_uri: str, pg_server: Server) -> None:
    async def status() -> str:
        conn = await asyncpg.connect(database_uri)
        try:
            return (await schema_status(conn)).vector_mode
        finally:
            await conn.close()

    assert asyncio.run(status()) == ("pgvector" if pg_server.has_pgvector else "real[] fallback")


def test_hnsw_index_where_pgvector_exists(database_uri: str, pg_server: Server) -> None:
    async def index_definition() -> str | None:
        conn = await asyncpg.connect(database_uri)
        try:
            return await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'vector_knowledge_embedding_idx'"
            )
        finally:
            await conn.close()

    definition = asyncio.run(index_definition())
    if pg_server.has_pgvector:
        assert definition is not None
        assert "hnsw" in definition
        assert "vector_cosine_ops" in definition
    else:
        assert definition is None


def test_two_concurrent_migrate_commands_both_succeed(
    empty_database_uri: str, tmp_path: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_uri}
    for name in ("AGENTMESH_ENV_FILE", "AGENTMESH_CONFIG"):
        env.pop(name, None)
    command = [sys.executable, "-m", "agentmesh.cli.main", "db", "migrate"]
    runs = [
        subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=60) for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    stdout = b"".join(out for out, _ in outputs).decode()
    # Every migration was applied by exactly one of the two.
    for migration in load_migrations():
        assert stdout.count(f"applied {migration.version:04d}_{migration.name}") == 1
    assert "schema is up to date" in stdout
