"""`agentmesh demo`: the mesh at work on this machine, with nothing prepared."""

from __future__ import annotations

import argparse
from typing import Any

from agentmesh.cli.db import status_text
from agentmesh.config import Settings
from agentmesh.db.connect import connect, resolve_database
from agentmesh.db.migrate import migrate


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("demo", help="start the database, migrate, show the mesh")
    parser.set_defaults(run=run_demo)


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    target = await resolve_database(settings)
    conn = await connect(target.dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print(f"migrated: {len(applied)} migration(s) applied now")
    print(await status_text(settings))
    return 0
