"""`agentmesh demo`: the whole mesh, then everything stopped; with a token and TLS too; with
a Gemini API key, an agent that plans the inventory itself (the real Gemini CLI against the
API emulator)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.cli.demo import NODES
from agentmesh.db import embedded
from tests.node.conftest import GEMINI_CLI
from tests.support.databases import Server
from tests.support.gemini_emulator import GeminiEmulator, function_call_reply, text_reply
from tests.support.pki import make_pki
from tests.support.terminal import run_in_terminal

TOKEN = "demo-mesh-token-81c4e2"
KEY = "AIzaSy-demo-test-key-0001"


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The demo needs pgvector: the embedded server."""
    return embedded_server


def demo_environment(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    clean.pop("DATABASE_URL", None)
    clean.pop("GEMINI_API_KEY_FILE", None)
    clean["AGENTMESH_DATA_DIR"] = str(tmp_path / "data")
    return clean


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "demo"],
        env={**demo_environment(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def assert_the_demo_ran(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "vector mode: pgvector" in out
    for name in ("alpha", "beta", "gamma"):
        assert re.search(rf"completed kernel of {name} +on {name} ", out)
        assert f"inventory of {name}: completed" in out
    assert out.count("completed kernel of") == 3
    assert "inventory of the mesh: completed" in out
    assert (
        "rm -rf /tmp/agentmesh-demo-scratch` refused in weak mode by rule not-in-allowlist" in out
    )
    assert "Traceback" not in result.stderr


def test_demo_runs_the_mesh_and_stops_everything(tmp_path: Path) -> None:
    result = run_demo(tmp_path)

    assert_the_demo_ran(result)
    assert "no Gemini API key: the inventory is a fixed tree" in result.stdout
    assert "GEMINI_API_KEY_FILE=" in result.stdout
    assert not embedded.is_running(tmp_path / "data")  # the demo stopped the database it started


def test_demo_on_a_terminal_draws_the_tree_live(tmp_path: Path, database_uri: str) -> None:
    screen = run_in_terminal(
        [sys.executable, "-m", "agentmesh.cli.main", "demo"],
        env={**demo_environment(tmp_path), "DATABASE_URL": database_uri},
        cwd=tmp_path,
        timeout=110,
    )

    assert screen.returncode == 0, screen.text
    # The live tree (rich), then the plain one it always prints.
    assert re.search(r"[├└]── completed +kernel of alpha +on alpha", screen.text), screen.text
    assert "inventory of the mesh: completed" in screen.text
    assert "Traceback" not in screen.text


@pytest.mark.parametrize("tls", [False, True], ids=["token", "token-and-tls"])
def test_demo_honours_the_mesh_token_and_tls(tmp_path: Path, database_uri: str, tls: bool) -> None:
    if tls:
        pki = make_pki(tmp_path / "pki", "mesh")
        # Every part of the demo serves with this certificate and dials with it.
        settings = {
            "cert_file": str(pki / "mesh.crt"),
            "key_file": str(pki / "mesh.key"),
            "client_ca_file": str(pki / "ca.crt"),
            "ca_file": str(pki / "ca.crt"),
        }
        (tmp_path / "agent_config.json").write_text(json.dumps({"tls": settings}))

    result = run_demo(tmp_path, AGENTMESH_TOKEN=TOKEN, DATABASE_URL=database_uri)

    assert_the_demo_ran(result)
    assert TOKEN not in result.stdout + result.stderr


def test_demo_with_a_key_shows_an_agent_plan_the_inventory(
    tmp_path: Path, database_uri: str, emulator: GeminiEmulator
) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"{KEY}\n")
    subtasks = [
        {"description": f"kernel of {name}", "command": "uname -srm", "target_host": name}
        for name in NODES
    ]
    emulator.script(
        function_call_reply("mcp_mesh_list_agents", {}),
        function_call_reply("mcp_mesh_delegate_many", {"subtasks": subtasks}),
        text_reply("alpha, beta and gamma run Linux."),
    )

    # As `make demo` runs it: the Gemini CLI is the one AGENTMESH_GEMINI_CLI names.
    result = run_demo(
        tmp_path,
        DATABASE_URL=database_uri,
        GEMINI_API_KEY_FILE=str(key_file),
        AGENTMESH_GEMINI_CLI=GEMINI_CLI,
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a Gemini agent plans the inventory of the mesh itself" in out
    assert "fixed tree" not in out
    # The tool calls as they happened, then each subtask as it was delegated and ended.
    assert "⚙ mcp_mesh_list_agents" in out
    assert "✓ mcp_mesh_list_agents: 3 agents: alpha, beta, gamma" in out
    assert "⚙ mcp_mesh_delegate_many: 3 subtasks" in out
    assert "✓ mcp_mesh_delegate_many: 3 completed" in out
    kernel = "Linux " + os.uname().release
    for name in NODES:
        assert f"kernel of {name}, `uname -srm`" in out
        assert re.search(rf"completed kernel of {name} +on {name} +{re.escape(kernel)}", out)
        # The tree it grew: each command under the agent's task, delegated, on its node.
        assert re.search(
            rf"^    completed t-\w+  kernel of {name}  \$ uname -srm  on {name}  [\d.]+s"
            r"  delegated at \+[\d.]+s$",
            out,
            re.MULTILINE,
        ), out
    assert "the agent's answer:\n  alpha, beta and gamma run Linux.\n" in out
    assert emulator.generate_requests()[0].api_key == KEY
    assert "rm -rf /tmp/agentmesh-demo-scratch` refused in weak mode" in out
    assert "Traceback" not in result.stderr
