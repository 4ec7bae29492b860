"""PostgreSQL servers and per-test databases for the test suite."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections import defaultdict
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
    _shapes[name] = asyncio.run(_shape(server.uri(template)))
    return server


# A test's database, once the test is over, is emptied and given to the next test instead of
# a new copy of the template: CREATE DATABASE takes about 0.2 s, emptying about 20 ms. Only
# one whose schema is still the template's is kept (_shape); any other is dropped.
_recycled: dict[str, list[str]] = defaultdict(list)
_shapes: dict[str, str] = {}

# The catalogues a test could change the schema through. A schema change inserts or updates
# their rows, and every new row version carries a transaction id above all earlier ones; a
# drop leaves fewer rows. So each catalogue's row count and highest `xmin`, with the
# migrations recorded, change with any change to the schema, and cost one scan each (about
# 2 ms, against 10 for a digest of every definition). A table made and dropped again within
# the test, or a temporary one, leaves them as they were, as it leaves the schema. A false
# alarm only costs a database: one that differs is dropped, not emptied.
_CATALOGUES = (
    "pg_class", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index", "pg_trigger",
    "pg_proc", "pg_type", "pg_extension", "pg_rewrite", "pg_description", "pg_enum",
    "pg_sequence", "pg_policy", "pg_event_trigger",
)  # fmt: skip
SHAPE = "SELECT concat_ws(',', {}, (SELECT count(*) FROM schema_migrations))".format(
    ", ".join(
        [
            *(
                f"(SELECT count(*) || '/' || coalesce(max(xmin::text::bigint), 0) FROM {name})"
                for name in _CATALOGUES
            ),
            # a session's temporary schemas stay once made, and change nothing the tests see
            "(SELECT count(*) || '/' || coalesce(max(xmin::text::bigint), 0) FROM pg_namespace"
            r" WHERE nspname NOT LIKE 'pg\_%temp\_%')",
        ]
    )
)
# Every table empty but the migrations' record, every sequence back at its start. DELETE,
# not TRUNCATE (which makes new files for every table and index, about 0.4 s): a test leaves
# few rows. Foreign keys are not checked meanwhile (the replica role), nor the commit waited
# on: the next test's first read comes after it anyway.
EMPTY = """
SET session_replication_role = replica;
SET synchronous_commit = off;
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT tablename FROM pg_tables
                WHERE schemaname = 'public' AND tablename <> 'schema_migrations' LOOP
        EXECUTE format('DELETE FROM %I', name);
    END LOOP;
    PERFORM setval(s.seqrelid, s.seqstart, false) FROM pg_sequence s;
END $$;
"""


async def _shape(uri: str) -> str:
    conn = await asyncpg.connect(uri, timeout=10)
    try:
        return str(await conn.fetchval(SHAPE))
    finally:
        await conn.close()


async def _empty(server: Server, database: str) -> bool:
    """Empty a test's database for the next; False if its schema is not the template's."""
    conn = await asyncpg.connect(server.uri(database), timeout=10)
    try:
        await conn.execute(  # whatever the test left connected
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        if await conn.fetchval(SHAPE) != _shapes[server.name]:
            return False
        await conn.execute(EMPTY)
    finally:
        await conn.close()
    return True


def _give_back(server: Server, database: str) -> None:
    try:
        kept = asyncio.run(_empty(server, database))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        kept = False
    if kept:
        _recycled[server.name].append(database)
    else:
        _drop(server, database)


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


def _drop_all(server: Server) -> None:
    for database in [*_recycled.pop(server.name, ()), server.template]:
        _drop(server, database)


@pytest.fixture(scope="session")
def embedded_server(embedded_data_dir: Path) -> Iterator[Server]:
    server = _prepare("embedded", embedded.start(embedded_data_dir))
    yield server
    _drop_all(server)


@pytest.fixture(scope="session")
def system_server() -> Iterator[Server]:
    if not _system_server_answers():
        pytest.skip("no PostgreSQL answers at 127.0.0.1:5432")
    server = _prepare("system", SYSTEM_SERVER_URI)
    yield server
    _drop_all(server)


def _servers() -> list[str]:
    """The servers the database tests run on: both unless AGENTMESH_TEST_SERVERS names one
    (`make unit` runs on the embedded one alone; `make test` on both)."""
    names = os.environ.get("AGENTMESH_TEST_SERVERS", "embedded,system").split(",")
    unknown = set(names) - {"embedded", "system"}
    if unknown:
        raise pytest.UsageError(
            f"AGENTMESH_TEST_SERVERS: unknown server {sorted(unknown)[0]!r}:"
            " expected embedded, system or both, comma-separated"
        )
    return names


@pytest.fixture(params=_servers(), scope="session")
def pg_server(request: pytest.FixtureRequest) -> Server:
    """Each PostgreSQL server in turn."""
    server: Server = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
def database_uri(pg_server: Server) -> Iterator[str]:
    """A migrated database of its own for this test, with nothing in it: an earlier test's,
    emptied, or a new copy of the template."""
    recycled = _recycled[pg_server.name]
    if recycled:
        name = recycled.pop()
    else:
        name = f"agentmesh_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(
            _execute(
                pg_server.admin_uri,
                f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(pg_server.template)}",
            )
        )
    yield pg_server.uri(name)
    _give_back(pg_server, name)


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
