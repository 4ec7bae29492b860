"""`agentmesh nodes`: the nodes' credentials, issued, listed and revoked.

These commands work on the database directly, as `agentmesh db` does, not through the
scheduler: minting a credential needs access to the coordinator's database, so the user
credential (which anyone who submits tasks holds) cannot mint one. `enroll` prints the token
once, alone on stdout (`export AGENTMESH_NODE_TOKEN=$(agentmesh nodes enroll --name desk)`);
only its hash is stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from agentmesh import log_format
from agentmesh.access import credentials
from agentmesh.access.credentials import CredentialView
from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from agentmesh.config import Settings
from agentmesh.db.connect import Connection, connect
from agentmesh.db.setup import migrated_database
from agentmesh.errors import AgentmeshError, InvalidArgument

T = TypeVar("T")


@click.group()
def nodes() -> None:
    """Manage node credentials (ID: a credential's id or name).

    A node presents its credential as AGENTMESH_NODE_TOKEN; people use AGENTMESH_TOKEN.
    These commands use the database directly: run them where the scheduler's database is.
    """


@nodes.command()
@click.option("--name", help="what to call the node's credential (default: node-XXXXXX)")
@json_option
@pass_app
def enroll(app: App, name: str | None, as_json: bool) -> int:
    """Issue a node credential and print its token, once (only its hash is kept)."""

    async def command() -> int:
        chosen = name or f"node-{uuid.uuid4().hex[:6]}"
        view, token = await _on_database(
            app.settings(), lambda conn: credentials.enroll(conn, chosen)
        )
        log_format.redact(token)
        output = output_for(as_json)
        if output.json:
            output.data({**credential_json(view), "token": token})
            return EXIT_OK
        output.line(token)
        output.note(
            f"node credential {view.id} ({view.name}) issued; the token above is shown only"
            " now: give it to the node as AGENTMESH_NODE_TOKEN. Its first heartbeat binds the"
            " agent id it names."
        )
        return EXIT_OK

    return app.run(command)


@nodes.command(name="list")
@json_option
@pass_app
def list_nodes(app: App, as_json: bool) -> int:
    """List node credentials: the agent each speaks for, last use, revoked or not."""

    async def command() -> int:
        views = await _on_database(app.settings(), credentials.list_credentials)
        output = output_for(as_json)
        if output.json:
            output.data([credential_json(view) for view in views])
            return EXIT_OK
        rows = [
            [
                view.id,
                view.name,
                view.agent_id or "-",
                "revoked" if view.revoked_at else "live",
                _when(view.created_at),
                _when(view.last_used_at),
            ]
            for view in views
        ]
        output.table(["ID", "NAME", "AGENT", "STATE", "CREATED", "LAST USED"], rows)
        return EXIT_OK

    return app.run(command)


@nodes.command()
@click.argument("ref", metavar="ID")
@json_option
@pass_app
def revoke(app: App, ref: str, as_json: bool) -> int:
    """Revoke a node credential: its node can no longer heartbeat, lease keys or get tasks."""

    async def command() -> int:
        view = await _on_database(app.settings(), lambda conn: credentials.revoke(conn, ref))
        output = output_for(as_json)
        if output.json:
            output.data(credential_json(view))
        else:
            agent = f", which spoke for {view.agent_id}" if view.agent_id else ""
            output.note(f"revoked node credential {view.id} ({view.name}{agent})")
        return EXIT_OK

    return app.run(command)


def credential_json(view: CredentialView) -> dict[str, Any]:
    """`nodes` --json: id, name, agent_id, state (live, revoked), created_at, last_used_at,
    revoked_at (ISO 8601 or null)."""
    return {
        "id": view.id,
        "name": view.name,
        "agent_id": view.agent_id,
        "state": "revoked" if view.revoked_at else "live",
        "created_at": _iso(view.created_at),
        "last_used_at": _iso(view.last_used_at),
        "revoked_at": _iso(view.revoked_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


async def _on_database(settings: Settings, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `work` on the migrated database; its domain errors become one-line CliErrors."""
    target, _ = await migrated_database(settings)
    conn = await connect(target.dsn)
    try:
        return await work(conn)
    except AgentmeshError as error:
        code = EXIT_USAGE if isinstance(error, InvalidArgument) else EXIT_ERROR
        raise CliError(str(error), code) from None
    finally:
        await conn.close()
