"""`agentmesh node`: serve this host's AgentNode."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from agentmesh.config import ConfigError, NodeSettings, Settings, describe_validation_error
from agentmesh.node.service import run_node


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("node", help="serve this host's AgentNode")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on")
    parser.add_argument("--name", help="the node's name (default: the hostname)")
    parser.add_argument(
        "--capabilities", metavar="A,B,...", help="capabilities to advertise, comma-separated"
    )
    parser.add_argument("--max-concurrency", type=int, metavar="N", help="tasks at once")
    parser.add_argument("--scheduler", metavar="HOST:PORT", help="register with this scheduler")
    parser.add_argument("--advertise", metavar="HOST:PORT", help="address the scheduler dials")
    parser.set_defaults(run=run, service=True)


def node_settings(settings: Settings, args: argparse.Namespace) -> NodeSettings:
    """The configured node settings with the command line's flags on top, validated."""
    overrides: dict[str, object] = {
        name: value
        for name in ("listen", "name", "max_concurrency", "scheduler", "advertise")
        if (value := getattr(args, name, None)) is not None
    }
    if args.capabilities is not None:
        overrides["capabilities"] = [c for c in args.capabilities.split(",") if c.strip()]
    try:
        return NodeSettings.model_validate({**settings.node.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source="command line")) from None


async def run(settings: Settings, args: argparse.Namespace) -> int:
    return await run_node(settings, node_settings(settings, args))
