"""Submissions stored already started: the submit's statement is the task's claim and start.

When the next round would place this replica's submissions from the agents as the last round
read them (see test_submitted_rounds), the dispatcher chooses their agents before the submit
stores them (Dispatcher.place_new), and the statement that stores a task stores it started
there, its attempt leased to this replica and its queue row claimed: a task's whole trip
through the database is its submit and its end. Each case fails if its rule is broken: a task
stored started where a round would not have placed it, a slot counted twice or never given
back, or a started task that nobody streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import asyncpg
import pytest

from agentmesh.db import notify
from agentmesh.scheduler import queries
from agentmesh.scheduler.dispatch import Dispatcher
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskKind, TaskSpec, TaskState
from tests.store.dispatching import card, dispatcher_on, hold_attempts, listening
from tests.store.test_round_statements import CountingPool
from tests.store.test_submitted_rounds import state_of


@contextlib.asynccontextmanager
async def placing(
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    *,
    slots: int,
    snapshot_seconds: float = 60,
    owner: str = "placing",
) -> AsyncIterator[tuple[Dispatcher, TaskStore]]:
    """A dispatcher whose store asks it to place new tasks, as the scheduler's does, after
    a first round that read the (empty) queue; its attempts hold their slots."""
    dispatcher, store, channels = await dispatcher_on(
        pool, [card("one", slots=slots)], owner, snapshot_seconds=snapshot_seconds
    )
    store.placer = dispatcher.place_new
    await hold_attempts(dispatcher, monkeypatch)
    try:
        await dispatcher.round()
        yield dispatcher, store
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_submission_is_stored_started_in_one_statement(
    database_uri: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingPool(pool)
    heard: list[str] = []
    async with (
        placing(cast(asyncpg.Pool, counting), monkeypatch, slots=2) as (dispatcher, store),
        listening(database_uri, on_queue=heard.append),
    ):
        counting.statements.clear()
        record = await store.submit_and_get(TaskSpec(kind="echo", prompt="at once"))

        # Its one statement stored it started, and its attempt streams already.
        assert [q for _, q in counting.statements] == [queries.SUBMIT_STARTED_LEAVES]
        assert (record.state.value, record.attempt, record.assigned_agent) == (
            "working",
            1,
            "agent-one",
        )
        assert dispatcher.live_attempts() == [(record.id, 1)]
        row = await pool.fetchrow(
            "SELECT lease_owner, lease_expires_at > now() AS leased, started_at,"
            " created_at, last_seq FROM tasks WHERE id = $1",
            record.id,
        )
        assert (row["lease_owner"], row["leased"], row["last_seq"]) == ("placing", True, 2)
        assert row["started_at"] == row["created_at"]
        queue = await pool.fetchrow(
            "SELECT claimed, claimed_by FROM task_queue WHERE task_id = $1", record.id
        )
        assert (queue["claimed"], queue["claimed_by"]) == (True, "placing")
        trace = await pool.fetch(
            "SELECT seq, attempt, payload->>'message' AS message FROM task_events"
            " WHERE task_id = $1 ORDER BY seq",
            record.id,
        )
        assert [(e["seq"], e["attempt"], e["message"]) for e in trace] == [
            (1, 0, "submitted"),
            (2, 1, "attempt 1 placed on agent-one"),
        ]
        # Its statement announced it, as every submit does (another replica's view of the
        # agent no longer holds), and this replica, which knows, ignores its own announcement.
        await pool.execute(f"NOTIFY {notify.QUEUE_CHANNEL}, 'after'")
        async with asyncio.timeout(20):
            while "after" not in heard:
                await asyncio.sleep(0.01)
        assert heard == [notify.submitted_by("placing"), "after"]
        dispatcher.queue_changed(heard[0])
        assert not dispatcher._wake.is_set()
        counting.statements.clear()
        await dispatcher.next_round()
        assert counting.statements == []


async def test_a_replica_does_not_place_on_an_agent_another_filled_meanwhile(
    database_uri: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas, one agent with one slot, both views fresh: a task one replica stores
    started fills the agent, and the other, told by the statement, queues its next task
    instead of storing it started on the full agent (where the node would refuse it, and it
    would wait out a retry)."""
    async with (
        placing(pool, monkeypatch, slots=1, owner="first") as (_, first_store),
        placing(pool, monkeypatch, slots=1, owner="second") as (second, second_store),
        listening(database_uri, on_queue=second.queue_changed),
    ):
        second._wake.clear()
        filled = await first_store.submit_and_get(TaskSpec(kind="echo", prompt="first"))
        assert (filled.state.value, filled.assigned_agent) == ("working", "agent-one")
        async with asyncio.timeout(20):
            await second._wake.wait()
        later = await second_store.submit_and_get(TaskSpec(kind="echo", prompt="second"))
        assert (later.state.value, later.assigned_agent) == ("submitted", "")
        assert second.live_attempts() == []


