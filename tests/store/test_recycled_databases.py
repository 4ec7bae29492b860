"""A test's database goes to the next test only as the template left it: empty, same schema."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from agentmesh.db.connect import quote_ident
from tests.support.databases import Server, _execute, _give_back, _recycled


async def _query(uri: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(uri, timeout=10)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture
def copy(pg_server: Server) -> str:
    """A new copy of the template, outside the fixtures' own bookkeeping."""
    name = f"agentmesh_r_{uuid.uuid4().hex[:12]}"
    asyncio.run(
        _execute(
            pg_server.admin_uri,
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(pg_server.template)}",
        )
    )
    return name


def _exists(server: Server, name: str) -> bool:
    rows = asyncio.run(
        _query(server.admin_uri, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
    )
    return bool(rows)


def test_rows_are_deleted_sequences_restart_and_the_database_is_kept(
    pg_server: Server, copy: str
) -> None:
    uri = pg_server.uri(copy)
    asyncio.run(
        _execute(
            uri,
            "INSERT INTO agents (id, hostname) VALUES ('a', 'h')",
            "INSERT INTO tasks (id, kind, spec, root_id) VALUES ('t-1', 'shell', '{}', 't-1')",
            "INSERT INTO task_queue (task_id) VALUES ('t-1')",
            "CREATE TEMPORARY TABLE scratch (x int)",  # a session's own: gone with it
        )
    )
    _give_back(pg_server, copy)

    assert _recycled[pg_server.name][-1] == copy
    _recycled[pg_server.name].remove(copy)
    try:
        for table in ("agents", "tasks", "task_queue"):
            assert asyncio.run(_query(uri, f"SELECT * FROM {table}")) == []
        assert asyncio.run(_query(uri, "SELECT count(*) FROM schema_migrations"))[0][0] > 0
        asyncio.run(
            _execute(
                uri,
                "INSERT INTO tasks (id, kind, spec, root_id) VALUES ('t-2', 'shell', '{}', 't-2')",
            )
        )
        rows = asyncio.run(
            _query(uri, "INSERT INTO task_queue (task_id) VALUES ('t-2') RETURNING id")
        )
        assert rows[0]["id"] == 1
    finally:
        asyncio.run(_execute(pg_server.admin_uri, f"DROP DATABASE {copy} WITH (FORCE)"))


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE tasks ADD COLUMN extra int",
        "ALTER TABLE tasks DROP COLUMN kind",
        "ALTER TABLE tasks ALTER COLUMN state SET DEFAULT 'working'",
        "CREATE INDEX extra_idx ON tasks (kind)",
        "DROP TABLE task_queue",
        "CREATE TABLE extra (x int)",
        "CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "COMMENT ON TABLE tasks IS 'changed'",
        "DELETE FROM schema_migrations"
        " WHERE version = (SELECT max(version) FROM schema_migrations)",
    ],
)
def test_a_database_whose_schema_a_test_changed_is_dropped(
    pg_server: Server, copy: str, change: str
) -> None:
    asyncio.run(_execute(pg_server.uri(copy), change))
    _give_back(pg_server, copy)
    assert copy not in _recycled[pg_server.name]
    assert not _exists(pg_server, copy)
