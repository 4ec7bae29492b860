"""A gemini task without a free API key waits, like one without a fitting agent: with its
reason, without attempts or events, until a key is added or cools down."""

from __future__ import annotations

import asyncio

import asyncpg

from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh
from tests.scheduler.test_waiting import run_to_end, waiting_reason
from tests.support.gemini_emulator import GeminiEmulator, text_reply

KEY = "AIzaSy-key-wait-test-000222"


async def execute(database_uri: str, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def add_key(database_uri: str, cooling_seconds: float = 0.0) -> None:
    """Add a key to api_keys, as another tool would (in plaintext: the scheduler seals it),
    cooling down for the model if asked."""
    await execute(
        database_uri,
        "WITH k AS (INSERT INTO api_keys (name, key_value, fingerprint)"
        " VALUES ('added-by-hand', $1, $2) RETURNING id)"
        " INSERT INTO api_key_models (key_id, model, cooling_until)"
        " SELECT id, 'gemini-2.5-flash', now() + make_interval(secs => $3) FROM k",
        KEY,
        fingerprint(KEY),
        cooling_seconds,
    )


async def heartbeats(stub: scheduler_pb2_grpc.SchedulerAsyncStub, count: int) -> None:
    """Until the agents table saw `count` more heartbeats: each one wakes a dispatch round."""
    seen: set[int] = set()
    while len(seen) <= count:
        reply = await stub.ListAgents(scheduler_pb2.ListAgentsRequest())
        seen.add(reply.agents[0].last_heartbeat.ToNanoseconds())
        await asyncio.sleep(0.05)


async def submit_gemini(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> str:
    spec = task_pb2.TaskSpec(kind="gemini", prompt="hello", model="gemini-2.5-flash")
    return (await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))).id


async def test_without_a_key_a_gemini_task_waits_and_runs_once_a_key_is_added(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("Hi there."))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")
    task_id = await submit_gemini(stub)

    reason = await waiting_reason(stub, task_id)
    await heartbeats(stub, 3)  # several dispatch rounds later
    waiting = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))

    assert waiting.state == task_pb2.TASK_STATE_SUBMITTED
    assert waiting.attempt == 0, "an attempt was started (and handed back) without a key"
    assert waiting.last_seq == 1  # its "submitted" event, and nothing since
    assert reason.startswith("no API key: none in api_keys"), reason
    await add_key(mesh.database_uri)
    task, events = await run_to_end(stub, task_id)
    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.output == "Hi there."
    assert task.attempt == 1
    assert emulator.generate_requests()[0].api_key == KEY
    assert KEY not in "".join(str(e) for e in events)


async def test_a_gemini_task_waits_for_a_cooling_key_and_runs_when_it_is_back(
    mesh: Mesh, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("Hi again."))
    await add_key(mesh.database_uri, cooling_seconds=3600)  # after a 429
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")
    task_id = await submit_gemini(stub)

    reason = await waiting_reason(stub, task_id)
    # The cooldown is over (the hour passes at once).
    await execute(mesh.database_uri, "UPDATE api_key_models SET cooling_until = now()")
    task, _ = await run_to_end(stub, task_id)

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.attempt == 1, "attempts were started (and handed back) without a key"
    assert reason.startswith(
        "no API key has capacity: the key for gemini-2.5-flash is cooling down after a 429"
    ), reason
