"""`agentmesh keys`: the scheduler's API keys, added, listed, changed and removed.

A secret goes in through `keys add` from standard input or `--secret-file` (a prompt
without echo on a terminal), never from an argument, where `ps` and the shell's history
would see it; nothing the command line prints ever holds it. A key is named by its label or
its fingerprint (ID).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from agentmesh import log_format
from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import (
    CALL_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    KeyPoolStub,
    key_pool_stub,
)
from agentmesh.cli.key_views import key_json, key_table
from agentmesh.v1 import keys_pb2

INT32 = click.IntRange(-(2**31), 2**31 - 1)
LIMIT = click.IntRange(0, 2**31 - 1)
TOKEN_LIMIT = click.IntRange(0, 2**63 - 1)


def _limit_options(function: Any) -> Any:
    options = [
        click.option("--rpm", type=LIMIT, help="requests a minute (0: api_policy's)"),
        click.option("--rpd", type=LIMIT, help="requests a day (0: api_policy's)"),
        click.option("--tpd", type=TOKEN_LIMIT, help="tokens a day (0: api_policy's)"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group()
def keys() -> None:
    """Manage the scheduler's API keys (ID: a key's label or fingerprint).

    Secrets are stored encrypted and never shown; keys are listed by label and fingerprint.
    """


# Extra words are refused here, not by click, whose message would repeat them: a key typed
# on the command line must not be echoed back (it is in the shell's history already).
@keys.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--label", required=True, help="the key's name: 1-64 of letters, digits, . _ : -")
@click.option("--priority", type=INT32, default=0, show_default=True, help="higher goes first")
@click.option("--user", default="", help="only this user's tasks may use it (default: anyone's)")
@click.option(
    "--rotating/--no-rotating",
    default=True,
    show_default=True,
    help="take turns with the keys of its priority, or be used until it runs out",
)
@_limit_options
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="read the key from this file (default: standard input; a terminal prompts)",
)
@json_option
@pass_app
def add(
    app: App,
    label: str,
    priority: int,
    user: str,
    rotating: bool,
    rpm: int | None,
    rpd: int | None,
    tpd: int | None,
    secret_file: Path | None,
    as_json: bool,
) -> int:
    """Add an API key; the key itself comes from standard input or --secret-file."""
    refuse_extra_words(click.get_current_context().args)
    secret = read_secret(secret_file)
    log_format.redact(secret)
    request = keys_pb2.AddKeyRequest(
        label=label,
        secret=secret,
        priority=priority,
        assigned_user=user,
        rotating=rotating,
        requests_per_minute=rpm or 0,
        requests_per_day=rpd or 0,
        tokens_per_day=tpd or 0,
    )
    return _run_on_key(
        app, as_json, "added", lambda stub: stub.AddKey(request, timeout=CALL_TIMEOUT)
    )


@keys.command(name="list")
@json_option
@pass_app
def list_keys(app: App, as_json: bool) -> int:
    """List the keys: priority, user, state, cooldowns and today's use against the limits."""

    async def command() -> int:
        output = output_for(as_json)
        async with key_pool_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListKeys(keys_pb2.ListKeysRequest(), timeout=CALL_TIMEOUT)
        if output.json:
            output.data([key_json(key) for key in reply.keys])
        else:
            key_table(output, reply.keys)
        return EXIT_OK

    return app.run(command)


@keys.command()
@click.argument("key_id", metavar="ID")
@click.option("--label", help="a new label")
@click.option("--priority", type=INT32, help="higher goes first")
@click.option("--user", help="only this user's tasks may use it ('' : anyone's)")
@click.option("--rotating/--no-rotating", default=None, help="take turns, or use it up first")
@_limit_options
@json_option
@pass_app
def update(
    app: App,
    key_id: str,
    label: str | None,
    priority: int | None,
    user: str | None,
    rotating: bool | None,
    rpm: int | None,
    rpd: int | None,
    tpd: int | None,
    as_json: bool,
) -> int:
    """Change a key's label, priority, user, rotation or limits (only those given)."""
    if all(value is None for value in (label, priority, user, rotating, rpm, rpd, tpd)):
        raise CliError(
            "nothing to change: give --label, --priority, --user, --rotating/--no-rotating,"
            " --rpm, --rpd or --tpd (see agentmesh keys update --help)",
            EXIT_USAGE,
        )
    # None leaves a field unset: the scheduler changes only the fields that are set.
    request = keys_pb2.UpdateKeyRequest(
        ref=keys_pb2.KeyRef(key=key_id),
        label=label,
        priority=priority,
        assigned_user=user,
        rotating=rotating,
        requests_per_minute=rpm,
        requests_per_day=rpd,
        tokens_per_day=tpd,
    )
    return _run_on_key(
        app, as_json, "updated", lambda stub: stub.UpdateKey(request, timeout=CALL_TIMEOUT)
    )


