"""`agentmesh demo` on a fresh data directory: the whole mesh, then everything stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agentmesh.db import embedded


def test_demo_runs_the_mesh_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    env.pop("DATABASE_URL", None)
    env["AGENTMESH_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

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
    assert not embedded.is_running(tmp_path / "data")  # the demo stopped the database it started
