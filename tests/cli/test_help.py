"""`--help` on every command the top-level help lists (and their subcommands), found from
the help itself so that a new command is covered too; and shell completion."""

from __future__ import annotations

import asyncio
import re
import sys

from tests.cli.conftest import cli_environment


def _commands(help_text: str) -> list[str]:
    """The command names a --help lists."""
    section = help_text.split("Commands:\n", 1)[1] if "Commands:\n" in help_text else ""
    section = section.split("\n\n", 1)[0]  # up to the epilog
    return re.findall(r"^  ([a-z][a-z-]*)\s", section, re.MULTILINE)


async def _help(*path: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli.main", *path, "--help",
        env=cli_environment(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, (path, err.decode())
    text = out.decode()
    assert text.startswith(f"Usage: agentmesh {' '.join(path)}".rstrip()), text
    return text


async def test_every_command_has_help_and_completion_works() -> None:
    top = await _help()
    commands = _commands(top)
    expected = {
        "up", "submit", "run", "watch", "cancel", "replay", "tasks", "task", "agents",
        "network", "demo", "scheduler", "node", "db", "completion",
    }  # fmt: skip
    assert expected <= set(commands)
    helps = await asyncio.gather(*(_help(command) for command in commands))
    groups = {c: _commands(text) for c, text in zip(commands, helps, strict=True)}
    assert groups["db"] == ["migrate", "prune", "status", "stop", "url"]
    await asyncio.gather(*(_help(g, sub) for g, subs in groups.items() for sub in subs))
    assert "Exit codes: 0 ok" in top

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli.main", "completion", "bash",
        env=cli_environment(), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    script, _ = await process.communicate()
    assert process.returncode == 0
    assert "_AGENTMESH_COMPLETE=bash_complete" in script.decode()
