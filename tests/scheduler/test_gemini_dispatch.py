"""gemini tasks through the scheduler: a key from the key file, outputs of subtasks in the
context — with the key never in the trace (429s and the rest of the pool: test_key_pool)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import asyncpg
import pytest

from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import task_pb2
from tests.scheduler.conftest import Mesh, run_to_end, start_gemini_mesh
from tests.support.gemini_emulator import GeminiEmulator, text_reply

KEY = "AIzaSy-scheduler-test-key-000111"


async def test_parent_prompt_gets_the_subtask_outputs(
    mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    emulator.script(text_reply("Both hosts run Linux.", prompt_tokens=40, candidates_tokens=5))
    stub = await start_gemini_mesh(mesh, KEY)

    task, events = await run_to_end(
        stub,
        kind="gemini",
        prompt="Summarize the inventory.",
        model="gemini-2.5-flash",
        subtasks=[task_pb2.TaskSpec(kind="shell", command="uname -s", description="kernel")],
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.output == "Both hosts run Linux."
    assert task.usage.total_tokens == 45
    request = emulator.generate_requests()[0]
    assert request.api_key == KEY
    # The prompt stays the user's; the subtasks' results come as the CLI's context.
    assert request.user_text == "Summarize the inventory."
    context = json.dumps(request.body)
    assert "### kernel (on " in context
    assert "Linux" in context
    assert KEY not in "".join(str(e) for e in events)


async def test_named_key_from_a_dotenv_key_file_reaches_the_api_alone(
    mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "api_keys.env"
    key_file.write_text(f'# the seed\'s api_keys.env\nexport GEMINI_KEY_1="{KEY}"\n')
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file))
    emulator.script(text_reply("hello"))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")

    task, events = await run_to_end(
        stub,
        kind="gemini",
        prompt="hello",
        model="gemini-2.5-flash",
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert [r.api_key for r in emulator.generate_requests()] == [KEY]
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        row = await conn.fetchrow(
            "SELECT id, name, source FROM api_keys WHERE fingerprint = $1", fingerprint(KEY)
        )
        # The task records which key it ran with (the seed's tasks' key).
        used = await conn.fetchval("SELECT api_key_id FROM tasks WHERE id = $1", task.id)
    finally:
        await conn.close()
    assert dict(row) == {"id": used, "name": "GEMINI_KEY_1", "source": f"file:{key_file}"}
    assert KEY not in "".join(str(e) for e in events)
    assert KEY not in caplog.text
