"""`agentmesh agents`: the nodes the scheduler knows (`agentmesh network`: the hosts)."""

from __future__ import annotations

import click
from rich.text import Text

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, scheduler_stub
from agentmesh.cli.output import Cell
from agentmesh.cli.views import agent_json, ago
from agentmesh.v1 import scheduler_pb2

STATUS_STYLES = {"online": "green", "draining": "yellow", "offline": "dim"}


@click.command()
@click.option("--all", "include_offline", is_flag=True, help="also agents that went offline")
@json_option
@pass_app
def agents(app: App, include_offline: bool, as_json: bool) -> int:
    """List the agents (nodes): host, status, capabilities, highest mode, load, last seen."""

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListAgents(
                scheduler_pb2.ListAgentsRequest(include_offline=include_offline),
                timeout=CALL_TIMEOUT,
            )
        if output.json:
            output.data([agent_json(agent) for agent in reply.agents])
            return EXIT_OK
        rows: list[list[Cell]] = []
        for agent in reply.agents:
            card = agent.card
            # Configured capabilities; the detected ones (os:linux, tool:git, ...) with --json.
            configured = [c for c in card.capabilities if ":" not in c]
            rows.append(
                [
                    card.name,
                    card.hostname,
                    Text(agent.status, style=STATUS_STYLES.get(agent.status, "")),
                    card.endpoint,
                    ",".join(card.executors),
                    ",".join(configured) or "-",
                    card.max_permission_mode or "weak",
                    # "bubblewrap", "none" or "unavailable"; the details with --json.
                    card.sandbox.split(" ", 1)[0] or "-",
                    f"{card.running_tasks}/{card.max_concurrency}",
                    ago(agent.last_heartbeat, agent.HasField("last_heartbeat")),
                ]
            )
        output.table(
            [
                "NAME",
                "HOST",
                "STATUS",
                "ADDRESS",
                "EXECUTORS",
                "CAPABILITIES",
                "MAX MODE",
                "SANDBOX",
                "LOAD",
                "SEEN",
            ],
            rows,
        )
        return EXIT_OK

    return app.run(command)
