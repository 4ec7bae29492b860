"""The `agentmesh` command line."""

from __future__ import annotations

import os

# gRPC's C core reads these when it loads: keep its fork notices off the user's terminal.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

from agentmesh import __version__, log_format
from agentmesh.cli import db as db_commands
from agentmesh.cli import demo as demo_command
from agentmesh.cli import node as node_command
from agentmesh.cli import scheduler as scheduler_command
from agentmesh.config import ConfigError, Settings, load_settings
from agentmesh.db.connect import DatabaseUnavailable
from agentmesh.db.migrate import MigrationError

EXIT_USAGE = 2
EXIT_FAILURE = 1

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentmesh",
        description="Run Gemini CLI agents across your machines, coordinated through PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"agentmesh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db_commands.add_parser(commands)
    scheduler_command.add_parser(commands)
    node_command.add_parser(commands)
    demo_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Services log what they do; one-shot commands only what went wrong.
    quiet = logging.INFO if getattr(args, "service", False) else logging.WARNING
    log_format.install(logging.DEBUG if args.verbose else quiet)
    logging.getLogger("pgserver").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    command: Command = args.run
    try:
        settings = load_settings()
        log_format.redact(*_secrets(settings))
        return asyncio.run(command(settings, args))
    except ConfigError as exc:
        print(f"agentmesh: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DatabaseUnavailable, MigrationError) as exc:
        print(f"agentmesh: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _secrets(settings: Settings) -> list[str | None]:
    """What this process must never log: the token and the database's credentials."""
    env = settings.env
    url = env.DATABASE_URL.get_secret_value() if env.DATABASE_URL is not None else None
    password = None
    if url:
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
    return [settings.token, env.POSTGRES_PASSWORD.get_secret_value(), url, password]


if __name__ == "__main__":
    sys.exit(main())
