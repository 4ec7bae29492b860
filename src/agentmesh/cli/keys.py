"""`agentmesh keys`: the scheduler's API keys, added, listed, changed and removed.

A secret goes in through `keys add` from standard input or `--secret-file` (a prompt
without echo on a terminal), never from an argument, where `ps` and the shell's history
would see it; nothing the command line prints ever holds it. A key is named by its label or
its fingerprint (ID).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp
from rich.text import Text

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
from agentmesh.cli.output import Cell, Output
from agentmesh.cli.views import duration_text
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
            _table(output, reply.keys)
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


def _iso(stamp: Timestamp, present: bool) -> str | None:
    return stamp.ToDatetime(tzinfo=UTC).isoformat() if present else None


def _limits_json(limits: keys_pb2.KeyLimits) -> dict[str, int]:
    return {
        "requests_per_minute": limits.requests_per_minute,
        "requests_per_day": limits.requests_per_day,
        "tokens_per_day": limits.tokens_per_day,
    }


def key_json(key: keys_pb2.ApiKey) -> dict[str, Any]:
    """A key as `keys list --json` prints it (the README lists the fields)."""
    return {
        "id": key.id,
        "label": key.label,
        "fingerprint": key.fingerprint,
        "priority": key.priority,
        "assigned_user": key.assigned_user,
        "rotating": key.rotating,
        "source": key.source,
        "enabled": key.enabled,
        "disabled_reason": key.disabled_reason,
        # The key's own limits; 0: api_policy's.
        "requests_per_minute": key.requests_per_minute,
        "requests_per_day": key.requests_per_day,
        "tokens_per_day": key.tokens_per_day,
        # The limits in force; 0: none.
        "limits": _limits_json(key.limits),
        "cooldowns": [
            {"model": c.model, "until": _iso(c.until, c.HasField("until")), "reason": c.reason}
            for c in key.cooldowns
        ],
        "usage_today": [
            {
                "model": u.model,
                "requests": u.requests,
                "tokens": u.tokens,
                "reserved_requests": u.reserved_requests,
                "reserved_tokens": u.reserved_tokens,
            }
            for u in key.usage_today
        ],
        "last_used": _iso(key.last_used, key.HasField("last_used")),
        "created_at": _iso(key.created_at, key.HasField("created_at")),
        "node_id": key.node_id,
    }


def compact(number: int) -> str:
    """1234 -> 1.2k, 1000000 -> 1M: a table's numbers at a glance."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if abs(number) >= size:
            text = f"{number / size:.1f}".removesuffix(".0")
            return text + unit
    return str(number)


def _of(used: int, limit: int) -> str:
    return f"{compact(used)}/{compact(limit)}" if limit else compact(used)


def _state(key: keys_pb2.ApiKey) -> Text:
    if key.enabled:
        return Text("enabled", style="green")
    return Text(key.disabled_reason or "disabled", style="red")


def _cooling(key: keys_pb2.ApiKey) -> str:
    now = time.time()
    parts = []
    for cooldown in key.cooldowns:
        left = max(cooldown.until.ToMicroseconds() / 1e6 - now, 0)
        reason = f" ({cooldown.reason})" if cooldown.reason else ""
        parts.append(f"{cooldown.model} {duration_text(left)}{reason}")
    return "; ".join(parts) or "-"


def _today(key: keys_pb2.ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{u.model} {_of(u.requests, limits.requests_per_day)} req"
        f" {_of(u.tokens, limits.tokens_per_day)} tok"
        for u in key.usage_today
    ]
    return "; ".join(parts) or "-"


def _limits(key: keys_pb2.ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{compact(limits.requests_per_minute)}/min" if limits.requests_per_minute else "",
        f"{compact(limits.requests_per_day)}/day" if limits.requests_per_day else "",
        f"{compact(limits.tokens_per_day)} tok/day" if limits.tokens_per_day else "",
    ]
    return " ".join(part for part in parts if part) or "none"


def _table(output: Output, listed: Any) -> None:
    rows: list[list[Cell]] = [
        [
            key.label,
            key.fingerprint,
            str(key.priority),
            key.assigned_user or "-",
            "yes" if key.rotating else "no",
            key.source or "-",
            _state(key),
            _cooling(key),
            _limits(key),
            _today(key),
        ]
        for key in listed
    ]
    output.table(
        ["LABEL", "FINGERPRINT", "PRIO", "USER", "ROTATING", "SOURCE", "STATE", "COOLING",
         "LIMITS", "TODAY"],
        rows,
    )  # fmt: skip
