"""`agentmesh db ...`: migrate, inspect and locate the database."""

from __future__ import annotations

from typing import Any

import click

from agentmesh.cli.app import App, json_option, pass_app
from agentmesh.cli.client import EXIT_USAGE, CliError
from agentmesh.cli.output import Output
from agentmesh.config import Settings
from agentmesh.db import embedded
from agentmesh.db.connect import connect, data_dir, resolve_database
from agentmesh.db.migrate import schema_status
from agentmesh.db.setup import migrated_database
from agentmesh.durations import parse_duration
from agentmesh.scheduler import retention


@click.group()
def db() -> None:
    """The database: migrate, status, url, prune, stop."""


@db.command()
@pass_app
def migrate(app: App) -> int:
    """Apply pending migrations."""
    return app.run(lambda: run_migrate(app.settings()))


@db.command()
@json_option
@pass_app
def status(app: App, as_json: bool) -> int:
    """Server version, migrations, vector mode."""
    return app.run(lambda: run_status(app.settings(), as_json=as_json))


@db.command()
@json_option
@pass_app
def url(app: App, as_json: bool) -> int:
    """Print the database URL (password hidden)."""
    return app.run(lambda: run_url(app.settings(), as_json=as_json))


@db.command()
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="delete task trees that ended more than this long ago: 12h, 30d, 2w",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=retention.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="trees per batch (each batch is one transaction)",
)
@click.option("--dry-run", is_flag=True, help="count what would be deleted; delete nothing")
@json_option
@pass_app
def prune(app: App, older_than: str, batch_size: int, dry_run: bool, as_json: bool) -> int:
    """Delete ended task trees older than DURATION, with their events (never a live tree)."""
    return app.run(
        lambda: run_prune(
            app.settings(), older_than, batch_size=batch_size, dry_run=dry_run, as_json=as_json
        )
    )


@db.command()
@pass_app
def stop(app: App) -> int:
    """Stop the embedded PostgreSQL."""
    return app.run(lambda: run_stop(app.settings()))


async def run_migrate(settings: Settings) -> int:
    _, applied = await migrated_database(settings)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


async def run_status(settings: Settings, *, as_json: bool = False) -> int:
    if as_json:
        Output(json=True).data(await status_document(settings))
    else:
        print(await status_text(settings))
    return 0


async def status_document(settings: Settings) -> dict[str, Any]:
    """`db status --json`: `database` (the URL, password hidden), `embedded`, `data_dir`
    (or null), `server_version`, `vector_mode` and `migrations` (`applied`: version, name,
    applied_at; `pending`: version, name)."""
    target = await resolve_database(settings)
    conn = await connect(target.dsn)
    try:
        status = await schema_status(conn)
    finally:
        await conn.close()
    return {
        "database": target.display,
        "embedded": target.embedded,
        "data_dir": str(data_dir(settings)) if target.embedded else None,
        "server_version": status.server_version,
        "vector_mode": status.vector_mode,
        "migrations": {
            "applied": [
                {"version": m.version, "name": m.name, "applied_at": m.applied_at}
                for m in status.applied
            ],
            "pending": [{"version": m.version, "name": m.name} for m in status.pending],
        },
    }


# What each vector mode means for knowledge search (`agentmesh knowledge search`).
VECTOR_MODES = {
    "pgvector": " (knowledge search: nearest rows through the HNSW index)",
    "real[] fallback": (
        " (no pgvector: knowledge search compares every row's embedding, exact and slower)"
    ),
}


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
        f"vector mode: {status.vector_mode}{VECTOR_MODES.get(status.vector_mode, '')}",
        f"migrations:  {len(status.applied)} applied, {len(status.pending)} pending",
    ]
    lines += [f"  [x] {m.version:04d}_{m.name}  ({m.applied_at})" for m in status.applied]
    lines += [f"  [ ] {m.version:04d}_{m.name}" for m in status.pending]
    return "\n".join(lines)


async def run_url(settings: Settings, *, as_json: bool = False) -> int:
    target = await resolve_database(settings)
    if as_json:  # `url` (password hidden) and `embedded`
        Output(json=True).data({"url": target.display, "embedded": target.embedded})
    else:
        print(target.display)
    return 0


async def run_prune(
    settings: Settings, older_than: str, *, batch_size: int, dry_run: bool, as_json: bool
) -> int:
    """`db prune --json`: `dry_run`, `cutoff` (ISO 8601, UTC), `trees`, `tasks` and `events`
    removed (or that would be), and `batches` (each one transaction)."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise CliError(f"--older-than {exc}", EXIT_USAGE) from None
    target = await resolve_database(settings)
    conn = await connect(target.dsn)
    try:
        if (await schema_status(conn)).pending:
            raise CliError("the database has pending migrations: run `agentmesh db migrate`")
        cutoff = await retention.cutoff_before(conn, age)
        report = await retention.prune(conn, cutoff, batch_size=batch_size, dry_run=dry_run)
    finally:
        await conn.close()
    if as_json:
        Output(json=True).data(
            {
                "dry_run": report.dry_run,
                "cutoff": report.cutoff.isoformat(),
                "trees": report.trees,
                "tasks": report.tasks,
                "events": report.events,
                "batches": report.batches,
            }
        )
        return 0
    what = f"{report.trees} task trees ({report.tasks} tasks, {report.events} events)"
    when = f"that ended before {report.cutoff:%Y-%m-%d %H:%M:%S} UTC"
    if report.dry_run:
        print(f"would remove {what} {when}; nothing was deleted (--dry-run)")
    else:
        print(f"removed {what} {when}, in {report.batches} batches")
    return 0


async def run_stop(settings: Settings) -> int:
    if not settings.uses_embedded_database:
        print("the database is an external server; nothing to stop")
        return 0
    stopped = embedded.stop(data_dir(settings))
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0
