"""Plain SQL migrations from `schema/`, applied in order, each once, under an advisory lock.

Files are named `NNNN_description.sql`. Each is applied in its own transaction and recorded
in `schema_migrations` with a checksum; a recorded migration whose file changed afterwards
is an error, not something to silently re-run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

# Any constant works, as long as every agentmesh process uses the same one.
MIGRATION_LOCK_ID = 0x61676D_6D6967  # "agm" "mig"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = (
    "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
)
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
SELECT_TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"
SELECT_VECTOR_TYPE = """
SELECT format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass('vector_knowledge') AND a.attname = 'embedding'
"""


class MigrationError(Exception):
    """The schema in the database does not match the migrations shipped with agentmesh."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: str


@dataclass(frozen=True)
class SchemaStatus:
    server_version: str
    applied: tuple[AppliedMigration, ...]
    pending: tuple[Migration, ...]
    vector_mode: str  # "pgvector", "real[] fallback" or "absent" (not migrated yet)


def load_migrations() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files("agentmesh.schema").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return tuple(found)


async def migrate(conn: asyncpg.Connection) -> tuple[Migration, ...]:
    """Apply every pending migration; return those applied now. Safe to run concurrently."""
    migrations = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        applied = {row["version"]: row for row in await conn.fetch(SELECT_APPLIED)}
        _check_checksums(migrations, applied)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                try:
                    await conn.execute(migration.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql failed: {exc}"
                    ) from exc
                await conn.execute(
                    INSERT_APPLIED, migration.version, migration.name, migration.checksum
                )
            done.append(migration)
        return tuple(done)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


def _check_checksums(migrations: tuple[Migration, ...], applied: dict[int, asyncpg.Record]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row['name']} which this version"
                " of agentmesh does not know: is an older agentmesh running against a newer"
                " database?"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {version:04d}_{migration.name}.sql changed after it was applied"
            )


async def schema_status(conn: asyncpg.Connection) -> SchemaStatus:
    server_version = await conn.fetchval("SHOW server_version")
    migrations = load_migrations()
    rows = []
    if await conn.fetchval(SELECT_TABLE_EXISTS):
        rows = await conn.fetch(SELECT_APPLIED)
    applied = tuple(
        AppliedMigration(row["version"], row["name"], row["applied_at"].isoformat()) for row in rows
    )
    done = {m.version for m in applied}
    pending = tuple(m for m in migrations if m.version not in done)
    column_type = await conn.fetchval(SELECT_VECTOR_TYPE)
    if column_type is None:
        vector_mode = "absent"
    elif column_type.startswith("vector"):
        vector_mode = "pgvector"
    else:
        vector_mode = "real[] fallback"
    return SchemaStatus(str(server_version), applied, pending, vector_mode)
