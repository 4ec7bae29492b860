"""The migrations build the seed's schema on both servers, once, even when run concurrently."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from agentmesh.db.migrate import (
    CREATE_MIGRATIONS_TABLE,
    INSERT_APPLIED,
    load_migrations,
    migrate,
    schema_status,
)
from tests.seed_schema import (
    SEED_DIR,
    SEED_TABLES,
    SeedColumn,
    normalize_default,
    parse_seed_schema,
    seed_file,
)
from tests.support.databases import Server

# The tables of agentmesh's own (the seed references `tasks` but does not define it).
OWN_COLUMNS: dict[str, dict[str, str]] = {
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
        "api_key_id": "bigint",
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
       format_type(a.atttypid, a.atttypmod) AS column_type,
       pg_get_expr(d.adbin, d.adrelid) AS column_default, a.attnotnull AS not_null
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""
# Single-column unique indexes and primary keys.
UNIQUE_QUERY = """
SELECT c.relname AS table_name, a.attname AS column_name, i.indisprimary AS is_primary
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indisunique AND i.indnatts = 1
"""
FOREIGN_KEYS_QUERY = """
SELECT c.relname AS table_name, a.attname AS column_name,
       r.relname || '(' || ra.attname || ')' AS target
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
JOIN pg_class r ON r.oid = k.confrelid
JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.confkey[1]
WHERE k.contype = 'f' AND cardinality(k.conkey) = 1
"""


@dataclass(frozen=True)
class DatabaseColumn:
    type: str
    default: str | None
    not_null: bool


@dataclass(frozen=True)
class Catalog:
    columns: dict[str, dict[str, DatabaseColumn]]
    unique: set[tuple[str, str]]
    primary: set[tuple[str, str]]
    foreign_keys: set[tuple[str, str, str]]

    def types(self) -> dict[str, dict[str, str]]:
        return {
            table: {name: column.type for name, column in columns.items()}
            for table, columns in self.columns.items()
        }


async def _catalog(uri: str) -> Catalog:
    conn = await asyncpg.connect(uri)
    try:
        rows = await conn.fetch(COLUMNS_QUERY)
        unique_rows = await conn.fetch(UNIQUE_QUERY)
        fk_rows = await conn.fetch(FOREIGN_KEYS_QUERY)
    finally:
        await conn.close()
    columns: dict[str, dict[str, DatabaseColumn]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], {})[row["column_name"]] = DatabaseColumn(
            row["column_type"], normalize_default(row["column_default"]), row["not_null"]
        )
    return Catalog(
        columns=columns,
        unique={(r["table_name"], r["column_name"]) for r in unique_rows},
        primary={(r["table_name"], r["column_name"]) for r in unique_rows if r["is_primary"]},
        foreign_keys={(r["table_name"], r["column_name"], r["target"]) for r in fk_rows},
    )


async def _columns(uri: str) -> dict[str, dict[str, str]]:
    return (await _catalog(uri)).types()


async def _migrate_and_describe(uri: str) -> tuple[int, int, Catalog]:
    conn = await asyncpg.connect(uri)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
    finally:
        await conn.close()
    return len(first), len(second), await _catalog(uri)


def seed_mismatches(catalog: Catalog, *, has_pgvector: bool) -> list[str]:
    """Every way the database differs from the seed's tables, in words."""
    problems = []
    for table, columns in SEED_TABLES.items():
        if table not in catalog.columns:
            problems.append(f"table {table} is missing")
            continue
        for name, seed in columns.items():
            where = f"{table}.{name}"
            found = catalog.columns[table].get(name)
            if found is None:
                problems.append(f"{where} is missing")
                continue
            expected_type = seed.type
            if where == "vector_knowledge.embedding" and not has_pgvector:
                expected_type = "real[]"
            if found.type != expected_type:
                problems.append(f"{where} is {found.type}, the seed says {expected_type}")
            if found.default != seed.default:
                problems.append(f"{where} defaults to {found.default}, the seed: {seed.default}")
            # Nullable unless it is the key: every INSERT written for the seed works here.
            if found.not_null != seed.primary_key:
                problems.append(f"{where} is {'NOT NULL' if found.not_null else 'nullable'}")
            if seed.primary_key and (table, name) not in catalog.primary:
                problems.append(f"{where} is not the primary key")
            if seed.unique and (table, name) not in catalog.unique:
                problems.append(f"{where} is not unique")
            if seed.references and (table, name, seed.references) not in catalog.foreign_keys:
                problems.append(f"{where} does not reference {seed.references}")
    return problems


def test_migrations_build_every_seed_table_and_column(
    empty_database_uri: str, pg_server: Server
) -> None:
    applied_first, applied_second, catalog = asyncio.run(_migrate_and_describe(empty_database_uri))

    assert applied_first == len(load_migrations())
    assert applied_second == 0
    assert seed_mismatches(catalog, has_pgvector=pg_server.has_pgvector) == []
    types = catalog.types()
    for table, columns in OWN_COLUMNS.items():
        for column, column_type in columns.items():
            assert types[table].get(column) == column_type, f"{table}.{column}"


def test_the_seed_data_is_the_seed_files_schema() -> None:
    path = seed_file()
    if path is None:
        pytest.skip(f"the seed document is not beside the project ({SEED_DIR} is absent)")
    parsed = parse_seed_schema(path.read_text(encoding="utf-8"))

    assert parsed == SEED_TABLES


