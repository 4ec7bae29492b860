"""`agentmesh keys` through the real entry point against a scheduler with the token: keys
added from standard input or a file, listed, changed and removed; mistakes are one line;
the secret never shows in anything the command line prints."""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg

from agentmesh.keys.pool import fingerprint
from tests.cli.conftest import Cli, Result
from tests.scheduler.conftest import Mesh
from tests.support.terminal import run_in_terminal

SECRET = "AIzaSy-cli-key-secret-6a0f3b9d"
FILE_SECRET = "AIzaSy-cli-file-secret-20c4e1"
FP = fingerprint(SECRET)
FILE_FP = fingerprint(FILE_SECRET)
KEY_FIELDS = {
    "id", "label", "fingerprint", "priority", "assigned_user", "rotating", "source", "enabled",
    "disabled_reason", "requests_per_minute", "requests_per_day", "tokens_per_day", "limits",
    "cooldowns", "usage_today", "last_used", "created_at", "node_id",
}  # fmt: skip


def no_secret(*results: Result) -> None:
    for result in results:
        for secret in (SECRET, FILE_SECRET):
            assert secret not in result.stdout + result.stderr, result


async def listed(cli: Cli) -> dict[str, dict[str, object]]:
    result = await cli("keys", "list", "--json")
    assert result.returncode == 0, result
    no_secret(result)
    return {key["label"]: key for key in json.loads(result.stdout)}


async def test_keys_are_added_listed_changed_and_removed(cli: Cli, mesh_with_token: Mesh) -> None:
    added = await cli(
        "keys", "add", "--label", "primary", "--priority", "5", "--user", "alice",
        "--no-rotating", "--rpm", "2", stdin=f"{SECRET}\n",
    )  # fmt: skip
    assert (added.returncode, added.stdout, added.stderr) == (0, f"added primary ({FP})\n", "")
    (cli.cwd / "spare.key").write_text(f"  {FILE_SECRET}  \n\n")
    from_file = await cli("keys", "add", "--label", "spare", "--secret-file", "spare.key")
    assert from_file.stdout == f"added spare ({FILE_FP})\n", from_file

    table = await cli("keys", "list")
    assert table.returncode == 0, table
    header, first, second = table.stdout.splitlines()
    assert header.split() == [
        "LABEL", "FINGERPRINT", "PRIO", "USER", "ROTATING", "SOURCE", "STATE", "COOLING",
        "LIMITS", "TODAY",
    ]  # fmt: skip
    assert first.split() == [
        "primary", FP, "5", "alice", "no", "cli", "enabled", "-", "2/min", "1.5k/day",
        "1M", "tok/day", "-",
    ]  # fmt: skip
    assert second.split()[:7] == ["spare", FILE_FP, "0", "-", "yes", "cli", "enabled"]

    keys = await listed(cli)
    assert set(keys["primary"]) == KEY_FIELDS
    assert {k: v for k, v in keys["primary"].items() if k not in ("id", "created_at")} == {
        "label": "primary",
        "fingerprint": FP,
        "priority": 5,
        "assigned_user": "alice",
        "rotating": False,
        "source": "cli",
        "enabled": True,
        "disabled_reason": "",
        "requests_per_minute": 2,
        "requests_per_day": 0,
        "tokens_per_day": 0,
        "limits": {"requests_per_minute": 2, "requests_per_day": 1500, "tokens_per_day": 1000000},
        "cooldowns": [],
        "usage_today": [],
        "last_used": None,
        "node_id": "",
    }
    assert isinstance(keys["primary"]["created_at"], str)

    await execute(
        mesh_with_token,
        "INSERT INTO api_key_models (key_id, model, cooling_until, cooling_reason) VALUES"
        " ($1, 'gemini-2.5-pro', now() + interval '90 minutes', 'per-day quota')",
        keys["primary"]["id"],
    )
    await execute(
        mesh_with_token,
        "INSERT INTO api_key_usage (key_id, model, day, requests, tokens) VALUES"
        " ($1, 'gemini-2.5-flash', (now() AT TIME ZONE 'America/Los_Angeles')::date, 7, 12345)",
        keys["primary"]["id"],
    )
    busy = (await cli("keys", "list")).stdout.splitlines()[1]
    assert "gemini-2.5-pro 1h29m (per-day quota)" in busy, busy
    assert busy.endswith("gemini-2.5-flash 7/1.5k req 12.3k/1M tok"), busy
    cooling = (await listed(cli))["primary"]
    assert [(c["model"], c["reason"]) for c in cooling["cooldowns"]] == [
        ("gemini-2.5-pro", "per-day quota")
    ]
    assert cooling["usage_today"] == [
        {"model": "gemini-2.5-flash", "requests": 7, "tokens": 12345, "reserved_requests": 0,
         "reserved_tokens": 0}
    ]  # fmt: skip

    updated = await cli(
        "keys", "update", "primary", "--label", "main", "--priority", "1", "--user", "",
        "--rpm", "0", "--tpd", "5000", "--json",
    )  # fmt: skip
    main = json.loads(updated.stdout)
    assert (main["label"], main["priority"], main["assigned_user"]) == ("main", 1, "")
    assert (main["requests_per_minute"], main["limits"]["tokens_per_day"]) == (0, 5000)
    disabled = await cli("keys", "disable", "main", "--reason", "over budget")
    assert disabled.stdout == f"disabled main ({FP})\n", disabled
    assert (await listed(cli))["main"]["disabled_reason"] == "disabled: over budget"
    assert "disabled: over budget" in (await cli("keys", "list")).stdout
    enabled = await cli("keys", "enable", FP)
    assert enabled.stdout == f"enabled main ({FP})\n", enabled
    assert (await listed(cli))["main"]["enabled"] is True
    removed = await cli("keys", "rm", "main")
    assert removed.stdout == f"removed main ({FP})\n", removed
    assert list(await listed(cli)) == ["spare"]
    no_secret(added, from_file, table, updated, disabled, enabled, removed)


