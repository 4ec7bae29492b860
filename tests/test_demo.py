"""`agentmesh demo`: the whole mesh, then everything stopped; with a token and TLS too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.db import embedded
from tests.support.databases import Server
from tests.support.pki import make_pki
from tests.support.terminal import run_in_terminal

TOKEN = "demo-mesh-token-81c4e2"


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The demo needs pgvector: the embedded server."""
    return embedded_server


def demo_environment(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    clean.pop("DATABASE_URL", None)
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
