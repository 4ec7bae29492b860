"""The key pool through a running mesh: the scheduler, a node with its Gemini API proxy, the
real Gemini CLI and the emulator. A 429 or a refused key costs the user nothing while another
key has capacity; a key held by a node never leaves it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import asyncpg
import grpc
import pytest

from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import keys_pb2, keys_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end
from tests.support.gemini_emulator import (
    GeminiEmulator,
    Usage,
    invalid_api_key,
    quota_exhausted,
    shell_call,
    text_reply,
)

KEY_A = "AIzaSy-pool-key-a-00000000001"
KEY_B = "AIzaSy-pool-key-b-00000000002"
NODE_KEY = "AIzaSy-held-by-the-node-000003"
MODEL = "gemini-2.5-flash"


def key_file(tmp_path: Path, **keys: str) -> Path:
    path = tmp_path / "api_keys.env"
    path.write_text("".join(f"{name}={key}\n" for name, key in keys.items()))
    return path


async def fetch(database_uri: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_uri)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def everything_stored(database_uri: str) -> str:
    """Every text value of every table of the database, as one string."""
    conn = await asyncpg.connect(database_uri)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE'"
        )
        dumped = []
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{table["table_name"]}" t')
            dumped += [row["row"] for row in rows]
    finally:
        await conn.close()
    return "\n".join(dumped)


async def prefer(mesh: Mesh, label: str) -> None:
    """Give a key the highest priority, so that it is the one tried first."""
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        await conn.execute("UPDATE api_keys SET priority = 10 WHERE name = $1", label)
    finally:
        await conn.close()


def diagnostics(events: list[task_pb2.TaskEvent]) -> list[str]:
    return [e.diagnostic.message for e in events if e.WhichOneof("payload") == "diagnostic"]


async def test_a_429_cools_that_key_and_the_request_completes_on_another(
    mesh: Mesh, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.script(quota_exhausted("minute", retry_seconds=40), text_reply("Done."))
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A, B=KEY_B)))
    stub = await mesh.start_scheduler()
    await prefer(mesh, "A")
    await mesh.start_node("llm")

    task, events = await run_to_end(stub, kind="gemini", prompt="hello", model=MODEL)

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.output == "Done."
    assert task.attempt == 1
    assert [r.api_key for r in emulator.generate_requests()] == [KEY_A, KEY_B]
    assert not [e for e in events if e.WhichOneof("payload") == "api_error"]
    (moved,) = [m for m in diagnostics(events) if "A" in m and "cool" in m]
    assert fingerprint(KEY_A) in moved
    rows = await fetch(
        mesh.database_uri,
        "SELECT k.name, extract(epoch FROM m.cooling_until - now()) AS seconds, m.cooling_reason"
        " FROM api_key_models m JOIN api_keys k ON k.id = m.key_id"
        " WHERE m.model = $1 AND m.cooling_until > now()",
        MODEL,
    )
    assert [r["name"] for r in rows] == ["A"]
    assert 20 < rows[0]["seconds"] <= 40
    assert "per-minute" in rows[0]["cooling_reason"]
    for key in (KEY_A, KEY_B):
        assert key not in "".join(str(e) for e in events)
        assert key not in caplog.text
        assert key not in await everything_stored(mesh.database_uri)


async def test_a_key_the_api_refuses_is_disabled_with_the_reason(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.set_key_behaviour(KEY_A, invalid_api_key())
    emulator.script(text_reply("Fine."))
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A, B=KEY_B)))
    stub = await mesh.start_scheduler()
    await prefer(mesh, "A")
    await mesh.start_node("llm")

    task, _ = await run_to_end(stub, kind="gemini", prompt="hello", model=MODEL)

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    rows = await fetch(
        mesh.database_uri, "SELECT name, enabled, disabled_reason FROM api_keys ORDER BY name"
    )
    assert [(r["name"], r["enabled"]) for r in rows] == [("A", False), ("B", True)]
    assert "API_KEY_INVALID" in rows[0]["disabled_reason"]


async def test_with_every_key_exhausted_the_task_waits_without_an_attempt_and_runs_later(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.script(quota_exhausted("minute", retry_seconds=3), text_reply("Later."))
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A)))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")

    task, _events = await run_to_end(stub, kind="gemini", prompt="hello", model=MODEL)

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.output == "Later."
    # The exhausted attempt was handed back without using one of the task's attempts.
    # (an attempt that is handed back raises the task's maximum by one: 2 attempts are
    # left, as for any task that ran once)
    assert task.attempt == 2
    assert task.max_attempts - task.attempt == 2
    assert [r.api_key for r in emulator.generate_requests()] == [KEY_A, KEY_A]


async def test_a_key_held_by_a_node_is_used_there_and_never_leaves_it(
    mesh: Mesh, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.script(text_reply("From the node's own key."))
    stub = await mesh.start_scheduler()  # the scheduler has no key at all
    await mesh.start_node("plain")
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, MINE=NODE_KEY)))
    await mesh.start_node("holder")

    task, events = await run_to_end(stub, kind="gemini", prompt="hello", model=MODEL)

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    (row,) = await fetch(
        mesh.database_uri,
        "SELECT t.assigned_agent, a.card->>'name' AS agent, k.source, k.key_value, k.fingerprint"
        " FROM tasks t JOIN agents a ON a.id = t.assigned_agent"
        " JOIN api_keys k ON k.id = t.api_key_id WHERE t.id = $1",
        task.id,
    )
    assert row["agent"] == "holder"
    assert row["source"] == "node:holder"
    assert row["key_value"] is None
    assert row["fingerprint"] == fingerprint(NODE_KEY)
    assert [r.api_key for r in emulator.generate_requests()] == [NODE_KEY]
    assert NODE_KEY not in await everything_stored(mesh.database_uri)
    assert NODE_KEY not in "".join(str(e) for e in events)
    scheduler_logs = [r.getMessage() for r in caplog.records if "scheduler" in r.name]
    assert NODE_KEY not in "\n".join(scheduler_logs)


async def test_an_agent_that_prints_its_environment_finds_no_key(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.script(
        shell_call("env; cat /proc/$PPID/environ | tr '\\0' '\\n'"),
        text_reply("I looked."),
    )
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A)))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")

    task, events = await run_to_end(
        stub, kind="gemini", prompt="print env", model=MODEL, permission_mode="superuser"
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    (result,) = [e.tool_result for e in events if e.WhichOneof("payload") == "tool_result"]
    assert "GEMINI_API_KEY=" in result.output  # it did print the CLI's environment
    # What the model was sent back is the tool's raw output: no key in it either.
    assert KEY_A not in json.dumps(emulator.generate_requests()[-1].body)
    assert KEY_A not in result.output


async def test_a_forecast_over_the_users_limit_is_rejected_before_any_key_is_spent(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A)))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        await conn.execute(
            "INSERT INTO user_profile (username, max_token_per_request) VALUES ('carol', 50)"
        )
    finally:
        await conn.close()

    task, _ = await run_to_end(stub, kind="gemini", prompt="x" * 4000, model=MODEL, user="carol")

    assert task.state == task_pb2.TASK_STATE_REJECTED
    assert "1,000" in task.error, task.error  # the forecast: 4,000 characters
    assert "50" in task.error, task.error  # carol's max_token_per_request
    assert emulator.generate_requests() == []


async def test_a_task_that_spends_more_than_its_budget_is_stopped(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    # The forecast fits the budget; what the API really charges for the first turn does not.
    emulator.script(shell_call("date", usage=Usage(4_990, 10)), text_reply("never sent"))
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A)))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")

    task, _ = await run_to_end(
        stub, kind="gemini", prompt="check the date", model=MODEL, max_tokens=3_000
    )

    assert task.state == task_pb2.TASK_STATE_FAILED
    assert "token budget exceeded: 5000 of 3000 tokens" in task.error, task.error
    assert len(emulator.generate_requests()) == 1


async def test_every_gemini_task_logs_its_forecast_beside_what_it_spent(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("Counted.", prompt_tokens=40, candidates_tokens=5))
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file(mesh.tmp_path, A=KEY_A)))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")

    task, _ = await run_to_end(stub, kind="gemini", prompt="count me", model=MODEL, user="dan")

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    (row,) = await fetch(
        mesh.database_uri,
        "SELECT task_id, api_key, predicted_tokens, actual_tokens, delta, request_timestamp,"
        " username, model FROM token_prediction_log",
    )
    assert (row["task_id"], row["api_key"], row["username"], row["model"]) == (
        task.id,
        fingerprint(KEY_A),
        "dan",
        MODEL,
    )
    assert row["actual_tokens"] == 45  # the API's usageMetadata, as the proxy counted it
    assert row["delta"] == 45 - row["predicted_tokens"]
    assert row["request_timestamp"] is not None
    async with grpc.aio.insecure_channel(mesh.schedulers[0].address) as channel:
        report = await keys_pb2_grpc.KeyPoolStub(channel).TokenReport(
            keys_pb2.TokenReportRequest(days=1)
        )
    assert report.overall.tasks == 1
    assert [(u.name, u.tasks) for u in report.by_user] == [("dan", 1)]


async def test_a_task_waits_for_a_key_no_longer_than_its_user_tolerates(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()  # no key at all
    await mesh.start_node("llm")
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        await conn.execute(
            "INSERT INTO user_profile (username, throttle_tolerance) VALUES ('erin', 1)"
        )
    finally:
        await conn.close()

    task, _ = await run_to_end(stub, kind="gemini", prompt="hello", model=MODEL, user="erin")

    assert task.state == task_pb2.TASK_STATE_FAILED
    assert task.attempt == 0
    assert task.error.startswith("no API key: none in api_keys"), task.error
    assert "the throttle tolerance is 1 s" in task.error, task.error
