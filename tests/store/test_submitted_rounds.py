"""Rounds that place this replica's own submissions without reading the agents or the queue.

A round that read the whole ready queue and left nothing in it keeps the agents as it read
them; the tasks this replica submits next are handed to its dispatcher when their submit
commits, and the next round places them from that view: its only statement is the claim
and start. Everything else reads again: a task left waiting, a notification from anywhere
else, a view older than `snapshot_seconds`, a poll. Each case here fails if its rule is
broken: a read where none is needed, or a task placed from a view that no longer holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

import asyncpg
import pytest

from agentmesh.access import credentials
from agentmesh.access.credentials import NodeIdentity
from agentmesh.db import notify
from agentmesh.node.card import AgentCard
from agentmesh.scheduler import queries
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.store import ReadyTask, TaskStore
from agentmesh.tasks.model import TaskSpec
from tests.store.dispatching import card, dispatcher_on, hold_attempts, listening
from tests.store.test_round_statements import CountingPool

READS = (queries.SELECT_READY, "FROM agents a")


def reads(counting: CountingPool) -> list[str]:
    """The statements that read the queue or the agents."""
    return [q for _, q in counting.statements if any(read in q for read in READS)]


async def state_of(pool: asyncpg.Pool, task_id: str) -> tuple[str, int]:
    row = await pool.fetchrow("SELECT state, attempt FROM tasks WHERE id = $1", task_id)
    return row["state"], row["attempt"]


@pytest.mark.parametrize(
    ("snapshot_seconds", "read"),
    [(60.0, False), (0.0, True)],
    ids=["the view is fresh: no read", "the view is older than snapshot_seconds: read"],
)
async def test_submissions_after_a_round_that_emptied_the_queue_start_without_a_read(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, snapshot_seconds: float, read: bool
) -> None:
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting),
        [card("a", slots=2), card("b", slots=2)],
        "fresh",
        snapshot_seconds=snapshot_seconds,
    )
    await hold_attempts(dispatcher, monkeypatch)
    try:
        await dispatcher.round()  # reads; the queue is empty
        tasks = [await store.submit(TaskSpec(kind="echo", prompt=f"t {n}")) for n in range(3)]
        counting.statements.clear()

        await dispatcher.next_round()

        assert sorted(task for task, _ in dispatcher.live_attempts()) == sorted(tasks)
        assert bool(reads(counting)) is read
        if not read:
            # The claim and start is the round's one statement.
            assert [q for _, q in counting.statements] == [queries.CLAIM_AND_START]
    finally:
        await dispatcher.stop()
        await channels.close()


@pytest.mark.parametrize("left_by", ["a round that read the queue", "a round of submissions"])
async def test_a_task_left_waiting_starts_before_a_later_submission(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, left_by: str
) -> None:
    """A task that finds no free slot waits in the queue: the rounds after it read the
    queue, in its order, or a later submission would take the slot first."""
    dispatcher, store, channels = await dispatcher_on(
        pool, [card("one", slots=1)], "order", snapshot_seconds=60
    )
    finish = await hold_attempts(dispatcher, monkeypatch)
    try:
        if left_by == "a round that read the queue":
            first = await store.submit(TaskSpec(kind="echo", prompt="runs"))
            waiting = await store.submit(TaskSpec(kind="echo", prompt="waits"))
            await dispatcher.round()
        else:
            await dispatcher.round()
            first = await store.submit(TaskSpec(kind="echo", prompt="runs"))
            await dispatcher.next_round()
            waiting = await store.submit(TaskSpec(kind="echo", prompt="waits"))
            await dispatcher.next_round()
        assert await state_of(pool, waiting) == ("submitted", 0)

        finish.set()
        await dispatcher._attempts[first]
        await pool.execute("UPDATE tasks SET state = 'completed' WHERE id = $1", first)
        finish.clear()
        later = await store.submit(TaskSpec(kind="echo", prompt="later"))
        await dispatcher.next_round()

        assert await state_of(pool, waiting) == ("working", 1)
        assert await state_of(pool, later) == ("submitted", 0)
    finally:
        finish.set()
        await dispatcher.stop()
        await channels.close()


async def test_submissions_handed_over_together_are_placed_by_priority(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, store, channels = await dispatcher_on(
        pool, [card("one", slots=1)], "priority", snapshot_seconds=60
    )
    await hold_attempts(dispatcher, monkeypatch)
    try:
        await dispatcher.round()
        low = await store.submit(TaskSpec(kind="echo", prompt="low", priority=1))
        high = await store.submit(TaskSpec(kind="echo", prompt="high", priority=5))

        await dispatcher.next_round()

        assert dispatcher.live_attempts() == [(high, 1)]
        assert await state_of(pool, low) == ("submitted", 0)
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_submission_a_round_already_started_is_not_placed_again(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that read the queue before the submit returned started the task: handed
    over after that, it is passed over, not claimed again (which would fail, and make the
    round after read everything)."""
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("one", slots=2)], "twice", snapshot_seconds=60
    )
    await hold_attempts(dispatcher, monkeypatch)
    handed: list[ReadyTask] = []
    store.on_queued = handed.extend
    try:
        task = await store.submit(TaskSpec(kind="echo", prompt="once"))
        await dispatcher.round()
        dispatcher.submitted(handed)
        dispatcher._wake.clear()
        counting.statements.clear()

        await dispatcher.next_round()

        assert counting.statements == []
        assert not dispatcher._wake.is_set()
        assert dispatcher.live_attempts() == [(task, 1)]
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_an_attempt_that_ended_frees_its_slot_for_the_next_submission(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept view counts this replica's own ends: a slot freed here is free there."""
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("one", slots=1)], "ends", snapshot_seconds=60
    )
    finish = await hold_attempts(dispatcher, monkeypatch)
    try:
        await dispatcher.round()
        first = await store.submit(TaskSpec(kind="echo", prompt="first"))
        await dispatcher.next_round()
        finish.set()
        await dispatcher._attempts[first]
        # Its end, as the attempt would have recorded it.
        await pool.execute("UPDATE tasks SET state = 'completed' WHERE id = $1", first)
        second = await store.submit(TaskSpec(kind="echo", prompt="second"))
        counting.statements.clear()

        await dispatcher.next_round()

        assert await state_of(pool, second) == ("working", 1)
        assert reads(counting) == []
    finally:
        finish.set()
        await dispatcher.stop()
        await channels.close()


