"""`agentmesh up` as a process: the database, a scheduler and a node for this host, until
Ctrl-C; the rest of the command line reaches it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from tests.cli.conftest import TOKEN, Cli, cli_environment

READY = re.compile(r"^agentmesh up: scheduler \S+ on (?P<address>\S+); node upnode \(")


async def test_up_serves_the_mesh_until_interrupted(tmp_path: Path, database_uri: str) -> None:
    env = cli_environment(
        DATABASE_URL=database_uri,
        AGENTMESH_DATA_DIR=str(tmp_path / "data"),
        AGENTMESH_TOKEN=TOKEN,
        GEMINI_CLI_COMMAND="/nonexistent",  # no Gemini CLI probe: a faster start
    )
    log = tmp_path / "up.stderr"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmesh.cli.main", "up",
            "--listen", "127.0.0.1:0", "--node-listen", "127.0.0.1:0", "--name", "upnode",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        ready = READY.match(line)
        assert ready, (line, log.read_text())
        cli = Cli(tmp_path, {**env, "AGENTMESH_SCHEDULER": ready["address"]})

        run = await cli("run", "--command", "uname -s")
        assert (run.returncode, run.stdout) == (0, "Linux\n"), run
        agents = json.loads((await cli("agents", "--json")).stdout)
        assert [(a["name"], a["status"]) for a in agents] == [("upnode", "online")]

        os.killpg(process.pid, signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0, log.read_text()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    said = log.read_text()
    assert "Traceback" not in said
    assert "1 agent online · 0 tasks running" in said  # the status line, piped
    assert "stopping: draining the node, then the scheduler" in said