Makes = Callable[[Dispatcher], Any]
QUEUED_WHEN: dict[str, tuple[float, Makes]] = {
    # The view is older than snapshot_seconds.
    "the view is stale": (0.0, lambda dispatcher: None),
    # Something changed that only a read would show.
    "a read is due": (60.0, lambda dispatcher: dispatcher.wake()),
    # Another replica's submission was announced.
    "another replica queued a task": (
        60.0,
        lambda dispatcher: dispatcher.queue_changed(notify.submitted_by("elsewhere")),
    ),
    # A round is under way: its view is about to replace this one.
    "a round is under way": (60.0, lambda dispatcher: setattr(dispatcher, "_in_round", True)),
}


@pytest.mark.parametrize("case", QUEUED_WHEN.values(), ids=QUEUED_WHEN.keys())
async def test_a_submission_is_queued_when_the_view_may_not_hold(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, case: tuple[float, Makes]
) -> None:
    snapshot_seconds, make = case
    async with placing(pool, monkeypatch, slots=2, snapshot_seconds=snapshot_seconds) as (
        dispatcher,
        store,
    ):
        make(dispatcher)
        task = await store.submit(TaskSpec(kind="echo", prompt="queued"))

        assert await state_of(pool, task) == ("submitted", 0)
        assert dispatcher.live_attempts() == []
        dispatcher._in_round = False
        await dispatcher.next_round()  # the round places it
        assert await state_of(pool, task) == ("working", 1)


async def test_a_task_queued_before_waits_no_later_submission_jumps_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a submission is queued (here, for want of a slot), the next go to the queue
    behind it until a round reads it, even when a slot frees meanwhile."""
    async with placing(pool, monkeypatch, slots=1) as (dispatcher, store):
        first = await store.submit(TaskSpec(kind="echo", prompt="first"))
        waiting = await store.submit(TaskSpec(kind="echo", prompt="waits"))
        assert await state_of(pool, first) == ("working", 1)
        assert await state_of(pool, waiting) == ("submitted", 0)
        # The slot is free again, as far as the view knows.
        dispatcher._slots = {
            agent_id: dataclasses.replace(slot, running=0)
            for agent_id, slot in (dispatcher._slots or {}).items()
        }

        later = await store.submit(TaskSpec(kind="echo", prompt="later"))

        assert await state_of(pool, later) == ("submitted", 0)


async def test_a_gemini_task_is_queued_for_its_key(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with placing(pool, monkeypatch, slots=2) as (_, store):
        task = await store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="needs a key"))
        assert await state_of(pool, task) == ("submitted", 0)
        echo = await store.submit(TaskSpec(kind="echo", prompt="behind it"))
        assert await state_of(pool, echo) == ("submitted", 0)


async def test_submissions_stored_together_are_placed_by_priority(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One statement for both (a group commit), one slot: the higher priority starts."""
    counting = CountingPool(pool)
    async with placing(cast(asyncpg.Pool, counting), monkeypatch, slots=1) as (dispatcher, store):
        counting.statements.clear()
        low, high = await asyncio.gather(
            store.submit(TaskSpec(kind="echo", prompt="low", priority=1)),
            store.submit(TaskSpec(kind="echo", prompt="high", priority=5)),
        )

        assert [q for _, q in counting.statements] == [queries.SUBMIT_STARTED_LEAVES]
        assert dispatcher.live_attempts() == [(high, 1)]
        assert await state_of(pool, low) == ("submitted", 0)