async def test_mistakes_are_one_line_and_store_nothing(cli: Cli, mesh_with_token: Mesh) -> None:
    nothing = await cli("keys", "add", "--label", "k")  # stdin is /dev/null
    nothing.assert_one_error_line("no API key in standard input")
    assert nothing.returncode == 2
    two = await cli("keys", "add", "--label", "k", stdin=f"{SECRET}\n{FILE_SECRET}\n")
    two.assert_one_error_line("standard input holds 2 lines: give one key")
    missing = await cli("keys", "add", "--label", "k", "--secret-file", "absent.key")
    missing.assert_one_error_line("--secret-file absent.key: cannot read: No such file")
    as_argument = await cli("keys", "add", "--label", "k", SECRET)
    as_argument.assert_one_error_line("keys add takes no arguments (not repeated here)")
    as_option = await cli("keys", "add", "--label", "k", f"--secret={SECRET}")
    as_option.assert_one_error_line("no such option: --secret ")
    bad_label = await cli("keys", "add", "--label", "two words", stdin=SECRET)
    bad_label.assert_one_error_line("invalid request: label: must be 1-64 characters")
    assert bad_label.returncode == 2
    secret_label = await cli("keys", "add", "--label", SECRET, stdin=SECRET)
    secret_label.assert_one_error_line("invalid request: label: is an API key's secret")
    negative = await cli("keys", "add", "--label", "k", "--rpm", "-1", stdin=SECRET)
    negative.assert_one_error_line("'--rpm'")
    assert negative.returncode == 2
    for result in (nothing, two, missing, as_argument, as_option, bad_label, secret_label):
        assert result.returncode == 2, result
    no_secret(nothing, two, missing, as_argument, as_option, bad_label, secret_label, negative)
    assert await stored_names(mesh_with_token) == []

    assert (await cli("keys", "add", "--label", "k", stdin=SECRET)).returncode == 0
    same_label = await cli("keys", "add", "--label", "k", stdin=FILE_SECRET)
    same_label.assert_one_error_line("an API key labelled 'k' exists already")
    assert same_label.returncode == 1
    same_secret = await cli("keys", "add", "--label", "k2", stdin=SECRET)
    same_secret.assert_one_error_line("this secret is stored already, as the key labelled 'k'")
    unknown = await cli("keys", "update", "nope", "--priority", "3")
    unknown.assert_one_error_line("no API key has the label or fingerprint 'nope'")
    assert unknown.returncode == 1
    by_secret = await cli("keys", "rm", SECRET)
    by_secret.assert_one_error_line("invalid request: ref.key: is an API key's secret")
    no_change = await cli("keys", "update", "k")
    no_change.assert_one_error_line("nothing to change")
    assert no_change.returncode == 2
    no_secret(same_label, same_secret, unknown, by_secret, no_change)
    assert await stored_names(mesh_with_token) == ["k"]


async def stored_names(mesh: Mesh) -> list[str]:
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        return [row["name"] for row in await conn.fetch("SELECT name FROM api_keys")]
    finally:
        await conn.close()


async def test_on_a_terminal_the_key_is_asked_for_without_echo(
    cli: Cli, mesh_with_token: Mesh
) -> None:
    argv = [sys.executable, "-m", "agentmesh.cli.main", "keys", "add", "--label", "typed"]
    screen = await asyncio.to_thread(
        run_in_terminal,
        argv,
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
        answers=[("API key: ", SECRET + "\r")],
    )

    assert screen.returncode == 0, screen.text
    assert "API key: " in screen.text
    assert f"added typed ({FP})" in screen.text
    assert SECRET not in screen.raw  # not echoed as it was typed
    assert await stored_names(mesh_with_token) == ["typed"]


async def execute(mesh: Mesh, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()
