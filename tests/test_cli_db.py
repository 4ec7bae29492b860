"""`agentmesh db` against the embedded PostgreSQL: started once, reused, stopped on request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentmesh.db import embedded
from agentmesh.db.migrate import load_migrations


def _agentmesh(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    env.pop("DATABASE_URL", None)
    env["AGENTMESH_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _postmaster_pid(data_dir: Path) -> int:
    return int((embedded.pgdata_dir(data_dir) / "postmaster.pid").read_text().split("\n")[0])


def test_embedded_database_is_created_migrated_reused_and_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        migrated = _agentmesh(tmp_path, data_dir, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert "applied 0001_tasks" in migrated.stdout
        first_pid = _postmaster_pid(data_dir)

        status = _agentmesh(tmp_path, data_dir, "db", "status")
        assert status.returncode == 0, status.stderr
        assert "server:      PostgreSQL 16." in status.stdout
        assert "vector mode: pgvector" in status.stdout
        assert f"migrations:  {len(load_migrations())} applied, 0 pending" in status.stdout
        assert _postmaster_pid(data_dir) == first_pid  # the second process reused the server

        document = json.loads(_agentmesh(tmp_path, data_dir, "db", "status", "--json").stdout)
        assert document["embedded"] is True
        assert document["data_dir"] == str(data_dir)
        assert document["server_version"].startswith("16.")
        assert document["vector_mode"] == "pgvector"
        applied = [m["version"] for m in document["migrations"]["applied"]]
        assert applied == [m.version for m in load_migrations()]
        assert document["migrations"]["pending"] == []

        url = _agentmesh(tmp_path, data_dir, "db", "url")
        assert url.stdout.strip() == f"postgresql://postgres@/agentmesh?host={data_dir}/pg16"
        url_document = json.loads(_agentmesh(tmp_path, data_dir, "db", "url", "--json").stdout)
        assert url_document == {"url": url.stdout.strip(), "embedded": True}

        again = _agentmesh(tmp_path, data_dir, "db", "migrate")
        assert again.stdout.strip() == "schema is up to date"
    finally:
        stopped = _agentmesh(tmp_path, data_dir, "db", "stop")
    assert stopped.stdout.strip() == "embedded PostgreSQL stopped"
    assert not embedded.is_running(data_dir)
