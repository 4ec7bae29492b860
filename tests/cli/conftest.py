"""The command line through its real entry point: `python -m agentmesh.cli.main` in a
subprocess, against a scheduler and a node running in the test's process, with the token."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.scheduler.conftest import Mesh
from tests.scheduler.conftest import mesh as mesh  # the fixture
from tests.support.databases import Server

TOKEN = "cli-mesh-token-7f3a91"
_CLEARED = ("AGENTMESH_", "POSTGRES_", "GEMINI_")
TASK_LINE = re.compile(r"^task (t-[0-9a-f]+)", re.MULTILINE)
CLI_TIMEOUT_SECONDS = 90


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The command line does not care which PostgreSQL the scheduler uses: one is enough."""
    return embedded_server


@dataclass(frozen=True)
class Result:
    """What one `agentmesh` invocation did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def task_id(self) -> str:
        """The id a `run`, `watch` or `replay` announced first."""
        match = TASK_LINE.search(self.stderr)
        assert match, self
        return match[1]

    def assert_one_error_line(self, text: str) -> None:
        """Failed with one line on stderr containing `text`, nothing on stdout, no traceback."""
        assert self.returncode != 0, self
        assert self.stdout == "", self
        assert self.stderr.count("\n") == 1, self
        assert self.stderr.endswith("\n"), self
        assert self.stderr.startswith("agentmesh: "), self
        assert text in self.stderr, self
        assert "Traceback" not in self.stderr, self


class Cli:
    """Runs `agentmesh` as a user would, against one scheduler (AGENTMESH_SCHEDULER)."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self.env = dict(env)

    async def __call__(
        self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> Result:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentmesh.cli.main",
            *args,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None),
            CLI_TIMEOUT_SECONDS,
        )
        result = Result(tuple(args), process.returncode or 0, out.decode(), err.decode())
        # Piped output never carries colour codes, even where the terminal type has colours.
        assert "\x1b[" not in result.stdout + result.stderr, result
        return result


def cli_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    env.pop("DATABASE_URL", None)
    env.update(TERM="xterm-256color", COLORTERM="truecolor", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
async def mesh_with_token(mesh: Mesh) -> Mesh:
    """A scheduler and one node, `alpha`, that need the mesh token."""
    mesh.configure(AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    await mesh.start_node("alpha", capabilities=["inventory"])
    return mesh


@pytest.fixture
def cli(mesh_with_token: Mesh, tmp_path: Path) -> Cli:
    work = tmp_path / "cli"
    work.mkdir()
    return Cli(
        work,
        cli_environment(
            AGENTMESH_SCHEDULER=mesh_with_token.schedulers[0].address, AGENTMESH_TOKEN=TOKEN
        ),
    )
