"""`agentmesh db prune` through its real entry point, against a test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

OLD_TREE = """
INSERT INTO tasks (id, kind, spec, state, root_id, last_seq, created_at, finished_at)
SELECT $1, 'echo', '{}', 'completed', $1, 2, now() - age, now() - age
FROM (SELECT $2::text::interval AS age) AS a
"""
EVENTS = """
INSERT INTO task_events (task_id, seq, kind) VALUES ($1, 1, 'status'), ($1, 2, 'result')
"""


def agentmesh(tmp_path: Path, database_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    env["DATABASE_URL"] = database_uri
    env["AGENTMESH_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "db", "prune", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def task_ids(database_uri: str) -> list[str]:
    conn = await asyncpg.connect(database_uri)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM tasks ORDER BY id")]
    finally:
        await conn.close()


async def test_prune_counts_with_dry_run_then_deletes(tmp_path: Path, database_uri: str) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        for task_id, age in (("t-old", "40 days"), ("t-recent", "2 days")):
            await conn.execute(OLD_TREE, task_id, age)
            await conn.execute(EVENTS, task_id)
    finally:
        await conn.close()

    dry = agentmesh(tmp_path, database_uri, "--older-than", "30d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    document = json.loads(dry.stdout)
    assert {k: document[k] for k in ("dry_run", "trees", "tasks", "events")} == {
        "dry_run": True,
        "trees": 1,
        "tasks": 1,
        "events": 2,
    }
    assert await task_ids(database_uri) == ["t-old", "t-recent"]

    text = agentmesh(tmp_path, database_uri, "--older-than", "30d")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("removed 1 task trees (1 tasks, 2 events) that ended before ")
    assert await task_ids(database_uri) == ["t-recent"]


def test_a_bad_duration_is_one_error_line_naming_it(tmp_path: Path) -> None:
    result = agentmesh(tmp_path, "postgresql://nobody@/nowhere", "--older-than", "3x")
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith("agentmesh: --older-than '3x' is not a duration"), result
    assert result.stderr.count("\n") == 1
