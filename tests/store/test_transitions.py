"""The task store's transitions against real PostgreSQL, without a scheduler or nodes.

Each test drives `TaskStore` as dispatch would (start an attempt, lose it, finish it,
cancel) and checks the rows a user reads back: the task's state and output, its trace, its
queue row. A write on behalf of an attempt that is no longer current must change nothing.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from agentmesh.errors import FailedPrecondition, NotFound
from agentmesh.scheduler.store import StartedAttempt, TaskStore
from agentmesh.tasks.events import Payload, Result, Stderr, Stdout, TaskEvent
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.conftest import DEFAULT_MAX_ATTEMPTS

OWNER = "scheduler-a"
OTHER = "scheduler-b"
AGENT = "agent-1"
LEASE = 30.0
EXPIRED = -1.0  # a lease that ran out the moment it was granted
ECHO = TaskSpec(kind="echo", prompt="hi")
DONE = Result(TaskState.COMPLETED, output="late output")


async def start(
    store: TaskStore, task_id: str, owner: str = OWNER, lease: float = LEASE
) -> StartedAttempt:
    started = await store.start_attempts({task_id: AGENT}, owner, lease)
    assert [s.task_id for s in started] == [task_id], "the task could not be started"
    return started[0]


async def trace(store: TaskStore, task_id: str) -> list[TaskEvent]:
    return await store.events_after(task_id, 0, 10_000)


async def queue_rows(pool: asyncpg.Pool, *task_ids: str) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id FROM task_queue WHERE task_id = ANY($1::text[]) ORDER BY task_id",
            list(task_ids),
        )
    return [row["task_id"] for row in rows]


async def lease_of(pool: asyncpg.Pool, task_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, attempt, lease_owner, lease_expires_at FROM tasks WHERE id = $1",
            task_id,
        )
    assert row is not None
    return row


async def snapshot(store: TaskStore, task_id: str) -> tuple[object, ...]:
    """Everything a user can read about a task: its row and its trace."""
    record = await store.get(task_id)
    return (
        record.state,
        record.attempt,
        record.output,
        record.error,
        record.exit_code,
        record.finished_at,
        record.last_seq,
        [(e.seq, e.attempt, e.payload) for e in await trace(store, task_id)],
    )


async def lose(store: TaskStore, attempt: StartedAttempt, *, counts: bool = True) -> object:
    return await store.retry_attempt(
        attempt.task_id, attempt.attempt, OWNER, "node lost", backoff_seconds=0.0, counts=counts
    )


# ----------------------------------------------------------------------------- finishing


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
@pytest.mark.parametrize("written_before", [0, 1], ids=["trail-only", "after-a-batch"])
async def test_the_events_not_written_yet_go_in_before_the_result(
    store: TaskStore, in_tree: bool, written_before: int
) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    last_seq = attempt.last_seq
    if written_before:
        last_seq = await store.append_many(
            task_id, attempt.attempt, OWNER, AGENT, [Stdout("early")], after_seq=last_seq
        )
        assert last_seq is not None
    done = Result(TaskState.COMPLETED, output="hi")

    finished = await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, done, in_tree=in_tree,
        trail=[Stdout("one"), Stdout("two")], after_seq=last_seq,
    )  # fmt: skip

    assert finished
    events = await trace(store, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.payload for e in events[attempt.last_seq :]] == [
        *([Stdout("early")] if written_before else []),
        Stdout("one"),
        Stdout("two"),
        done,
    ]
    assert (await store.get(task_id)).last_seq == events[-1].seq


async def test_a_trail_behind_the_trace_is_still_stored_in_order(store: TaskStore) -> None:
    """A trace that moved past what the writer last saw: the tree's way stores the trail
    after it, once."""
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    moved = await store.append_many(
        task_id, attempt.attempt, OWNER, AGENT, [Stdout("early")], after_seq=attempt.last_seq
    )
    assert moved is not None

    finished = await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, DONE, in_tree=False,
        trail=[Stdout("one")], after_seq=attempt.last_seq,
    )  # fmt: skip

    assert finished
    events = await trace(store, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.payload for e in events[attempt.last_seq :]] == [Stdout("early"), Stdout("one"), DONE]


async def test_a_superseded_attempt_s_trail_is_not_stored(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    first = await start(store, task_id)
    await lose(store, first)
    await start(store, task_id)
    before = await snapshot(store, task_id)

    finished = await store.finish_attempt(
        task_id, first.attempt, OWNER, AGENT, DONE, in_tree=False,
        trail=[Stdout("late")], after_seq=first.last_seq,
    )  # fmt: skip

    assert not finished
    assert await snapshot(store, task_id) == before


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
async def test_the_current_attempt_finishes_the_task(store: TaskStore, in_tree: bool) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)

    finished = await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED, output="hi"),
        in_tree=in_tree,
    )  # fmt: skip

    assert finished
    record = await store.get(task_id)
    assert (record.state, record.output) == (TaskState.COMPLETED, "hi")
    assert record.finished_at is not None
    assert [e.payload.KIND for e in await trace(store, task_id)][-1] == "result"


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
async def test_a_late_result_of_a_superseded_attempt_changes_nothing(
    store: TaskStore, pool: asyncpg.Pool, in_tree: bool
) -> None:
    task_id = await store.submit(ECHO)
    first = await start(store, task_id)
    assert await lose(store, first) is TaskState.SUBMITTED
    second = await start(store, task_id)
    assert second.attempt == first.attempt + 1
    before = await snapshot(store, task_id)

    late = await store.finish_attempt(task_id, first.attempt, OWNER, AGENT, DONE, in_tree=in_tree)
    late_events = await store.append_many(
        task_id, first.attempt, OWNER, AGENT, [Stdout("late")], after_seq=second.last_seq
    )

    assert not late
    assert late_events is None
    assert await snapshot(store, task_id) == before
    assert (await lease_of(pool, task_id))["state"] == "working"
    # The current attempt still ends the task.
    assert await store.finish_attempt(task_id, second.attempt, OWNER, AGENT, DONE)


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
async def test_a_result_from_a_scheduler_that_lost_the_lease_changes_nothing(
    store: TaskStore, in_tree: bool
) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id, lease=EXPIRED)
    assert await store.reap_expired_leases(backoff_seconds=0.0) == 1
    before = await snapshot(store, task_id)

    late = await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, DONE, in_tree=in_tree)

    assert not late
    assert await snapshot(store, task_id) == before
    assert (await store.get(task_id)).state is TaskState.SUBMITTED


async def test_a_finished_task_cannot_be_finished_again(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    assert await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED, output="first")
    )
    before = await snapshot(store, task_id)

    again = await store.finish_attempt(
        task_id, attempt.attempt, OWNER, AGENT, Result(TaskState.FAILED, error="second")
    )

    assert not again
    assert await snapshot(store, task_id) == before


async def test_events_of_the_current_attempt_are_stored_in_order(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)

    assert (
        await store.append_many(
            task_id,
            attempt.attempt,
            OWNER,
            AGENT,
            [Stdout("a"), Stdout("b"), Stdout("c")],
            after_seq=attempt.last_seq,
        )
        == attempt.last_seq + 3
    )

    events = await trace(store, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.payload for e in events[-3:]] == [Stdout("a"), Stdout("b"), Stdout("c")]
    assert {e.attempt for e in events[-3:]} == {attempt.attempt}


async def test_a_mixed_batch_sent_again_is_recognised_by_its_last_event(
    store: TaskStore,
) -> None:
    """The reply to a batch was lost and the writer sends it again: the store sees its last
    event where the batch put it and answers as if it wrote it, writing nothing twice."""
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    batch: list[Payload] = [Stdout("out"), Stdout("more"), Stderr("err")]
    first = await store.append_many(
        task_id, attempt.attempt, OWNER, AGENT, batch, after_seq=attempt.last_seq
    )

    again = await store.append_many(
        task_id, attempt.attempt, OWNER, AGENT, batch, after_seq=attempt.last_seq
    )

    assert first == again == attempt.last_seq + 3
    assert [e.payload for e in (await trace(store, task_id))[attempt.last_seq :]] == batch


# ----------------------------------------------------------------------------- attempts


async def test_attempts_never_exceed_max_attempts(store: TaskStore, pool: asyncpg.Pool) -> None:
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=2))

    first = await start(store, task_id)
    assert await lose(store, first) is TaskState.SUBMITTED
    second = await start(store, task_id)
    assert await lose(store, second) is TaskState.FAILED

    record = await store.get(task_id)
    assert record.state is TaskState.FAILED
    assert record.attempt == 2
    assert record.error == "attempt 2 lost (node lost); no attempts left"
    assert await queue_rows(pool, task_id) == []
    assert await store.start_attempts({task_id: AGENT}, OWNER, LEASE) == []
    assert [e.payload for e in await trace(store, task_id)][-1] == Result(
        TaskState.FAILED, error="attempt 2 lost (node lost); no attempts left"
    )


async def test_a_task_of_hundreds_of_attempts_fails_when_its_last_is_lost(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """Attempt numbers are compared as numbers, however high (past the small ints Python
    shares one object for)."""
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=300))
    async with pool.acquire() as conn:  # as after 298 lost attempts
        await conn.execute("UPDATE tasks SET attempt = 298 WHERE id = $1", task_id)

    assert await lose(store, await start(store, task_id)) is TaskState.SUBMITTED
    last = await start(store, task_id)
    assert last.attempt == 300
    assert await lose(store, last) is TaskState.FAILED

    record = await store.get(task_id)
    assert (record.state, record.error) == (
        TaskState.FAILED,
        "attempt 300 lost (node lost); no attempts left",
    )


async def test_the_default_max_attempts_applies_to_tasks_that_name_none(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    outcomes = []
    for _ in range(DEFAULT_MAX_ATTEMPTS):
        outcomes.append(await lose(store, await start(store, task_id)))

    assert outcomes == [TaskState.SUBMITTED] * (DEFAULT_MAX_ATTEMPTS - 1) + [TaskState.FAILED]
    assert (await store.get(task_id)).attempt == DEFAULT_MAX_ATTEMPTS


async def test_a_single_attempt_task_fails_when_its_attempt_is_lost(store: TaskStore) -> None:
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=1))

    assert await lose(store, await start(store, task_id)) is TaskState.FAILED
    assert (await store.get(task_id)).state is TaskState.FAILED


async def test_an_attempt_given_back_does_not_use_up_an_attempt(store: TaskStore) -> None:
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=2))

    for _ in range(3):  # the node was full, three times
        assert await lose(store, await start(store, task_id), counts=False) is TaskState.SUBMITTED
    first_real = await start(store, task_id)
    assert await lose(store, first_real) is TaskState.SUBMITTED
    second_real = await start(store, task_id)
    assert await lose(store, second_real) is TaskState.FAILED

    record = await store.get(task_id)
    assert record.state is TaskState.FAILED
    assert record.attempt == 5  # numbers are never reused
    assert record.error == "attempt 5 lost (node lost); no attempts left"


async def test_a_lost_attempt_is_queued_again_with_its_reason(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)

    assert await lose(store, attempt) is TaskState.SUBMITTED

    record = await store.get(task_id)
    assert record.state is TaskState.SUBMITTED
    assert record.waiting_reason == "node lost"
    assert record.assigned_agent == ""
    assert await queue_rows(pool, task_id) == [task_id]
    lease = await lease_of(pool, task_id)
    assert lease["lease_owner"] is None


async def test_losing_a_superseded_attempt_changes_nothing(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    first = await start(store, task_id)
    await lose(store, first)
    await start(store, task_id)
    before = await snapshot(store, task_id)

    assert await lose(store, first) is None
    assert await snapshot(store, task_id) == before


# ----------------------------------------------------------------------------- leases


async def test_a_lease_taken_over_is_not_renewed_by_its_old_owner(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await store.submit(ECHO)
    old = await start(store, task_id, owner=OWNER, lease=EXPIRED)

    assert await store.reap_expired_leases(backoff_seconds=0.0) == 1
    await store.renew_leases(OWNER, LEASE, [(task_id, old.attempt)])
    reaped = await lease_of(pool, task_id)
    assert (reaped["state"], reaped["lease_owner"], reaped["lease_expires_at"]) == (
        "submitted",
        None,
        None,
    )

    new = await start(store, task_id, owner=OTHER, lease=LEASE)
    taken = await lease_of(pool, task_id)
    for attempt in (old.attempt, new.attempt):
        await store.renew_leases(OWNER, 3600.0, [(task_id, attempt)])

    after = await lease_of(pool, task_id)
    assert after["lease_owner"] == OTHER
    assert after["attempt"] == new.attempt
    assert after["lease_expires_at"] == taken["lease_expires_at"]


async def test_the_owner_renews_its_current_attempt(store: TaskStore, pool: asyncpg.Pool) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id, lease=EXPIRED)

    await store.renew_leases(OWNER, 3600.0, [(task_id, attempt.attempt)])

    assert await store.reap_expired_leases(backoff_seconds=0.0) == 0
    assert (await lease_of(pool, task_id))["state"] == "working"


async def test_a_live_lease_is_not_reaped(store: TaskStore, pool: asyncpg.Pool) -> None:
    task_id = await store.submit(ECHO)
    await start(store, task_id, lease=LEASE)

    assert await store.reap_expired_leases(backoff_seconds=0.0) == 0
    assert (await lease_of(pool, task_id))["lease_owner"] == OWNER


async def test_a_reaped_attempt_counts_toward_max_attempts(store: TaskStore) -> None:
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=1))
    await start(store, task_id, lease=EXPIRED)

    assert await store.reap_expired_leases(backoff_seconds=0.0) == 1
    assert (await store.get(task_id)).state is TaskState.FAILED


async def test_a_lease_renewed_after_the_sweep_read_it_is_not_taken_over(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """The sweep reads the expired leases, then takes each over in a transaction of its own:
    one its scheduler renewed in between is still that scheduler's."""

    class RenewedMeanwhile(TaskStore):
        async def retry_attempt(  # type: ignore[override]
            self, task_id: str, attempt: int, owner: str, reason: str, **options: object
        ) -> object:
            await self.renew_leases(owner, LEASE, [(task_id, attempt)])
            return await super().retry_attempt(task_id, attempt, owner, reason, **options)  # type: ignore[arg-type]

    sweeping = RenewedMeanwhile(pool, default_max_attempts=DEFAULT_MAX_ATTEMPTS)
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id, lease=EXPIRED)

    assert await sweeping.reap_expired_leases(backoff_seconds=0.0) == 0

    row = await lease_of(pool, task_id)
    assert (row["state"], row["attempt"], row["lease_owner"]) == ("working", attempt.attempt, OWNER)


