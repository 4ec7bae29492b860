"""`agentmesh db ...`: migrate, inspect and locate the database."""

from __future__ import annotations

import argparse
from typing import Any

from agentmesh.config import Settings
from agentmesh.db import embedded
from agentmesh.db.connect import connect, data_dir, resolve_database
from agentmesh.db.migrate import schema_status
from agentmesh.db.setup import migrated_database


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("db", help="the database: migrate, status, url, stop")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    actions.add_parser("migrate", help="apply pending migrations").set_defaults(run=run_migrate)
    actions.add_parser("status", help="server version, migrations, vector mode").set_defaults(
        run=run_status
    )
    actions.add_parser("url", help="print the database URL (password hidden)").set_defaults(
        run=run_url
    )
    actions.add_parser("stop", help="stop the embedded PostgreSQL").set_defaults(run=run_stop)


async def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _, applied = await migrated_database(settings)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


async def run_status(settings: Settings, args: argparse.Namespace) -> int:
    print(await status_text(settings))
    return 0


async def status_text(settings: Settings) -> str:
    target = await resolve_database(settings)
    conn = await connect(target.dsn)
    try:
        status = await schema_status(conn)
    finally:
        await conn.close()
    where = f"embedded ({data_dir(settings)})" if target.embedded else "external server"
    lines = [
        f"database:    {target.display}",
        f"server:      PostgreSQL {status.server_version}, {where}",
        f"vector mode: {status.vector_mode}",
        f"migrations:  {len(status.applied)} applied, {len(status.pending)} pending",
    ]
    lines += [f"  [x] {m.version:04d}_{m.name}  ({m.applied_at})" for m in status.applied]
    lines += [f"  [ ] {m.version:04d}_{m.name}" for m in status.pending]
    return "\n".join(lines)


async def run_url(settings: Settings, args: argparse.Namespace) -> int:
    target = await resolve_database(settings)
    print(target.display)
    return 0


async def run_stop(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.uses_embedded_database:
        print("the database is an external server; nothing to stop")
        return 0
    stopped = embedded.stop(data_dir(settings))
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0
