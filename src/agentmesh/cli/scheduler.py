"""`agentmesh scheduler`: serve the mesh's scheduler."""

from __future__ import annotations

import click
from pydantic import ValidationError

from agentmesh.cli.app import App, pass_app
from agentmesh.config import ConfigError, SchedulerSettings, Settings, describe_validation_error


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="address to serve on")
@pass_app
def scheduler(app: App, listen: str | None) -> int:
    """Serve the scheduler."""
    import uvloop

    from agentmesh.allocator import keep_large_buffers
    from agentmesh.collector import freeze_startup
    from agentmesh.scheduler.service import run_scheduler  # a slow import: not for --help

    keep_large_buffers()  # nodes' output arrives in 1 MiB events: their buffers are reused
    freeze_startup()  # what the imports made lives as long as the process

    # uvloop: the scheduler is CPU-bound in its event loop under load (see bench/dispatch.py).
    # Nodes keep the standard loop: uvloop's subprocess_exec refuses `user`, `group` and
    # `extra_groups`, which a node needs to run a task as its sandbox user.
    return app.run(
        lambda: run_scheduler(app.settings(), scheduler_listen(app.settings(), listen)),
        service=True,
        loop_factory=uvloop.new_event_loop,
    )


def scheduler_listen(settings: Settings, listen: str | None) -> str:
    """The configured listen address, or the flag's, validated."""
    if listen is None:
        return settings.scheduler.listen
    try:
        return SchedulerSettings.model_validate({"listen": listen}).listen
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source="command line")) from None