@pytest.mark.parametrize(
    ("own", "read"),
    [(True, False), (False, True)],
    ids=["this replica's submission: no read", "another's: read"],
)
async def test_a_queue_notification_from_elsewhere_makes_the_next_round_read(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, own: bool, read: bool
) -> None:
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("one", slots=4)], "here", snapshot_seconds=60
    )
    await hold_attempts(dispatcher, monkeypatch)
    try:
        await dispatcher.round()
        mine = await store.submit(TaskSpec(kind="echo", prompt="mine"))
        # Another replica's submission: its store tells only its own dispatcher.
        theirs = await TaskStore(pool, default_max_attempts=3, origin="there").submit(
            TaskSpec(kind="echo", prompt="theirs")
        )
        dispatcher.queue_changed(notify.submitted_by("here" if own else "there"))
        counting.statements.clear()

        await dispatcher.next_round()

        assert bool(reads(counting)) is read
        started = {task for task, _ in dispatcher.live_attempts()}
        assert started == ({mine} if own else {mine, theirs})
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_poll_reads_the_queue_whatever_the_view(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that becomes ready with no notification heard (its backoff ran out, or the
    notification was lost) is found by the next poll, however fresh the kept view."""
    dispatcher, _, channels = await dispatcher_on(
        pool, [card("one", slots=4)], "polls", poll_seconds=0.05, snapshot_seconds=3600
    )
    await hold_attempts(dispatcher, monkeypatch)
    running = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(30):
            while dispatcher._slots is None:  # the first round read the agents
                await asyncio.sleep(0.01)
            unheard = await TaskStore(pool, default_max_attempts=3).submit(
                TaskSpec(kind="echo", prompt="unheard")
            )
            while await state_of(pool, unheard) != ("working", 1):
                await asyncio.sleep(0.02)
    finally:
        running.cancel()
        await dispatcher.stop()
        await channels.close()


async def test_an_agent_found_unreachable_is_read_again_before_the_next_placement(
    pool: asyncpg.Pool,
) -> None:
    """A dial that fails marks the agent unreachable: the next submission must not go
    there from the view read before (nothing listens at the cards' endpoint)."""
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("gone", slots=4)], "dials", snapshot_seconds=60
    )
    try:
        await dispatcher.round()
        first = await store.submit(TaskSpec(kind="echo", prompt="dials"))
        await dispatcher.next_round()
        await dispatcher._attempts[first]  # refused: handed back, the agent marked
        second = await store.submit(TaskSpec(kind="echo", prompt="next"))
        counting.statements.clear()

        await dispatcher.next_round()

        assert reads(counting)
        assert await state_of(pool, second) == ("submitted", 0)
    finally:
        await dispatcher.stop()
        await channels.close()