async def test_a_round_during_a_submit_counts_the_slots_it_took(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that reads the agents while a submit stores its task started (its row not
    yet visible) must not give that slot to a queued task as well."""
    async with placing(pool, monkeypatch, slots=1) as (dispatcher, _):
        placement = dispatcher.place_new([TaskSpec(kind="echo", prompt="being stored")])
        assert placement is not None
        assert placement.agents == ["agent-one"]
        queued = await TaskStore(pool, default_max_attempts=3).submit(
            TaskSpec(kind="echo", prompt="in the queue")
        )

        await dispatcher.round()

        assert await state_of(pool, queued) == ("submitted", 0)
        placement.not_started(["never-stored"])  # its submit failed: the slot is free again
        await dispatcher.next_round()
        assert await state_of(pool, queued) == ("working", 1)


async def test_a_submit_that_fails_gives_its_slots_back(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("the connection was lost")

    async with placing(pool, monkeypatch, slots=1) as (dispatcher, store):
        with monkeypatch.context() as patched:
            patched.setattr(store, "_insert_leaves", broken)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                await store.submit(TaskSpec(kind="echo", prompt="lost"))

        assert dispatcher.live_attempts() == []
        assert not dispatcher._placing
        assert [slot.running for slot in (dispatcher._slots or {}).values()] == [0]
        # What happened is unknown: the next submission waits for a round that reads.
        task = await store.submit(TaskSpec(kind="echo", prompt="next"))
        assert await state_of(pool, task) == ("submitted", 0)
        await dispatcher.next_round()
        assert await state_of(pool, task) == ("working", 1)


@pytest.mark.parametrize(
    "after", ["an error", "a cancel"], ids=["the connection lost", "the caller gone"]
)
async def test_a_submit_that_committed_but_failed_gives_its_task_back_unspent(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    """The statement committed, but its answer was lost (or the submit was cancelled): the
    task stands started and leased, and nobody streams it. It is handed back at once
    without using an attempt, so that even a task allowed one attempt still runs it."""
    async with placing(pool, monkeypatch, slots=1) as (dispatcher, store):
        original = store._insert_leaves

        async def lost_answer(*args: Any) -> Any:
            await original(*args)
            if after == "a cancel":
                raise asyncio.CancelledError
            raise asyncpg.exceptions.ConnectionDoesNotExistError("the connection was lost")

        with monkeypatch.context() as patched:
            patched.setattr(store, "_insert_leaves", lost_answer)
            with pytest.raises(
                (asyncpg.exceptions.ConnectionDoesNotExistError, asyncio.CancelledError)
            ):
                await store.submit(TaskSpec(kind="echo", prompt="unanswered", max_attempts=1))
        (task,) = await pool.fetch("SELECT id FROM tasks WHERE spec->>'prompt' = 'unanswered'")
        await asyncio.gather(*dispatcher._giving_back)

        assert dispatcher.live_attempts() == []
        assert await state_of(pool, task["id"]) == ("submitted", 1)
        await dispatcher.next_round()
        assert dispatcher.live_attempts() == [(task["id"], 2)]


async def test_a_submit_that_commits_while_the_dispatcher_stops_gives_its_task_back(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing streams after the dispatcher stopped: the task goes back to the queue, for
    another replica, without using an attempt; nothing is placed after."""
    async with placing(pool, monkeypatch, slots=2) as (dispatcher, store):
        original = store._insert_leaves

        async def stopped_meanwhile(*args: Any) -> Any:
            await dispatcher.stop()
            return await original(*args)

        monkeypatch.setattr(store, "_insert_leaves", stopped_meanwhile)
        task = await store.submit(TaskSpec(kind="echo", prompt="late", max_attempts=1))
        await asyncio.gather(*dispatcher._giving_back)

        assert dispatcher.live_attempts() == []
        assert await state_of(pool, task) == ("submitted", 1)
        assert [slot.running for slot in (dispatcher._slots or {}).values()] == [0]
        assert dispatcher.place_new([TaskSpec(kind="echo", prompt="after the stop")]) is None


async def test_a_hand_back_waiting_for_the_database_does_not_hold_up_the_stop(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with placing(pool, monkeypatch, slots=1) as (dispatcher, store):

        async def outage(*args: Any, **kwargs: Any) -> None:
            await asyncio.Event().wait()  # the database does not answer

        monkeypatch.setattr(store, "retry_attempt", outage)
        placement = dispatcher.place_new([TaskSpec(kind="echo", prompt="unanswered")])
        assert placement is not None
        placement.not_started(["maybe-stored"])
        assert dispatcher._giving_back

        async with asyncio.timeout(30):
            await dispatcher.stop()
        assert all(task.done() for task in dispatcher._giving_back)


async def test_a_gemini_task_first_in_a_batch_keeps_the_tasks_after_it_queued(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round would give the slot to the gemini task (its key permitting): a lower
    priority task of the same batch must not take it first."""
    async with placing(pool, monkeypatch, slots=1) as (_, store):
        gemini, echo = await asyncio.gather(
            store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="first", priority=5)),
            store.submit(TaskSpec(kind="echo", prompt="after it", priority=1)),
        )

        assert await state_of(pool, gemini) == ("submitted", 0)
        assert await state_of(pool, echo) == ("submitted", 0)


async def test_the_trip_of_a_task_stored_started_is_its_submit_and_its_end(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submitted, streamed and ended without a round: two statements in all. Its slot is
    free after it, for the next submission and for a round that reads the agents."""
    counting = CountingPool(pool)
    dispatcher, store, channels = await dispatcher_on(
        cast(asyncpg.Pool, counting), [card("one", slots=1)], "trip", snapshot_seconds=60
    )
    store.placer = dispatcher.place_new

    async def ends(attempt: Any, agent: Any, key: Any) -> None:
        await store.finish_attempt(
            attempt.task_id,
            attempt.attempt,
            "trip",
            agent.agent_id,
            Result(TaskState.COMPLETED, output="done"),
            in_tree=False,  # a task without a parent, as the dispatcher ends it
        )

    monkeypatch.setattr(dispatcher._runner, "run", ends)
    try:
        await dispatcher.round()
        counting.statements.clear()
        task = await store.submit(TaskSpec(kind="echo", prompt="whole trip"))
        await dispatcher._attempts[task]

        assert [q for _, q in counting.statements] == [
            queries.SUBMIT_STARTED_LEAVES,
            queries.FINISH_ROOT_ATTEMPTS,
        ]
        assert await state_of(pool, task) == ("completed", 1)
        assert await pool.fetchval("SELECT count(*) FROM task_queue WHERE task_id = $1", task) == 0
        following = await store.submit(TaskSpec(kind="echo", prompt="stored started too"))
        await dispatcher._attempts[following]
        assert await state_of(pool, following) == ("completed", 1)
        # One queued, and a round that reads the agents: the slot is free there too.
        dispatcher.wake()
        queued = await store.submit(TaskSpec(kind="echo", prompt="queued"))
        await dispatcher.next_round()
        await dispatcher._attempts[queued]
        assert await state_of(pool, queued) == ("completed", 1)
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_task_stored_started_whose_replica_vanished_runs_again_once(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its replica stopped before streaming it (the process died after the commit): the
    lease runs out, and the task is queued again and placed as its second attempt, once."""
    async with placing(pool, monkeypatch, slots=1) as (_, store):
        task = await store.submit(TaskSpec(kind="echo", prompt="orphaned"))
        assert await state_of(pool, task) == ("working", 1)
    # That replica is gone; its lease runs out.
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1", task
    )
    other, other_store, channels = await dispatcher_on(
        pool, [card("one", slots=1)], "survivor", snapshot_seconds=60
    )
    await hold_attempts(other, monkeypatch)
    try:
        assert await other_store.reap_expired_leases(backoff_seconds=0.0) == 1
        assert await state_of(pool, task) == ("submitted", 1)
        await other.round()
        assert await state_of(pool, task) == ("working", 2)
        assert other.live_attempts() == [(task, 2)]
        assert await other_store.reap_expired_leases(backoff_seconds=0.0) == 0
        trace = await pool.fetch(
            "SELECT payload->>'message' AS message FROM task_events"
            " WHERE task_id = $1 ORDER BY seq",
            task,
        )
        assert [e["message"] for e in trace][1:] == [
            "attempt 1 placed on agent-one",
            "attempt 1 lost: lease of scheduler placing expired; retrying in 0s",
            "attempt 2 placed on agent-one",
        ]
    finally:
        await other.stop()
        await channels.close()