async def test_a_sweep_takes_over_at_most_100_leases_and_the_next_one_the_rest(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    ids = await asyncio.gather(*(store.submit(ECHO) for _ in range(101)))
    started = await store.start_attempts(dict.fromkeys(ids, AGENT), OWNER, EXPIRED)
    assert len(started) == 101

    assert await store.reap_expired_leases(backoff_seconds=0.0) == 100
    assert await store.reap_expired_leases(backoff_seconds=0.0) == 1
    assert await store.reap_expired_leases(backoff_seconds=0.0) == 0
    assert {(await store.get(task_id)).state for task_id in ids} == {TaskState.SUBMITTED}


# ----------------------------------------------------------------------------- cancel


def tree() -> TaskSpec:
    """root → (left → (g1, g2), right): grandchildren two levels below the root."""
    return TaskSpec(
        description="root",
        subtasks=(
            TaskSpec(
                description="left",
                subtasks=(
                    TaskSpec(kind="echo", prompt="g1", description="g1"),
                    TaskSpec(kind="echo", prompt="g2", description="g2"),
                ),
            ),
            TaskSpec(kind="echo", prompt="right", description="right"),
        ),
    )


async def ids_by_description(store: TaskStore, root_id: str) -> dict[str, str]:
    found = {"root": root_id}
    pending = [root_id]
    while pending:
        record = await store.get(pending.pop())
        for child_id in record.child_ids:
            found[(await store.get(child_id)).spec.description] = child_id
            pending.append(child_id)
    return found


async def test_cancel_reaches_every_level(store: TaskStore, pool: asyncpg.Pool) -> None:
    root_id = await store.submit(tree())
    ids = await ids_by_description(store, root_id)
    assert sorted(ids) == ["g1", "g2", "left", "right", "root"]
    running = await start(store, ids["g2"])  # g1 and right stay queued

    was_running = await store.cancel(root_id, "user asked")

    assert was_running == [ids["g2"]]
    for name, task_id in ids.items():
        record = await store.get(task_id)
        assert record.state is TaskState.CANCELED, (name, record.state, record.error)
        assert record.error == "user asked", name
        assert record.finished_at is not None, name
    assert await queue_rows(pool, *ids.values()) == []
    assert (await lease_of(pool, ids["g2"]))["lease_owner"] is None
    async with pool.acquire() as conn:
        statuses = await conn.fetch(
            "SELECT child_task_id, status FROM subtasks WHERE child_task_id = ANY($1::text[])",
            list(ids.values()),
        )
    assert {row["status"] for row in statuses} == {"canceled"}
    # The running grandchild's late result changes nothing.
    before = await snapshot(store, ids["g2"])
    assert not await store.finish_attempt(ids["g2"], running.attempt, OWNER, AGENT, DONE)
    assert await snapshot(store, ids["g2"]) == before
    # Nothing is left to start.
    assert await store.ready(100) == []


async def test_cancel_of_a_middle_task_reaches_its_children(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    root_id = await store.submit(tree())
    ids = await ids_by_description(store, root_id)
    await start(store, ids["g1"])

    await store.cancel(ids["left"], "")

    for name in ("left", "g1", "g2"):
        record = await store.get(ids[name])
        assert (record.state, record.error) == (TaskState.CANCELED, "canceled"), name
    assert await queue_rows(pool, ids["g1"], ids["g2"]) == []
    # A child that did not complete fails its parent, which cancels the rest of the tree.
    root = await store.get(root_id)
    assert (root.state, root.error) == (
        TaskState.FAILED,
        f"subtask {ids['left']} canceled: canceled",
    )
    assert (await store.get(ids["right"])).state is TaskState.CANCELED
    assert await queue_rows(pool, ids["right"]) == []


async def test_cancel_leaves_finished_subtasks_as_they_ended(store: TaskStore) -> None:
    root_id = await store.submit(tree())
    ids = await ids_by_description(store, root_id)
    attempt = await start(store, ids["g1"])
    assert await store.finish_attempt(
        ids["g1"], attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED, output="ok")
    )

    await store.cancel(root_id, "")

    g1 = await store.get(ids["g1"])
    assert (g1.state, g1.output) == (TaskState.COMPLETED, "ok")
    for name in ("g2", "left", "right", "root"):
        assert (await store.get(ids[name])).state is TaskState.CANCELED, name


async def test_cancel_of_a_finished_task_is_refused_and_changes_nothing(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, DONE)
    before = await snapshot(store, task_id)

    with pytest.raises(FailedPrecondition, match="already ended: completed"):
        await store.cancel(task_id, "")

    assert await snapshot(store, task_id) == before


async def test_cancel_of_an_unknown_task(store: TaskStore) -> None:
    with pytest.raises(NotFound):
        await store.cancel("t-nope", "")