def _replica(pool: asyncpg.Pool, ttl_seconds: float = 60) -> AgentRegistry:
    """Another replica's registry."""
    return AgentRegistry(pool, ttl_seconds=ttl_seconds)


Mark = Callable[[asyncpg.Pool, str], Awaitable[None]]
MARKS: dict[str, Mark] = {
    "offline": lambda pool, agent: _replica(pool).mark_offline(agent),
    "draining": lambda pool, agent: _replica(pool).mark_draining(agent),
    "unreachable": lambda pool, agent: _replica(pool).mark_unreachable(agent),
    # With no time to live, every heartbeat is stale.
    "stale, so offline": lambda pool, _: _replica(pool, ttl_seconds=0).mark_stale_offline(),
}


@pytest.mark.parametrize("mark", MARKS.values(), ids=MARKS.keys())
async def test_an_agent_another_replica_marks_is_read_again_before_the_next_placement(
    database_uri: str,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    mark: Mark,
) -> None:
    """Another replica's mark reaches this one only through the queue channel: the
    marks notify, or this replica's kept view would place the next submission on an agent
    the mesh has given up on."""
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("one", slots=4)], "here", snapshot_seconds=3600
    )
    await hold_attempts(dispatcher, monkeypatch)
    heard: list[str] = []

    def hear(payload: str) -> None:
        heard.append(payload)
        dispatcher.queue_changed(payload)

    try:
        async with listening(database_uri, on_queue=hear):
            await dispatcher.round()  # reads; the queue is empty, so it keeps the view
            await mark(pool, "agent-one")
            async with asyncio.timeout(20):
                while not heard:
                    await asyncio.sleep(0.01)
        task = await store.submit(TaskSpec(kind="echo", prompt="after the mark"))
        counting.statements.clear()

        await dispatcher.next_round()

        assert reads(counting)
        assert await state_of(pool, task) == ("submitted", 0)
    finally:
        await dispatcher.stop()
        await channels.close()


async def told(database_uri: str, pool: asyncpg.Pool, change: Awaitable[object]) -> list[str]:
    """What `change` told the queue channel: the payloads heard before a marker sent after
    it (notifications from one session arrive in commit order)."""
    heard: list[str] = []
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.add_listener(notify.QUEUE_CHANNEL, lambda *args: heard.append(args[3]))
        await change
        await pool.execute("SELECT pg_notify($1, 'marker')", notify.QUEUE_CHANNEL)
        async with asyncio.timeout(20):
            while "marker" not in heard:
                await asyncio.sleep(0.01)
        return heard[: heard.index("marker")]
    finally:
        await conn.close()


