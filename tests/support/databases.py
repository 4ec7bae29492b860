"""PostgreSQL servers and per-test databases for the test suite."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from agentmesh.db import embedded
from agentmesh.db.connect import quote_ident
from agentmesh.db.migrate import migrate

SYSTEM_SERVER_URI = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Server:
    """A running PostgreSQL server the tests may create databases on."""

    name: str  # "embedded" or "system"
    admin_uri: str  # a database to connect to for CREATE/DROP DATABASE
    template: str  # a migrated database to copy

    def uri(self, database: str) -> str:
        return embedded.uri_for(self.admin_uri, database)

    @property
    def has_pgvector(self) -> bool:
        return self.name == "embedded"


async def _execute(uri: str, *statements: str) -> None:
    conn = await asyncpg.connect(uri, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(uri: str) -> None:
    conn = await asyncpg.connect(uri, timeout=10)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def _system_server_answers() -> bool:
    async def probe() -> bool:
        try:
            await _execute(SYSTEM_SERVER_URI, "SELECT 1")
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        return True

    return asyncio.run(probe())


def _prepare(name: str, admin_uri: str) -> Server:
    template = f"agentmesh_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_execute(admin_uri, f"CREATE DATABASE {quote_ident(template)}"))
    server = Server(name=name, admin_uri=admin_uri, template=template)
    asyncio.run(_migrate(server.uri(template)))
    return server


def _drop(server: Server, database: str) -> None:
    asyncio.run(
        _execute(server.admin_uri, f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
    )


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data directory of the session's embedded PostgreSQL (started on first use)."""
    data_dir = tmp_path_factory.mktemp("embedded-pg")
    yield data_dir
    embedded.stop(data_dir)


@pytest.fixture(scope="session")
def embedded_server(embedded_data_dir: Path) -> Iterator[Server]:
    server = _prepare("embedded", embedded.start(embedded_data_dir))
    yield server
    _drop(server, server.template)


@pytest.fixture(scope="session")
def system_server() -> Iterator[Server]:
    if not _system_server_answers():
        pytest.skip("no PostgreSQL answers at 127.0.0.1:5432")
    server = _prepare("system", SYSTEM_SERVER_URI)
    yield server
    _drop(server, server.template)


@pytest.fixture(params=["embedded", "system"], scope="session")
def pg_server(request: pytest.FixtureRequest) -> Server:
    """Each PostgreSQL server in turn."""
    server: Server = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
def database_uri(pg_server: Server) -> Iterator[str]:
    """A fresh, migrated database of its own for this test."""
    name = f"agentmesh_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(
        _execute(
            pg_server.admin_uri,
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(pg_server.template)}",
        )
    )
    yield pg_server.uri(name)
    _drop(pg_server, name)


@pytest.fixture
def empty_database_uri(pg_server: Server) -> Iterator[str]:
    """A fresh database with nothing in it."""
    name = f"agentmesh_e_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(pg_server.admin_uri, f"CREATE DATABASE {quote_ident(name)}"))
    yield pg_server.uri(name)
    _drop(pg_server, name)


def _pg_dump() -> Path | None:
    """pgserver's pg_dump (16: it dumps the embedded server and older ones), else the PATH's."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        bundled = Path(POSTGRES_BIN_PATH) / "pg_dump"
        if bundled.exists():
            return bundled
    found = shutil.which("pg_dump")
    return Path(found) if found else None


async def database_text(uri: str) -> str:
    """Everything a database holds, as text: a full `pg_dump`, or, without one, every row of
    every table of every schema as PostgreSQL writes it."""
    pg_dump = _pg_dump()
    if pg_dump is not None:
        process = await asyncio.create_subprocess_exec(
            str(pg_dump),
            "--no-owner",
            "--dbname",
            uri,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode(errors="replace")
        return out.decode(errors="replace")
    conn = await asyncpg.connect(uri, timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        lines = []
        for table in tables:
            name = f"{quote_ident(table['table_schema'])}.{quote_ident(table['table_name'])}"
            lines += [row[0] for row in await conn.fetch(f"SELECT t::text FROM {name} t")]
    finally:
        await conn.close()
    return "\n".join(lines)
