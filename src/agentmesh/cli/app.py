"""What every command shares: the global options, the settings, and one way to run a command
that turns every error into one line on stderr and an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import grpc

from agentmesh import log_format
from agentmesh.cli.client import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    describe_rpc_error,
    scheduler_address,
)
from agentmesh.cli.output import Output
from agentmesh.config import ConfigError, Settings, load_settings
from agentmesh.db.connect import DatabaseUnavailable
from agentmesh.db.migrate import MigrationError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """The global options of one `agentmesh` invocation."""

    verbose: bool = False
    debug: bool = False
    scheduler: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def scheduler_address(self) -> str:
        return scheduler_address(self.settings(), self.scheduler)

    def run(
        self,
        command: Callable[[], Coroutine[Any, Any, int]],
        *,
        service: bool = False,
        on_interrupt: Callable[[], str | None] | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> int:
        """Run an async command; every error ends as one line on stderr and an exit code.

        `on_interrupt` says what to tell the user on Ctrl-C (e.g. the task goes on);
        `loop_factory` makes the event loop (the standard one by default)."""
        # Services log what they do; one-shot commands only what went wrong.
        quiet = logging.INFO if service else logging.WARNING
        log_format.install(logging.DEBUG if self.verbose else quiet)
        logging.getLogger("pgserver").setLevel(logging.DEBUG if self.verbose else logging.WARNING)
        try:
            log_format.redact(*_secrets(self.settings()))
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return runner.run(command())
        except ConfigError as exc:
            return self._fail(f"configuration error: {exc}", EXIT_USAGE)
        except (DatabaseUnavailable, MigrationError) as exc:
            return self._fail(str(exc), EXIT_ERROR)
        except CliError as exc:
            return self._fail(" ".join(str(exc).split()), exc.exit_code)
        except grpc.aio.AioRpcError as exc:  # a call outside scheduler_stub (a node's, say)
            error = describe_rpc_error(exc, self.scheduler or "", token_set=True)
            return self._fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            hint = on_interrupt() if on_interrupt is not None else None
            if hint:
                print(f"agentmesh: {hint}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            if self.debug:
                raise
            return self._fail(
                f"unexpected error: {exc.__class__.__name__}: {exc} (--debug shows where)",
                EXIT_ERROR,
            )

    def _fail(self, message: str, code: int) -> int:
        if self.debug:
            traceback.print_exc()
        print(f"agentmesh: {message}", file=sys.stderr)
        return code


def _secrets(settings: Settings) -> list[str | None]:
    """What this process must never log: the token and the database's credentials."""
    env = settings.env
    url = env.DATABASE_URL.get_secret_value() if env.DATABASE_URL is not None else None
    password = None
    if url:
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
    return [
        settings.token,
        settings.node_token,
        env.POSTGRES_PASSWORD.get_secret_value(),
        url,
        password,
    ]


pass_app = click.make_pass_decorator(App, ensure=True)


def json_option(function: F) -> F:
    """`--json`: print the data as JSON (documented fields) instead of text."""
    return click.option(
        "--json", "as_json", is_flag=True, help="print JSON (see the README for the fields)"
    )(function)


def output_for(as_json: bool) -> Output:
    return Output(json=as_json)
