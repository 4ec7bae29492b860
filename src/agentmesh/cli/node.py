"""`agentmesh node`: serve this host's AgentNode."""

from __future__ import annotations

from collections.abc import Mapping

import click
from pydantic import ValidationError

from agentmesh.cli.app import App, pass_app
from agentmesh.config import ConfigError, NodeSettings, Settings, describe_validation_error


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="address to serve on")
@click.option("--name", help="the node's name (default: the hostname)")
@click.option(
    "--capabilities", metavar="A,B,...", help="capabilities to advertise, comma-separated"
)
@click.option("--max-concurrency", type=int, metavar="N", help="tasks at once")
@click.option("--scheduler", metavar="HOST:PORT", help="register with this scheduler")
@click.option("--advertise", metavar="HOST:PORT", help="address the scheduler dials")
@pass_app
def node(app: App, /, **flags: str | int | None) -> int:
    """Serve this host's AgentNode."""
    from agentmesh.allocator import keep_large_buffers
    from agentmesh.collector import freeze_startup
    from agentmesh.node.service import run_node  # a slow import: not for --help

    keep_large_buffers()  # output streams in 1 MiB chunks: their buffers are reused
    freeze_startup()  # what the imports made lives as long as the process
    return app.run(
        lambda: run_node(app.settings(), node_settings(app.settings(), flags)), service=True
    )


def node_settings(settings: Settings, flags: Mapping[str, object]) -> NodeSettings:
    """The configured node settings with the command line's flags on top, validated."""
    overrides: dict[str, object] = {
        name: value
        for name in ("listen", "name", "max_concurrency", "scheduler", "advertise")
        if (value := flags.get(name)) is not None
    }
    capabilities = flags.get("capabilities")
    if isinstance(capabilities, str):
        overrides["capabilities"] = [c for c in capabilities.split(",") if c.strip()]
    try:
        return NodeSettings.model_validate({**settings.node.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source="command line")) from None
