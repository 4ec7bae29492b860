"""The `agentmesh` command line.

Built on click rather than argparse: click gives every group and command its `--help`,
shell completion for bash, zsh and fish out of the box (`agentmesh completion SHELL`),
typed options and choices that check themselves, and composable command families (one
module per family under `agentmesh.cli`). typer would add type-hint magic on top of click
and pull in its own rich tracebacks, which this CLI must not show without `--debug`.

Every error is one line on stderr, `agentmesh: ...`, and a non-zero exit (see
`agentmesh.cli.client` for the codes); `--debug` adds the traceback.
"""

from __future__ import annotations

import os

# gRPC's C core reads these when it loads: keep its fork notices off the user's terminal.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import sys
from collections.abc import Sequence

import click
from click.shell_completion import get_completion_class

from agentmesh import __version__
from agentmesh.cli import listing, mesh, tasks, tokens
from agentmesh.cli.app import App
from agentmesh.cli.approvals import approvals, approve, deny
from agentmesh.cli.client import EXIT_INTERRUPTED, EXIT_USAGE, CliError
from agentmesh.cli.db import db
from agentmesh.cli.demo import demo
from agentmesh.cli.keys import keys
from agentmesh.cli.knowledge import knowledge
from agentmesh.cli.network import network
from agentmesh.cli.node import node
from agentmesh.cli.nodes import nodes
from agentmesh.cli.profile import profile
from agentmesh.cli.scheduler import scheduler
from agentmesh.cli.up import up

COMPLETE_VARIABLE = "_AGENTMESH_COMPLETE"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="AGENTMESH_SCHEDULER, AGENTMESH_TOKEN and agent_config.json's tls settings say"
    " how to reach the scheduler. Exit codes: 0 ok (a task completed), 1 error, 2 wrong"
    " usage, 3 task failed, 4 task canceled, 5 task rejected, 130 interrupted.",
)
@click.version_option(
    __version__, "--version", prog_name="agentmesh", message="%(prog)s %(version)s"
)
@click.option("-v", "--verbose", is_flag=True, help="log debug details")
@click.option("--debug", is_flag=True, help="show a traceback with an error")
@click.option(
    "--scheduler",
    "scheduler_address",
    metavar="HOST:PORT",
    help="the scheduler to talk to (default: AGENTMESH_SCHEDULER, else scheduler.listen)",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool, scheduler_address: str | None) -> None:
    """Run Gemini CLI agents across your machines, coordinated through PostgreSQL."""
    ctx.obj = App(verbose=verbose, debug=debug, scheduler=scheduler_address)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a shell completion script (bash, zsh or fish).

    For example: eval "$(agentmesh completion bash)" in ~/.bashrc.
    """
    completion_class = get_completion_class(shell)
    assert completion_class is not None  # every choice has one
    click.echo(completion_class(cli, {}, "agentmesh", COMPLETE_VARIABLE).source())


for command in (
    up,
    tasks.submit,
    tasks.run,
    tasks.watch,
    tasks.cancel,
    tasks.replay,
    listing.tasks,
    listing.task,
    mesh.agents,
    network,
    profile,
    approvals,
    approve,
    deny,
    knowledge,
    tokens.tokens,
    keys,
    nodes,
    demo,
    scheduler,
    node,
    db,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: run the command, return its exit code."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="agentmesh",
            complete_var=COMPLETE_VARIABLE,
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except click.exceptions.NoArgsIsHelpError as exc:  # a group without its command
        # Its help, on stderr: this is a usage error, not an answer.
        print(exc.format_message(), file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:  # raised before a command ran (App.run reports the others)
        print(f"agentmesh: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.ClickException as exc:
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else ""
        hint = f" (see {where} --help)" if where else ""
        message = " ".join(exc.format_message().split())
        print(f"agentmesh: {message}{hint}", file=sys.stderr)
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
