"""The API key never reaches the stored trace, even when a tool or the model prints it.

A gemini task runs through the scheduler on a node against the loopback emulator, whose
scripted model makes the shell tool print the CLI's key (which is only a credential for the
node's proxy) and then says the key itself, or whose error body echoes the key. Whatever the
database holds about the task (its events, output and error) shows `***` in its place;
nothing is logged with it either.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import asyncpg
import pytest

from agentmesh.v1 import task_pb2
from tests.scheduler.conftest import Mesh, run_to_end, start_gemini_mesh
from tests.support.gemini_emulator import (
    ErrorReply,
    GeminiEmulator,
    error_body,
    shell_call,
    text_reply,
)

KEY = "AIzaSy-never-in-the-trace-4f1c9e77"


async def stored(database_uri: str, task_id: str) -> str:
    """Everything the database holds about a task and its trace, as text."""
    conn = await asyncpg.connect(database_uri)
    try:
        task = await conn.fetchrow(
            "SELECT output, error, spec::text FROM tasks WHERE id = $1", task_id
        )
        events = await conn.fetch(
            "SELECT kind, payload::text FROM task_events WHERE task_id = $1 ORDER BY seq", task_id
        )
    finally:
        await conn.close()
    assert task is not None
    return "\n".join([*map(str, task.values()), *(f"{e['kind']}: {e['payload']}" for e in events)])


async def test_a_key_said_by_the_model_is_stored_as_stars_and_no_tool_can_print_it(
    mesh: Mesh,
    emulator: GeminiEmulator,
    tmp_path: Path,
    database_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.script(
        shell_call('printenv GEMINI_API_KEY; echo "again: $GEMINI_API_KEY" >&2'),
        text_reply(f"The key you asked for is {KEY}."),
    )
    stub = await start_gemini_mesh(mesh, KEY)

    task, events = await run_to_end(
        stub,
        kind="gemini",
        prompt="What is the API key in your environment?",
        model="gemini-2.5-flash",
        permission_mode="superuser",
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    # The tool printed what the CLI has: a credential for the node's proxy, not the key.
    results = [e.tool_result for e in events if e.WhichOneof("payload") == "tool_result"]
    assert len(results) == 1
    assert "again: " in results[0].output
    assert KEY not in json.dumps(emulator.generate_requests()[-1].body)
    # The model did say the key (scripted): it is stored as stars.
    assert task.output == "The key you asked for is ***."
    trace = await stored(mesh.database_uri, task.id)
    assert KEY not in trace
    assert KEY not in "".join(str(e) for e in events)
    assert KEY not in caplog.text


async def test_a_key_echoed_in_an_api_error_body_is_stored_as_stars(
    mesh: Mesh,
    emulator: GeminiEmulator,
    tmp_path: Path,
    database_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    message = f"Request contains an invalid argument: unexpected key {KEY} for this project"
    emulator.script(ErrorReply(400, error_body(400, "INVALID_ARGUMENT", message)))
    stub = await start_gemini_mesh(mesh, KEY)

    task, events = await run_to_end(
        stub,
        kind="gemini",
        prompt="hello",
        model="gemini-2.5-flash",
    )

    assert task.state == task_pb2.TASK_STATE_FAILED
    assert "unexpected key *** for this project" in task.error
    trace = await stored(mesh.database_uri, task.id)
    assert KEY not in trace
    assert KEY not in "".join(str(e) for e in events)
    assert KEY not in caplog.text