@keys.command()
@click.argument("key_id", metavar="ID")
@click.option("--reason", default="", help="why (shown in keys list)")
@json_option
@pass_app
def disable(app: App, key_id: str, reason: str, as_json: bool) -> int:
    """Disable a key: no task gets it until it is enabled."""
    request = keys_pb2.SetKeyEnabledRequest(
        ref=keys_pb2.KeyRef(key=key_id), enabled=False, reason=reason
    )
    return _run_on_key(
        app, as_json, "disabled", lambda stub: stub.SetKeyEnabled(request, timeout=CALL_TIMEOUT)
    )


@keys.command()
@click.argument("key_id", metavar="ID")
@json_option
@pass_app
def enable(app: App, key_id: str, as_json: bool) -> int:
    """Enable a key (its disabled reason goes)."""
    request = keys_pb2.SetKeyEnabledRequest(ref=keys_pb2.KeyRef(key=key_id), enabled=True)
    return _run_on_key(
        app, as_json, "enabled", lambda stub: stub.SetKeyEnabled(request, timeout=CALL_TIMEOUT)
    )


@keys.command()
@click.argument("key_id", metavar="ID")
@json_option
@pass_app
def rm(app: App, key_id: str, as_json: bool) -> int:
    """Remove a key, with its cooldowns and usage."""
    request = keys_pb2.RemoveKeyRequest(ref=keys_pb2.KeyRef(key=key_id))

    async def call(stub: KeyPoolStub) -> keys_pb2.ApiKey:
        reply = await stub.RemoveKey(request, timeout=CALL_TIMEOUT)
        return reply.key

    return _run_on_key(app, as_json, "removed", call)


def _run_on_key(
    app: App,
    as_json: bool,
    done: str,
    call: Callable[[KeyPoolStub], Awaitable[keys_pb2.ApiKey]],
) -> int:
    """Make one call that answers a key; print it (JSON) or what was done to it."""

    async def command() -> int:
        output = output_for(as_json)
        async with key_pool_stub(app.settings(), app.scheduler_address()) as stub:
            key = await call(stub)
        if output.json:
            output.data(key_json(key))
        else:
            output.line(f"{done} {key.label} ({key.fingerprint})")
        return EXIT_OK

    return app.run(command)


def refuse_extra_words(words: list[str]) -> None:
    """`keys add` takes options only; an unknown option is named, any other word is not."""
    options = [word.split("=", 1)[0] for word in words if word.startswith("-")]
    if options:
        raise CliError(f"no such option: {options[0]} (see agentmesh keys add --help)", EXIT_USAGE)
    if words:
        raise CliError(
            "keys add takes no arguments (not repeated here): the key is read from standard"
            " input or --secret-file, never from the command line, where ps and the shell's"
            " history would keep it",
            EXIT_USAGE,
        )


def read_secret(secret_file: Path | None) -> str:
    """The key from the file, the terminal (without echo) or standard input: one line."""
    if secret_file is not None:
        where = f"--secret-file {secret_file}"
        try:
            text = secret_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{where}: cannot read: {exc.strerror}", EXIT_USAGE) from None
        except UnicodeDecodeError:
            raise CliError(f"{where}: cannot read: not UTF-8 text", EXIT_USAGE) from None
    elif sys.stdin is not None and sys.stdin.isatty():
        where = "the prompt"
        text = click.prompt("API key", hide_input=True, err=True, default="", show_default=False)
    else:
        where = "standard input"
        text = sys.stdin.read() if sys.stdin is not None else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CliError(
            f"no API key in {where} (pipe it in, or use --secret-file; never an argument)",
            EXIT_USAGE,
        )
    if len(lines) > 1:
        raise CliError(f"{where} holds {len(lines)} lines: give one key", EXIT_USAGE)
    return lines[0]
