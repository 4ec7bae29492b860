"""Watching a task against real PostgreSQL: its stored trace a page at a time, then what comes
live, until its result; and a stored event streams as the same message as the event read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from agentmesh.rpc.convert import event_to_proto, stored_event_to_proto
from agentmesh.scheduler.notifications import TaskSignals
from agentmesh.scheduler.store import TaskStore
from agentmesh.scheduler.watch import PAGE, POLL_SECONDS, wait_for_end, watch_pages
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


class Reads:
    """The store, counting the watcher's reads of the trace and of the task's state; with
    `ending`, the attempt's result is stored just before the first state read that finds
    nothing new, as if the task ended between the two."""

    def __init__(self, store: TaskStore, ending: tuple[str, int] | None = None) -> None:
        self._store = store
        self.pages: list[int] = []  # the limit of each read of the trace, in order
        self.in_flight = 0
        self._ending = ending

    async def event_rows_after(self, task_id: str, after: int, limit: int) -> list[Any]:
        self.pages.append(limit)
        self.in_flight += 1
        try:
            return await self._store.event_rows_after(task_id, after, limit)
        finally:
            self.in_flight -= 1

    async def state(self, task_id: str) -> Any:
        if self._ending is not None and self.pages:
            task, attempt = self._ending
            self._ending = None
            assert await self._store.finish_attempt(
                task, attempt, OWNER, AGENT, ENDS[0], in_tree=False
            )
        return await self._store.state(task_id)


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

    reads = Reads(store)
    got = await pages(watch_pages(reads, TaskSignals(), task_id, 0))  # type: ignore[arg-type]

    assert reads.pages == [PAGE, PAGE, PAGE]  # and no more: it stops at the result
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


async def test_a_watch_goes_on_past_refusals_errors_and_diagnostics_to_the_result(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, EVERY_KIND)
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)

    got = [
        row["kind"]
        for page in await pages(watch_pages(store, TaskSignals(), task_id, 0))
        for row in page
    ]

    assert got == [event.payload.KIND for event in await trace(store, task_id)]
    assert got[-1] == "result"


async def test_the_next_page_is_read_while_a_full_one_is_sent_and_only_then(
    store: TaskStore,
) -> None:
    task_id, _ = await running_task(store, [Stdout(f"{n}") for n in range(PAGE + 3)])
    reads = Reads(store)
    watching = watch_pages(reads, TaskSignals(), task_id, 0)  # type: ignore[arg-type]

    first = await anext(watching)
    await asyncio.sleep(0.05)
    assert len(first) == PAGE
    assert reads.pages == [PAGE, PAGE]  # the second page is read ahead
    second = await anext(watching)
    assert len(second) < PAGE
    later = asyncio.ensure_future(anext(watching))
    await asyncio.sleep(0.05)
    assert reads.pages == [PAGE, PAGE, PAGE]  # a short page: nothing read ahead, one read
    later.cancel()  # the watcher leaves: that ends the generator
    with contextlib.suppress(asyncio.CancelledError):
        await later


async def test_a_watch_that_read_ahead_and_found_nothing_yet_still_follows_to_the_result(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, [Stdout(f"{n}") for n in range(PAGE - 1)])
    signals = TaskSignals()
    watching = watch_pages(store, signals, task_id, 0)
    first = await anext(watching)
    assert len(first) == PAGE  # the `submitted` and `working` events and PAGE - 1 lines
    await asyncio.sleep(0.05)  # what it read ahead is empty
    last = first[-1]["seq"]
    await store.append_many(task_id, attempt, OWNER, AGENT, [Stdout("late")], after_seq=last)
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)
    signals.notify(task_id)

    rest = [row for page in await asyncio.wait_for(pages(watching), 5) for row in page]
    assert [row["kind"] for row in rest] == ["stdout", "result"]


async def test_a_result_stored_between_the_last_read_and_the_state_is_not_missed(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, [Stdout("only")])
    last = (await trace(store, task_id))[-1].seq
    reads = Reads(store, ending=(task_id, attempt))

    got = await asyncio.wait_for(
        pages(watch_pages(reads, TaskSignals(), task_id, last)),  # type: ignore[arg-type]
        5,
    )

    assert [row["kind"] for page in got for row in page] == ["result"]


async def test_without_a_notification_new_events_come_with_the_next_poll_and_no_sooner(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, [Stdout("first")])
    reads = Reads(store)
    watching = watch_pages(reads, TaskSignals(), task_id, 0)  # type: ignore[arg-type]
    await anext(watching)
    later = asyncio.ensure_future(anext(watching))
    await asyncio.sleep(0.3)
    idle_reads = len(reads.pages)
    last = (await trace(store, task_id))[-1].seq
    await store.append_many(task_id, attempt, OWNER, AGENT, [Stdout("unannounced")], after_seq=last)
    started = time.monotonic()

    live = await asyncio.wait_for(later, POLL_SECONDS + 2)

    assert [row["payload"] for row in live] == [{"text": "unannounced"}]
    assert idle_reads <= 3  # it waited, not read again and again
    assert time.monotonic() - started < POLL_SECONDS + 1.5
    await watching.aclose()


async def test_a_watcher_leaving_while_a_page_is_read_ahead_logs_nothing(
    store: TaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    task_id, _ = await running_task(store, [Stdout(f"{n}") for n in range(3 * PAGE)])
    watching = watch_pages(store, TaskSignals(), task_id, 0)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        await anext(watching)
        await watching.aclose()
        await asyncio.sleep(0.1)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_waiting_for_the_end_returns_when_the_task_ends_or_when_the_time_is_up(
    store: TaskStore,
) -> None:
    task_id, attempt = await running_task(store, [])
    signals = TaskSignals()
    started = time.monotonic()
    await wait_for_end(store, signals, task_id, 0.3)
    assert 0.25 < time.monotonic() - started < 0.9  # the time is up: the task still runs

    waiting = asyncio.ensure_future(wait_for_end(store, signals, task_id, 30))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, ENDS[0], in_tree=False)
    signals.notify(task_id)
    await asyncio.wait_for(waiting, 0.9)
    assert signals._waiters == {}
