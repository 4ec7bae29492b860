"""What the events channel tells watchers on other replicas, as PostgreSQL delivers it.

Tasks started or ended by one statement are announced by one notification naming them all
(not one per task: every listening connection got each), split only where a payload would
pass PostgreSQL's 8,000 bytes. A listener hands each named task to its handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentmesh.db.notify import EVENTS_CHANNEL
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.dispatching import listening
from tests.store.test_transitions import AGENT, OWNER

PAYLOAD_LIMIT = 8000  # bytes; PostgreSQL refuses a longer one (and the statement with it)


@pytest.fixture
async def announcements(database_uri: str) -> AsyncIterator[list[str]]:
    """The payloads of the events channel, as they arrive."""
    received: list[str] = []
    conn = await asyncpg.connect(database_uri)
    await conn.add_listener(EVENTS_CHANNEL, lambda *args: received.append(args[3]))
    try:
        yield received
    finally:
        await conn.close()


async def settled(received: list[str]) -> list[str]:
    """What arrived before the marker (delivery is in order); the list is emptied."""
    async with asyncio.timeout(20):
        while "marker" not in received:
            await asyncio.sleep(0.01)
    before = received[: received.index("marker")]
    received.clear()
    return before


async def mark(pool: asyncpg.Pool) -> None:
    await pool.execute("SELECT pg_notify($1, 'marker')", EVENTS_CHANNEL)


async def submitted(store: TaskStore, count: int) -> list[str]:
    return [await store.submit(TaskSpec(kind="echo", prompt=f"t {n}")) for n in range(count)]


async def test_tasks_started_and_ended_together_are_announced_together(
    store: TaskStore, pool: asyncpg.Pool, announcements: list[str]
) -> None:
    ids = await submitted(store, 8)
    await mark(pool)
    assert await settled(announcements) == []  # nobody can watch a task not yet returned

    started = await store.start_attempts(dict.fromkeys(ids, AGENT), OWNER, 60)
    await mark(pool)
    assert [set(payload.split()) for payload in await settled(announcements)] == [set(ids)]

    ends = [
        store.finish_attempt(
            s.task_id, s.attempt, OWNER, AGENT, Result(TaskState.COMPLETED), in_tree=False
        )
        for s in started
    ]
    await asyncio.gather(*ends)
    await mark(pool)
    named = [set(payload.split()) for payload in await settled(announcements)]
    assert set().union(*named) == set(ids)
    assert len(named) < len(ids)  # the group commit ended most of them together


async def test_an_announcement_longer_than_a_payload_may_be_is_split(
    store: TaskStore, pool: asyncpg.Pool, announcements: list[str]
) -> None:
    ids = await submitted(store, 400)  # 400 ids of 22 characters: over 8,000 bytes
    assert sum(len(task_id) + 1 for task_id in ids) > PAYLOAD_LIMIT

    started = await store.start_attempts(dict.fromkeys(ids, AGENT), OWNER, 60)
    await mark(pool)

    payloads = await settled(announcements)
    assert len(started) == len(ids)
    assert len(payloads) == 2
    assert all(len(payload.encode()) < PAYLOAD_LIMIT for payload in payloads)
    named = [task_id for payload in payloads for task_id in payload.split()]
    assert sorted(named) == sorted(ids)


async def test_a_listener_hands_each_task_an_announcement_names_to_its_handler(
    database_uri: str, pool: asyncpg.Pool
) -> None:
    woken: list[str] = []
    async with listening(database_uri, on_events=woken.append):
        await pool.execute("SELECT pg_notify($1, 't-1 t-2 t-3')", EVENTS_CHANNEL)
        async with asyncio.timeout(20):
            while len(woken) < 3:
                await asyncio.sleep(0.01)
    assert woken == ["t-1", "t-2", "t-3"]


class QueueChannel:
    """What a Listener hears on the queue channel, in order: "queued" or "freed"."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    async def next(self) -> str:
        async with asyncio.timeout(20):
            while not self.heard:
                await asyncio.sleep(0.01)
        return self.heard.pop(0)


@pytest.fixture
async def queue_channel(database_uri: str) -> AsyncIterator[QueueChannel]:
    channel = QueueChannel()
    async with listening(
        database_uri,
        on_queue=lambda _payload: channel.heard.append("queued"),
        on_slot_freed=lambda: channel.heard.append("freed"),
    ):
        yield channel


async def test_new_work_wakes_rounds_and_ended_attempts_only_say_their_slots_are_free(
    store: TaskStore, queue_channel: QueueChannel
) -> None:
    """A freed slot needs a round only where a task waits for one (Dispatcher.slot_freed):
    at a steady rate each end woke every replica for a round that found nothing."""
    [task] = await submitted(store, 1)
    assert await queue_channel.next() == "queued"
    [started] = await store.start_attempts({task: AGENT}, OWNER, 60)
    ended = await store.finish_attempt(
        task, started.attempt, OWNER, AGENT, Result(TaskState.COMPLETED), in_tree=False
    )
    assert ended
    assert await queue_channel.next() == "freed"


async def test_a_batch_of_trees_wakes_rounds(store: TaskStore, queue_channel: QueueChannel) -> None:
    """submit_many stores leaves with their own notification; trees need one of their own."""
    tree = TaskSpec(subtasks=(TaskSpec(kind="echo", prompt="a"), TaskSpec(kind="echo", prompt="b")))

    await store.submit_many([tree, tree])

    assert await queue_channel.next() == "queued"
