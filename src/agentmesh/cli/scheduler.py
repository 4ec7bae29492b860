"""`agentmesh scheduler`: serve the mesh's scheduler."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from agentmesh.config import ConfigError, SchedulerSettings, Settings, describe_validation_error
from agentmesh.scheduler.service import run_scheduler


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("scheduler", help="serve the scheduler")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on")
    parser.set_defaults(run=run, service=True)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    listen = settings.scheduler.listen
    if args.listen is not None:
        try:
            listen = SchedulerSettings.model_validate({"listen": args.listen}).listen
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, source="command line")) from None
    return await run_scheduler(settings, listen)
