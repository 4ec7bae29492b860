"""`agentmesh profile`: who a user is and how they like answers (`user_profile`).

A profile takes effect everywhere: a task with no permission mode runs in the user's
`default_permissions`; the key pool holds the user's tasks to `max_token_per_request` and
lets them wait for a key up to `throttle_tolerance` seconds; every gemini task of the user
is told their `timezone` (with their local time) and `preferred_format`.
"""

from __future__ import annotations

from typing import Any

import click

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, memory_stub
from agentmesh.v1 import memory_pb2

FIELDS = (
    "default_permissions",
    "throttle_tolerance",
    "max_token_per_request",
    "timezone",
    "preferred_format",
)


def profile_json(profile: memory_pb2.Profile) -> dict[str, Any]:
    """A profile as `profile show --json` prints it: unset fields are null."""
    values: dict[str, Any] = {"username": profile.username}
    for name in FIELDS:
        values[name] = getattr(profile, name) if name in profile.fields else None
    return values


def _print(profile: memory_pb2.Profile, as_json: bool) -> None:
    output = output_for(as_json)
    if output.json:
        output.data(profile_json(profile))
        return
    rows = [
        [name, str(getattr(profile, name)) if name in profile.fields else "(default)"]
        for name in FIELDS
    ]
    output.line(f"profile of {profile.username}")
    output.table(["FIELD", "VALUE"], rows)


@click.group()
def profile() -> None:
    """Show or change a user's profile."""


@profile.command()
@click.argument("user")
@json_option
@pass_app
def show(app: App, user: str, as_json: bool) -> int:
    """Show USER's profile."""

    async def command() -> int:
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            found = await stub.GetProfile(
                memory_pb2.GetProfileRequest(username=user), timeout=CALL_TIMEOUT
            )
        _print(found, as_json)
        return EXIT_OK

    return app.run(command)


@profile.command(name="set")
@click.argument("user")
@click.option(
    "--default-permissions",
    help="weak or superuser: the mode of the user's tasks that name none ('' clears)",
)
@click.option(
    "--throttle-tolerance", type=int, help="seconds a task may wait for an API key with capacity"
)
@click.option(
    "--max-tokens-per-request",
    "max_token_per_request",
    type=int,
    help="the most tokens one request of the user's tasks may be forecast to spend",
)
@click.option("--timezone", help="an IANA time zone name, e.g. Europe/Paris ('' clears)")
@click.option("--preferred-format", help="how the user likes answers, in words ('' clears)")
@json_option
@pass_app
def set_profile(app: App, /, user: str, as_json: bool, **values: Any) -> int:
    """Create or change USER's profile: only the options given are written."""

    async def command() -> int:
        given = {name: value for name, value in values.items() if value is not None}
        if not given:
            raise click.UsageError("give at least one field to set (see --help)")
        request = memory_pb2.SetProfileRequest(
            fields=list(given), profile=memory_pb2.Profile(username=user, **given)
        )
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            changed = await stub.SetProfile(request, timeout=CALL_TIMEOUT)
        _print(changed, as_json)
        return EXIT_OK

    return app.run(command)
