"""`agentmesh task ID` shows the tree a running agent grew: the subtask it delegated through
its mesh tools sits under it, marked delegated and after the subtask submitted up front,
with where it ran (the real Gemini CLI against the API emulator)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import TOKEN, Cli, cli_environment
from tests.scheduler.conftest import Mesh
from tests.support.gemini_emulator import GeminiEmulator, function_call_reply, text_reply

KEY = "AIzaSy-task-tree-test-key-0001"

TREE = """\
kind: gemini
prompt: Find out which kernel the vault machine runs.
description: plan
subtasks:
  - {kind: echo, prompt: hello, description: greeting}
"""


@pytest.fixture
async def planner_cli(mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path) -> Cli:
    """A secured mesh with a key: `planner` runs the agent, `vault` what it delegates."""
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"{KEY}\n")
    mesh.configure(AGENTMESH_TOKEN=TOKEN, GEMINI_API_KEY_FILE=str(key_file))
    await mesh.start_scheduler()
    await mesh.start_node("planner")
    await mesh.start_node("vault", capabilities=["vault"])
    work = tmp_path / "cli"
    work.mkdir()
    return Cli(
        work,
        cli_environment(AGENTMESH_SCHEDULER=mesh.schedulers[0].address, AGENTMESH_TOKEN=TOKEN),
    )


async def test_task_shows_the_subtask_its_agent_delegated_under_it(
    planner_cli: Cli, emulator: GeminiEmulator
) -> None:
    cli = planner_cli
    (cli.cwd / "plan.yaml").write_text(TREE)
    emulator.script(
        function_call_reply(
            "mcp_mesh_delegate",
            {"description": "vault kernel", "command": "uname -s", "capabilities": ["vault"]},
        ),
        text_reply("The vault runs Linux."),
    )
    run = await cli("run", "-f", "plan.yaml", "--host", "planner")
    assert run.returncode == 0, run
    root_id = run.task_id()

    shown = json.loads((await cli("task", root_id, "--json")).stdout)

    assert shown["delegated"] is False
    # The run's stderr has the tool calls and their results, should the delegation fail.
    assert len(shown["subtasks"]) == 2, run.stderr
    greeting, delegated = shown["subtasks"]
    assert greeting["description"] == "greeting"
    assert greeting["delegated"] is False
    assert greeting["delegated_by_attempt"] is None
    assert delegated["description"] == "vault kernel"
    assert delegated["spec"]["command"] == "uname -s"
    assert delegated["state"] == "completed"
    assert delegated["output"] == "Linux\n"
    assert delegated["node"]["name"] == "vault"
    assert delegated["parent_id"] == root_id
    assert delegated["delegated"] is True
    assert delegated["delegated_by_attempt"] == 1
    assert delegated["subtasks"] == []
    assert delegated["created_at"] > greeting["created_at"]

    plain = await cli("task", root_id)

    assert plain.returncode == 0, plain
    assert re.search(r"^  subtasks +2 \(1 delegated by its agent\)$", plain.stdout, re.M)
    lines = plain.stdout.split("\nsubtasks:\n")[1].splitlines()
    assert re.match(rf"^  completed +{root_id}  plan  on planner ", lines[0]), lines
    assert re.match(r"^    completed +t-\w+  greeting  on planner  [\d.]+s$", lines[1]), lines
    assert re.match(
        r"^    completed +t-\w+  vault kernel  \$ uname -s  on vault  [\d.]+s"
        r"  delegated at \+[\d.]+s$",
        lines[2],
    ), lines

    child = await cli("task", delegated["id"])

    assert re.search(
        rf"^  parent +{root_id} \(its agent delegated this task, attempt 1\)$", child.stdout, re.M
    ), child
