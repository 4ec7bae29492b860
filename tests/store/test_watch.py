"""Watching a task against real PostgreSQL: its stored trace a page at a time, then what comes
live, until its result; and a stored event streams as the same message as the event read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentmesh.rpc.convert import event_to_proto, stored_event_to_proto
from agentmesh.scheduler.notifications import TaskSignals
from agentmesh.scheduler.store import TaskStore
from agentmesh.scheduler.watch import PAGE, watch_pages
from agentmesh.tasks.events import (
    ApiError,
    ApiErrorKind,
    Diagnostic,
    Payload,
    Refusal,
    Result,
    Status,
    Stderr,
    Stdout,
    Text,
    ToolResult,
    ToolUse,
    Usage,
)
from agentmesh.tasks.model import TaskState
from agentmesh.v1 import task_pb2
from tests.store.test_transitions import AGENT, ECHO, OWNER, start, trace

EVERY_KIND: list[Payload] = [
    Status(TaskState.WORKING, "placed"),
    Text("hello", role="assistant"),
    Stdout("out \u00e9"),
    Stderr(""),
    ToolUse("t1", "run_shell_command", '{"command": "ls"}'),
    ToolResult("t1", "success", output="a\nb", error_type="", error_message=""),
    Diagnostic("warning", "slow"),
    Refusal("rm -rf /", "rm", "weak", "not in weak mode", approvable=True),
    ApiError(ApiErrorKind.QUOTA_EXHAUSTED, "429", 12.5, "per_minute", "q", 429),
]
ENDS = [
    Result(TaskState.COMPLETED, output="done", usage=Usage(1, 2, 3, model="m"), exit_code=0),
    Result(TaskState.FAILED, error="no", exit_code=2),  # a usage of zeros is still there
]


async def running_task(store: TaskStore, events: list[Payload]) -> tuple[str, int]:
    """A started echo task with these events stored; its id and last sequence number."""
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    last = (await trace(store, task_id))[-1].seq
    for at in range(0, len(events), 1000):
        stored = await store.append_many(
            task_id, attempt.attempt, OWNER, AGENT, events[at : at + 1000], after_seq=last
        )
        assert stored is not None
        last = stored
    return task_id, attempt.attempt


async def pages(watching: AsyncIterator[list[asyncpg.Record]]) -> list[list[asyncpg.Record]]:
    return [page async for page in watching]


@pytest.mark.parametrize("end", ENDS, ids=["completed", "failed"])
async def test_a_stored_event_streams_as_the_same_message_as_the_event_read_back(
    store: TaskStore, pool: asyncpg.Pool, end: Result
) -> None:
    task_id, attempt = await running_task(store, EVERY_KIND)
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, end, in_tree=False)

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM task_events WHERE task_id = $1 ORDER BY seq", task_id
        )
    read_back = await trace(store, task_id)
    streamed = [stored_event_to_proto(row) for row in rows]

    assert streamed == [event_to_proto(event) for event in read_back]
    assert {e.WhichOneof("payload") for e in streamed} >= {p.KIND for p in [*EVERY_KIND, end]}
    assert streamed[-1].result.HasField("usage")
    into = task_pb2.TaskEvent()
    assert stored_event_to_proto(rows[-1], into) is into
    assert into == streamed[-1]


async def test_a_long_trace_comes_in_full_pages_each_event_once_in_order(
    store: TaskStore,
) -> None:
    lines: list[Payload] = [Stdout(f"line {n}") for n in range(2 * PAGE + 7)]
    task_id, attempt = await running_task(store, lines)
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)

    got = await pages(watch_pages(store, TaskSignals(), task_id, 0))

    seqs = [row["seq"] for page in got for row in page]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [len(page) for page in got][:2] == [PAGE, PAGE]
    assert got[-1][-1]["kind"] == "result"
    assert len(seqs) == len(await trace(store, task_id))
    tail = await pages(watch_pages(store, TaskSignals(), task_id, seqs[-5]))
    assert [row["seq"] for page in tail for row in page] == seqs[-4:]


async def test_a_watch_follows_what_comes_live_and_ends_with_the_result(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, [Stdout("first")])
    signals = TaskSignals()
    watching = watch_pages(store, signals, task_id, 0)
    replayed = await anext(watching)
    assert replayed[-1]["payload"] == {"text": "first"}

    later = asyncio.ensure_future(anext(watching))
    await asyncio.sleep(0.05)
    assert not later.done()  # nothing new: it waits
    last = replayed[-1]["seq"]
    await store.append_many(task_id, attempt, OWNER, AGENT, [Stdout("second")], after_seq=last)
    signals.notify(task_id)
    live = await asyncio.wait_for(later, 0.9)  # woken, not the 1 s poll
    assert [row["payload"] for row in live] == [{"text": "second"}]

    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)
    signals.notify(task_id)
    rest = await pages(watching)
    assert rest[-1][-1]["kind"] == "result"


async def test_a_watch_past_the_end_of_an_ended_task_ends_at_once(store: TaskStore) -> None:
    task_id, attempt = await running_task(store, [])
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)
    last = (await trace(store, task_id))[-1].seq

    assert (
        await asyncio.wait_for(pages(watch_pages(store, TaskSignals(), task_id, last)), 0.9) == []
    )


async def test_a_watcher_leaving_mid_replay_gives_every_connection_back(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id, _ = await running_task(store, [Stdout(f"{n}") for n in range(3 * PAGE)])
    signals = TaskSignals()
    watching = watch_pages(store, signals, task_id, 0)
    await anext(watching)  # a full page: the next one is being read
    await watching.aclose()

    for _ in range(100):
        if pool.get_idle_size() == pool.get_size():
            break
        await asyncio.sleep(0.01)
    assert pool.get_idle_size() == pool.get_size()
    assert not signals._waiters  # unsubscribed
