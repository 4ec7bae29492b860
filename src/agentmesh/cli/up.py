"""`agentmesh up`: the mesh's centre on this machine, in the foreground until Ctrl-C.

The database (the embedded PostgreSQL unless a server is configured), a scheduler and a node
for this host, with a live status line: agents online, tasks running. Ctrl-C (or SIGTERM)
drains the node, stops the scheduler, and stops the embedded PostgreSQL if `up` started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import click
from rich.live import Live
from rich.text import Text

from agentmesh.access.credentials import enroll_local_node
from agentmesh.cli.app import App, pass_app
from agentmesh.cli.node import node_settings
from agentmesh.cli.output import Output
from agentmesh.cli.scheduler import scheduler_listen
from agentmesh.config import Settings
from agentmesh.db import embedded
from agentmesh.db.connect import data_dir
from agentmesh.db.setup import migrated_database

if TYPE_CHECKING:  # imported where used: the services load slowly, --help must not
    from agentmesh.scheduler.service import Scheduler

STATUS_SECONDS = 1.0
REGISTER_TIMEOUT_SECONDS = 30.0


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="the scheduler's address (scheduler.listen)")
@click.option("--node-listen", metavar="HOST:PORT", help="this host's node (node.listen)")
@click.option("--name", help="the node's name (default: the hostname)")
@click.option("--capabilities", metavar="A,B,...", help="the node's capabilities, comma-separated")
@click.option("--max-concurrency", type=int, metavar="N", help="the node's tasks at once")
@pass_app
def up(
    app: App,
    listen: str | None,
    node_listen: str | None,
    name: str | None,
    capabilities: str | None,
    max_concurrency: int | None,
) -> int:
    """Run the database, a scheduler and a node for this host until Ctrl-C."""
    flags = {
        "listen": node_listen,
        "name": name,
        "capabilities": capabilities,
        "max_concurrency": max_concurrency,
    }
    return app.run(lambda: run_up(app.settings(), listen, flags), service=True)


async def run_up(settings: Settings, listen: str | None, flags: Mapping[str, object]) -> int:
    from agentmesh.node.service import AgentNode
    from agentmesh.scheduler.service import Scheduler

    address = scheduler_listen(settings, listen)
    started_database = settings.uses_embedded_database and not embedded.is_running(
        data_dir(settings)
    )
    output = Output()
    try:
        async with contextlib.AsyncExitStack() as stack:
            await migrated_database(settings)
            scheduler = await Scheduler.start(settings, address)
            stack.push_async_callback(scheduler.stop)
            options = node_settings(settings, {**flags, "scheduler": scheduler.address})
            # With a token, the node gets a credential of its own, as every node does.
            node_name = options.name or socket.gethostname()
            node_env = await enroll_local_node(scheduler.pool, settings, node_name)
            # The scheduler loads GEMINI_API_KEY_FILE: its keys are the pool's, not the node's.
            node = await AgentNode.start(node_env, options, hold_keys=False)
            stack.push_async_callback(node.shutdown, options.shutdown_grace_seconds)
            assert node.registration is not None  # started with a scheduler
            await asyncio.wait_for(node.registration.registered.wait(), REGISTER_TIMEOUT_SECONDS)
            card = node.card()
            output.line(
                f"agentmesh up: scheduler {scheduler.owner} on {scheduler.address};"
                f" node {card.name} ({card.agent_id}) on {node.address}; Ctrl-C stops"
            )
            await _until_signal(scheduler, output)
            output.note("stopping: draining the node, then the scheduler")
    finally:
        if started_database:
            embedded.stop(data_dir(settings))
    return 0


async def _status_line(scheduler: Scheduler) -> str:
    agents = await scheduler.registry.list_agents(include_offline=False)
    running = sum((await scheduler.store.running_per_agent()).values())
    online = sum(1 for agent in agents if agent.status == "online")
    return (
        f"{online} agent{'s' * (online != 1)} online · {running} task{'s' * (running != 1)} running"
    )


async def _until_signal(scheduler: Scheduler, output: Output) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    live = Live(console=output.err, transient=True) if output.err_is_terminal else None
    shown = ""
    with live if live is not None else contextlib.nullcontext():
        while not stop.is_set():
            line = await _status_line(scheduler)
            if live is not None:
                live.update(Text(f"● {line}", style="green"))
            elif line != shown:
                output.note(line)
            shown = line
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_SECONDS)