async def test_a_mark_that_changes_nothing_tells_nobody(
    database_uri: str, pool: asyncpg.Pool
) -> None:
    """Marking an agent offline twice is one change: the second wakes no replica."""
    registry = AgentRegistry(pool, ttl_seconds=60)
    await registry.heartbeat(card("twice", slots=1), ())
    await registry.mark_offline("agent-twice")

    async def again() -> None:
        await registry.mark_offline("agent-twice")
        await registry.mark_draining("agent-twice")
        await registry.mark_unreachable("agent-twice")

    assert await told(database_uri, pool, again()) == []


async def test_a_heartbeat_that_changes_nothing_placement_reads_tells_nobody(
    database_uri: str, pool: asyncpg.Pool
) -> None:
    """Every node heartbeats every few seconds; only the time and its running tasks change,
    which placement does not read from the agents, so no replica drops its kept view."""
    registry = AgentRegistry(pool, ttl_seconds=60)
    await registry.heartbeat(card("steady", slots=2), ())
    busy = dataclasses.replace(card("steady", slots=2), running_tasks=1)

    assert await told(database_uri, pool, registry.heartbeat(busy, ("task-1",))) == []


def _changed(**fields: object) -> AgentCard:
    return dataclasses.replace(card("changing", slots=2), **fields)


Beat = Callable[[AgentRegistry], Awaitable[object]]
CHANGES: dict[str, tuple[float, Beat]] = {
    "a new agent": (60, lambda r: r.heartbeat(card("new", slots=2), ())),
    "draining": (60, lambda r: r.heartbeat(_changed(draining=True), ())),
    "more slots": (60, lambda r: r.heartbeat(_changed(max_concurrency=3), ())),
    "a capability": (60, lambda r: r.heartbeat(_changed(capabilities=("gpu",)), ())),
    "another endpoint": (60, lambda r: r.heartbeat(_changed(endpoint="127.0.0.1:10"), ())),
    # With no time to live, the last heartbeat is stale: the agent is back.
    "back after going stale": (0, lambda r: r.heartbeat(card("changing", slots=2), ())),
}


@pytest.mark.parametrize(("ttl_seconds", "beat"), CHANGES.values(), ids=CHANGES.keys())
async def test_a_heartbeat_that_changes_what_placement_reads_tells_every_replica(
    database_uri: str, pool: asyncpg.Pool, ttl_seconds: float, beat: Beat
) -> None:
    await AgentRegistry(pool, ttl_seconds=60).heartbeat(card("changing", slots=2), ())
    registry = AgentRegistry(pool, ttl_seconds=ttl_seconds)

    assert await told(database_uri, pool, beat(registry)) == [""]


async def test_a_heartbeat_after_a_mark_tells_every_replica(
    database_uri: str, pool: asyncpg.Pool
) -> None:
    """A node marked offline (or unreachable, then found at another endpoint) that
    heartbeats is back: every replica must read it again."""
    registry = AgentRegistry(pool, ttl_seconds=60)
    await registry.heartbeat(card("back", slots=1), ())
    await registry.mark_offline("agent-back")
    assert await told(database_uri, pool, registry.heartbeat(card("back", slots=1), ())) == [""]

    await registry.mark_unreachable("agent-back")
    # The same endpoint: still unreachable, nothing changed.
    assert await told(database_uri, pool, registry.heartbeat(card("back", slots=1), ())) == []
    moved = dataclasses.replace(card("back", slots=1), endpoint="127.0.0.1:10")
    assert await told(database_uri, pool, registry.heartbeat(moved, ())) == [""]


async def test_a_heartbeat_under_a_new_credential_tells_every_replica(
    database_uri: str, pool: asyncpg.Pool
) -> None:
    """A secured mesh dials an agent only under the credential its row was written with:
    a node that comes back under another is another dial for every replica."""
    registry = AgentRegistry(pool, ttl_seconds=60)
    await registry.heartbeat(card("enrolled", slots=1), ())
    async with pool.acquire() as conn:
        view, _ = await credentials.enroll(conn, f"enrolled-{uuid.uuid4().hex[:8]}")
    identity = NodeIdentity(view.id, view.name, None)
    beat = registry.heartbeat(card("enrolled", slots=1), (), identity)

    assert await told(database_uri, pool, beat) == [""]