def test_the_seed_reader_reads_what_the_seed_writes() -> None:
    sql = """
```sql
CREATE TABLE t (
  id SERIAL PRIMARY KEY,
  name TEXT UNIQUE,
  parent TEXT REFERENCES tasks(id),
  v VECTOR(768),
  seen TIMESTAMP DEFAULT NOW(),
  mode TEXT DEFAULT 'private'
);
ALTER TABLE t
ADD COLUMN n INT DEFAULT 0,
ADD COLUMN on BOOLEAN DEFAULT TRUE;
```
"""
    assert parse_seed_schema(sql) == {
        "t": {
            "id": SeedColumn("integer", default="nextval", primary_key=True),
            "name": SeedColumn("text", unique=True),
            "parent": SeedColumn("text", references="tasks(id)"),
            "v": SeedColumn("vector(768)"),
            "seen": SeedColumn("timestamp without time zone", default="now()"),
            "mode": SeedColumn("text", default="'private'"),
            "n": SeedColumn("integer", default="0"),
            "on": SeedColumn("boolean", default="true"),
        }
    }


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


OLD_ROWS = """
INSERT INTO tasks (id, kind, spec, root_id) VALUES
    ('t1', '', '{}', 't1'),
    ('t2', 'shell', '{"kind": "shell", "target_host": "desk"}', 't1'),
    ('t3', 'gemini', '{"kind": "gemini"}', 't1');
INSERT INTO user_profile (user_name, response_style) VALUES ('ana', 'bullet points');
INSERT INTO permissions_profile (user_name, mode, command_pattern, decision) VALUES
    ('ana', 'weak', 'ls', 'allow'), ('ana', 'weak', 'rm', 'deny');
INSERT INTO custom_knowledge (user_name, topic, content) VALUES ('ana', 'wifi', 'ssid home');
INSERT INTO api_keys (id, name, key_value, fingerprint) VALUES (7, 'k', 'secret', 'sha256:ab');
INSERT INTO token_prediction_log (task_id, api_key_id, predicted_tokens, actual_tokens)
    VALUES ('t1', 7, 100, 130);
INSERT INTO agents (id, hostname, ip_address, capabilities)
    VALUES ('a1', 'desk', '10.0.0.5', '["gpu", "os:linux"]');
INSERT INTO home_network (host_name, ip_address, service) VALUES ('desk', '10.0.0.5', 'ssh');
INSERT INTO subtasks (parent_task_id, child_task_id, assigned_host, agent_mode) VALUES
    ('t1', 't2', 'a1', 'weak'), ('t1', 't3', NULL, 'superuser');
INSERT INTO task_queue (task_id) VALUES ('t2');
"""


def test_the_seed_migration_carries_existing_rows_over(empty_database_uri: str) -> None:
    """A database from an earlier `make demo` keeps its data under the seed's names."""

    async def scenario() -> dict[str, object]:
        conn = await asyncpg.connect(empty_database_uri)
        try:
            earlier = [m for m in load_migrations() if m.version < 5]
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            for migration in earlier:
                await conn.execute(migration.sql)
                await conn.execute(
                    INSERT_APPLIED, migration.version, migration.name, migration.checksum
                )
            await conn.execute(OLD_ROWS)
            applied = await migrate(conn)
            # 0005 and every later migration.
            assert [m.version for m in applied] == [m.version for m in load_migrations()[4:]]
            return {
                "profile": tuple(
                    await conn.fetchrow("SELECT username, preferred_format FROM user_profile")
                ),
                "approvals": [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT user_id, command, allow_by_default FROM permissions_profile"
                        " ORDER BY id"
                    )
                ],
                "knowledge": tuple(
                    await conn.fetchrow("SELECT label, value, visibility FROM custom_knowledge")
                ),
                "prediction": tuple(
                    await conn.fetchrow("SELECT api_key, delta FROM token_prediction_log")
                ),
                "agent": tuple(await conn.fetchrow("SELECT ip_address, capabilities FROM agents")),
                "host": await conn.fetchval("SELECT ip_address FROM home_network"),
                "subtasks": [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT status, assigned_host, agent_mode FROM subtasks ORDER BY id"
                    )
                ],
                "queue": tuple(await conn.fetchrow("SELECT target_host, payload FROM task_queue")),
                "rotating": await conn.fetchval("SELECT rotating FROM api_keys"),
            }
        finally:
            await conn.close()

    rows = asyncio.run(scenario())

    assert rows["profile"] == ("ana", "bullet points")
    assert rows["approvals"] == [("ana", "ls", True), ("ana", "rm", False)]
    assert rows["knowledge"] == ("wifi", "ssid home", "private")
    assert rows["prediction"] == ("sha256:ab", 30)
    assert rows["agent"] == ("10.0.0.5", ["gpu", "os:linux"])
    assert rows["host"] == "10.0.0.5"
    assert rows["subtasks"] == [("pending", "desk", None), ("pending", None, "agentic")]
    assert rows["queue"][0] == "desk"
    assert json.loads(rows["queue"][1]) == {"kind": "shell", "target_host": "desk"}
    assert rows["rotating"] is True
