"""Getting the configured database ready: find (or start) it, then migrate it."""

from __future__ import annotations

from agentmesh.config import Settings
from agentmesh.db.connect import DatabaseTarget, connect, resolve_database
from agentmesh.db.migrate import Migration, migrate


async def migrated_database(settings: Settings) -> tuple[DatabaseTarget, tuple[Migration, ...]]:
    """The configured (or embedded) database, fully migrated; and the migrations applied now."""
    target = await resolve_database(settings)
    conn = await connect(target.dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    return target, applied
