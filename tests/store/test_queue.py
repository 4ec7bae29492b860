"""The queue as dispatch uses it: the window, parking, starting attempts, handing them back.

Each test checks what a user or the next dispatch round sees: which tasks are ready and in
what order, the waiting reason `GetTask` shows, where an attempt runs, the task's state.
"""

from __future__ import annotations

import asyncio

import asyncpg

from agentmesh.scheduler.queries import PARKED_FOR_AGENT, PARKED_FOR_KEY
from agentmesh.scheduler.store import TaskStore, summarize_children
from agentmesh.tasks.events import Refusal, Result, Status
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import AGENT, LEASE, OTHER, OWNER, lease_of, start, trace

ECHO = TaskSpec(kind="echo", prompt="hi")


async def ready_ids(store: TaskStore, limit: int = 100) -> list[str]:
    return [t.task_id for t in await store.ready(limit)]


# ----------------------------------------------------------------------------- the window


async def test_the_window_is_in_priority_order_then_arrival(store: TaskStore) -> None:
    low = await store.submit(TaskSpec(kind="echo", prompt="low", priority=-1))
    first = await store.submit(ECHO)
    urgent = await store.submit(TaskSpec(kind="echo", prompt="urgent", priority=5))
    second = await store.submit(ECHO)

    assert await ready_ids(store) == [urgent, first, second, low]
    assert await ready_ids(store, limit=2) == [urgent, first]


async def test_the_window_reads_on_after_a_position(store: TaskStore) -> None:
    ids = [await store.submit(TaskSpec(kind="echo", prompt="hi", priority=p)) for p in (1, 1, 0)]
    head = await store.ready(1)

    after_head = await store.ready(10, after=head[0].position)
    after_second = await store.ready(10, after=after_head[0].position)

    assert [t.task_id for t in after_head] == ids[1:]
    assert [t.task_id for t in after_second] == ids[2:]
    assert await store.ready(10, after=after_second[0].position) == []


async def test_started_and_finished_tasks_leave_the_window(store: TaskStore) -> None:
    running = await store.submit(ECHO)
    waiting = await store.submit(ECHO)

    attempt = await start(store, running)
    assert await ready_ids(store) == [waiting]
    await store.finish_attempt(running, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED))
    assert await ready_ids(store) == [waiting]


async def test_waiting_reasons_are_shown_for_waiting_tasks_only(store: TaskStore) -> None:
    waiting = await store.submit(ECHO)
    running = await store.submit(ECHO)
    await start(store, running)

    await store.set_waiting_reasons({waiting: "all 2 fitting agents are busy", running: "x"})
    await store.set_waiting_reasons({})

    assert (await store.get(waiting)).waiting_reason == "all 2 fitting agents are busy"
    assert (await store.get(running)).waiting_reason == ""
    assert [t.waiting_reason for t in await store.ready(10)] == ["all 2 fitting agents are busy"]


async def test_a_waiting_reason_never_waits_for_a_row_another_transaction_holds(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    # Two replicas explaining the same queue, each locking rows in its own order, once
    # deadlocked: a round failed after it had started attempts, which then ran twice.
    held, free = await store.submit(ECHO), await store.submit(ECHO)
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", held)

        # Generous: a statement that waits for the lock waits until the transaction ends.
        await asyncio.wait_for(
            store.set_waiting_reasons({held: "the only fitting agent (a) is busy", free: "b"}),
            timeout=20,
        )

    assert (await store.get(free)).waiting_reason == "b"
    assert (await store.get(held)).waiting_reason == ""  # the next round explains it


# ----------------------------------------------------------------------------- parking


async def test_parked_tasks_wait_with_their_reason_until_their_cause_changes(
    store: TaskStore,
) -> None:
    gpu = await store.submit(TaskSpec(kind="echo", prompt="gpu", required_capabilities=("gpu",)))
    gemini = await store.submit(TaskSpec(kind="gemini", prompt="hi"))
    plain = await store.submit(ECHO)

    assert await store.park({}, PARKED_FOR_AGENT) == 0
    assert await store.park({gpu: "no online agent has capability gpu"}, PARKED_FOR_AGENT) == 1
    assert await store.park({gemini: "no API key is free"}, PARKED_FOR_KEY) == 1
    assert await ready_ids(store) == [plain]
    assert (await store.get(gpu)).waiting_reason == "no online agent has capability gpu"
    assert (await store.get(gemini)).waiting_reason == "no API key is free"

    await store.unpark(PARKED_FOR_KEY)
    assert await ready_ids(store) == [gemini, plain]
    await store.unpark(PARKED_FOR_AGENT, PARKED_FOR_KEY)
    assert await ready_ids(store) == [gpu, gemini, plain]


async def test_a_running_task_is_never_parked(store: TaskStore) -> None:
    running = await store.submit(ECHO)
    await start(store, running)

    assert await store.park({running: "no online agent"}, PARKED_FOR_AGENT) == 0
    assert (await store.get(running)).waiting_reason == ""


async def test_tasks_that_will_never_run_end_while_they_wait_and_no_others(
    store: TaskStore,
) -> None:
    """Dispatch ends queued tasks nothing will ever run (rejected, or waited too long); one
    that started, ended or began waiting for its user meanwhile is left as it is."""
    rejected = await store.submit(ECHO)
    late = await store.submit(ECHO)
    started = await store.submit(ECHO)
    await start(store, started)
    canceled = await store.submit(ECHO)
    await store.cancel(canceled, "not needed")
    asking = await store.submit(ECHO)
    refused = await start(store, asking)
    refusal = Refusal("mkdir x", "writes-outside", "weak", "x is outside", approvable=True)
    assert await store.await_approval(asking, refused.attempt, OWNER, refusal)
    no_agent = Result(TaskState.REJECTED, error="no agent runs kind echo")
    too_long = Result(TaskState.FAILED, error="waited 600s for an agent")

    await store.end_waiting(
        {
            rejected: no_agent,
            late: too_long,
            started: no_agent,
            canceled: no_agent,
            asking: no_agent,
            "t-nope": no_agent,
        }
    )

    for task_id, result in ((rejected, no_agent), (late, too_long)):
        record = await store.get(task_id)
        assert (record.state, record.error) == (result.state, result.error)
        assert (await trace(store, task_id))[-1].payload == result
    assert (await store.get(started)).state is TaskState.WORKING
    assert (await store.get(asking)).state is TaskState.INPUT_REQUIRED
    assert ((await store.get(canceled)).state, (await store.get(canceled)).error) == (
        TaskState.CANCELED,
        "not needed",
    )
    assert await ready_ids(store) == []


# ----------------------------------------------------------------------------- attempts


async def test_an_attempt_starts_on_its_agent_and_says_where(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await store.submit(TaskSpec(kind="echo", prompt="hi", user="ana"))

    (attempt,) = await store.start_attempts({task_id: AGENT}, OWNER, LEASE)

    assert (attempt.task_id, attempt.attempt, attempt.agent_id) == (task_id, 1, AGENT)
    assert (attempt.user, attempt.parent_id, attempt.spec) == (
        "ana",
        "",
        (await store.get(task_id)).spec,
    )
    record = await store.get(task_id)
    assert (record.state, record.assigned_agent, record.attempt) == (TaskState.WORKING, AGENT, 1)
    assert record.started_at is not None
    assert attempt.last_seq == record.last_seq == 2
    assert [e.payload for e in await trace(store, task_id)][-1] == Status(
        TaskState.WORKING, f"attempt 1 placed on {AGENT}"
    )
    assert await store.running_per_agent() == {AGENT: 1}
    assert (await lease_of(pool, task_id))["lease_owner"] == OWNER


async def test_nothing_to_place_starts_nothing(store: TaskStore) -> None:
    await store.submit(ECHO)

    assert await store.start_attempts({}, OWNER, LEASE) == []
    assert await store.running_per_agent() == {}


async def test_a_task_claimed_by_another_replica_is_not_started_twice(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    await start(store, task_id, owner=OTHER)

    assert await store.start_attempts({task_id: "agent-2"}, OWNER, LEASE) == []
    assert (await store.get(task_id)).assigned_agent == AGENT


async def test_a_task_cancelled_after_the_window_was_read_does_not_start(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await store.submit(ECHO)
    other = await store.submit(ECHO)
    await store.ready(10)
    async with pool.acquire() as conn:  # ended behind the queue's back, its row still there
        await conn.execute("UPDATE tasks SET state = 'canceled' WHERE id = $1", task_id)

    started = await store.start_attempts({task_id: AGENT, other: AGENT}, OWNER, LEASE)

    assert [s.task_id for s in started] == [other]
    assert (await store.get(task_id)).state is TaskState.CANCELED
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM task_queue WHERE task_id = $1", task_id) == 0
        )


async def test_the_api_key_an_attempt_uses_is_recorded(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    gemini = await store.submit(TaskSpec(kind="gemini", prompt="hi"))
    echo = await store.submit(ECHO)

    async def keys(conn: object, claimed: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
        return claimed, {gemini: 42}  # what the dispatcher's key reservation returns

    await store.start_attempts({gemini: AGENT, echo: AGENT}, OWNER, LEASE, keys)

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, api_key_id FROM tasks")
    assert {row["id"]: row["api_key_id"] for row in rows} == {gemini: 42, echo: None}


async def test_what_the_placement_step_moves_drops_or_finds_ended_starts_accordingly(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """Dispatch's key step (`prepare`) sees the claimed placements in the start's transaction:
    a task it moves starts where it says, one it drops stays queued for the next round, and
    one that ended meanwhile neither starts nor stays queued."""
    moved = await store.submit(TaskSpec(kind="gemini", prompt="moved"))
    dropped = await store.submit(TaskSpec(kind="gemini", prompt="no key"))
    ended = await store.submit(ECHO)
    root = await store.submit(TaskSpec(subtasks=(ECHO,)))
    (child,) = (await store.get(root)).child_ids
    claimed_by_other = await store.submit(ECHO)
    await start(store, claimed_by_other, owner=OTHER)
    async with pool.acquire() as conn:  # ended behind the queue's back, its row still there
        await conn.execute("UPDATE tasks SET state = 'canceled' WHERE id = $1", ended)
    seen: list[dict[str, str]] = []

    async def keys(conn: object, claimed: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
        seen.append(dict(claimed))
        placements = {t: a for t, a in claimed.items() if t != dropped}
        return {**placements, moved: "agent-2"}, {moved: 42}

    placed = {moved: AGENT, dropped: AGENT, ended: AGENT, child: AGENT, claimed_by_other: AGENT}
    started = await store.start_attempts(placed, OWNER, LEASE, keys)

    assert seen == [{moved: AGENT, dropped: AGENT, ended: AGENT, child: AGENT}]
    assert {(s.task_id, s.agent_id, s.parent_id) for s in started} == {
        (moved, "agent-2", ""),
        (child, AGENT, root),
    }
    assert (await store.get(moved)).assigned_agent == "agent-2"
    assert (await store.get(dropped)).state is TaskState.SUBMITTED
    assert (await store.get(ended)).state is TaskState.CANCELED
    assert await ready_ids(store) == [dropped]
    async with pool.acquire() as conn:
        key_ids = dict(await conn.fetch("SELECT id, api_key_id FROM tasks WHERE id = $1", moved))
        queued = {r["task_id"] for r in await conn.fetch("SELECT task_id FROM task_queue")}
        subtask = await conn.fetchrow(
            "SELECT status, assigned_host FROM subtasks WHERE child_task_id = $1", child
        )
    assert key_ids == {moved: 42}
    assert ended not in queued
    assert tuple(subtask) == ("working", AGENT)
    # Nothing claimed (another replica holds it): the step is not even asked.
    assert await store.start_attempts({claimed_by_other: AGENT}, OWNER, LEASE, keys) == []
    assert len(seen) == 1


async def test_a_started_subtask_shows_its_agent_on_the_parent(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    root = await store.submit(TaskSpec(subtasks=(ECHO, ECHO)))
    first, second = (await store.get(root)).child_ids

    (attempt,) = await store.start_attempts({first: AGENT}, OWNER, LEASE)

    assert attempt.parent_id == root
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT child_task_id, status, assigned_host FROM subtasks")
    assert {r["child_task_id"]: (r["status"], r["assigned_host"]) for r in rows} == {
        first: ("working", AGENT),
        second: ("pending", None),
    }


async def test_a_stopping_scheduler_hands_its_attempts_back_unused(store: TaskStore) -> None:
    mine = await store.submit(TaskSpec(kind="echo", prompt="hi", max_attempts=1))
    theirs = await store.submit(ECHO)
    await start(store, mine)
    await start(store, theirs, owner=OTHER)

    await store.release_owned(OWNER)

    record = await store.get(mine)
    assert (record.state, record.waiting_reason) == (
        TaskState.SUBMITTED,
        f"scheduler {OWNER} stopped",
    )
    assert (await store.get(theirs)).state is TaskState.WORKING
    assert await ready_ids(store) == [mine]  # at once: another replica may start it now
    # It did not use up the task's one attempt.
    assert (
        await store.retry_attempt(
            mine, (await start(store, mine)).attempt, OWNER, "lost", backoff_seconds=0.0
        )
        is TaskState.FAILED
    )
    assert [e.payload for e in await trace(store, mine)][2] == Status(
        TaskState.SUBMITTED, f"not started: scheduler {OWNER} stopped; trying again"
    )


async def test_a_lost_attempt_says_when_it_is_retried(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)

    await store.retry_attempt(task_id, attempt.attempt, OWNER, "node gone", backoff_seconds=60)

    assert [e.payload for e in await trace(store, task_id)][-1] == Status(
        TaskState.SUBMITTED, "attempt 1 lost: node gone; retrying in 60s"
    )
    assert await ready_ids(store) == []  # not before the backoff


async def test_stale_attempts_are_those_whose_task_moved_on(store: TaskStore) -> None:
    live = await store.submit(ECHO)
    ended = await store.submit(ECHO)
    taken = await store.submit(ECHO)
    live_attempt = await start(store, live)
    ended_attempt = await start(store, ended)
    taken_attempt = await start(store, taken)
    await store.finish_attempt(
        ended, ended_attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED)
    )
    await store.retry_attempt(taken, taken_attempt.attempt, OWNER, "lost", backoff_seconds=0.0)
    await start(store, taken, owner=OTHER)
    streams = [(live, live_attempt.attempt), (ended, 1), (taken, taken_attempt.attempt)]

    assert sorted(await store.stale_attempts(OWNER, streams)) == sorted([ended, taken])
    assert await store.stale_attempts(OWNER, []) == []
    await store.renew_leases(OWNER, LEASE, [])  # nothing to renew: nothing happens


# ----------------------------------------------------------------------------- trees


async def test_a_parent_without_work_of_its_own_completes_with_its_children_outputs(
    store: TaskStore,
) -> None:
    long_prompt = TaskSpec(kind="echo", prompt="p" * 300)  # no description: its prompt's start
    root = await store.submit(
        TaskSpec(subtasks=(TaskSpec(kind="echo", prompt="a", description="first"), long_prompt))
    )
    first, second = (await store.get(root)).child_ids
    for child, output in ((first, "  one \n"), (second, "two")):
        attempt = await start(store, child)
        await store.finish_attempt(
            child, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED, output=output)
        )
        if child == first:
            assert (await store.get(root)).state is TaskState.WORKING  # one still runs

    record = await store.get(root)
    assert record.state is TaskState.COMPLETED
    assert record.output == f"### first (on {AGENT})\none\n\n### {'p' * 200} (on {AGENT})\ntwo"
    assert [e.payload for e in await trace(store, root)][-1] == Result(
        TaskState.COMPLETED, output=record.output
    )


async def test_a_parent_with_work_of_its_own_is_queued_when_its_children_complete(
    store: TaskStore,
) -> None:
    root = await store.submit(
        TaskSpec(kind="gemini", prompt="sum up", priority=4, subtasks=(ECHO,))
    )
    (child,) = (await store.get(root)).child_ids
    attempt = await start(store, child)

    await store.finish_attempt(child, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED))

    record = await store.get(root)
    assert (record.state, record.waiting_reason) == (TaskState.SUBMITTED, "")
    assert [(t.task_id, t.position[0]) for t in await store.ready(10)] == [(root, 4)]
    assert [e.payload for e in await trace(store, root)][-1] == Status(
        TaskState.SUBMITTED, "subtasks completed; queued"
    )


async def test_a_failed_child_fails_its_parent_with_its_error(store: TaskStore) -> None:
    root = await store.submit(TaskSpec(subtasks=(ECHO, ECHO)))
    failing, sibling = (await store.get(root)).child_ids
    attempt = await start(store, failing)

    await store.fail_attempt(failing, attempt.attempt, OWNER, AGENT, "exit 3")

    record = await store.get(root)
    assert (record.state, record.error) == (TaskState.FAILED, f"subtask {failing} failed: exit 3")
    assert (await store.get(sibling)).state is TaskState.CANCELED
    assert (await store.get(sibling)).error == f"sibling {failing} failed"


async def test_a_child_failing_without_words_leaves_no_dangling_colon(store: TaskStore) -> None:
    root = await store.submit(TaskSpec(subtasks=(ECHO,)))
    (child,) = (await store.get(root)).child_ids
    attempt = await start(store, child)

    await store.finish_attempt(child, attempt.attempt, OWNER, AGENT, Result(TaskState.FAILED))

    assert (await store.get(root)).error == f"subtask {child} failed"


# ----------------------------------------------------------------------------- output


async def test_only_the_last_64_kib_of_output_is_kept(store: TaskStore) -> None:
    kept = "".join(f"{n:>7}\n" for n in range(64 * 1024 // 8))  # 64 KiB of numbered lines
    output = "x" * 100 + kept
    for in_tree in (False, True):
        task_id = await store.submit(ECHO)
        attempt = await start(store, task_id)
        result = Result(TaskState.COMPLETED, output=output)

        await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, result, in_tree=in_tree)

        assert (await store.get(task_id)).output == kept


async def test_nul_characters_are_stored_as_replacement_characters(store: TaskStore) -> None:
    for in_tree in (False, True):
        task_id = await store.submit(ECHO)
        attempt = await start(store, task_id)
        result = Result(TaskState.FAILED, output="a\x00b", error="c\x00d")

        await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, result, in_tree=in_tree)

        record = await store.get(task_id)
        assert (record.output, record.error) == ("a\ufffdb", "c\ufffdd")


def test_the_summary_of_children_names_each_and_where_it_ran() -> None:
    children = [
        {"id": "t-1", "description": "disk usage", "assigned_agent": "nas", "output": " 42%\n"},
        {"id": "t-2", "description": "", "assigned_agent": "", "output": "done"},
    ]

    assert summarize_children(children) == "### disk usage (on nas)\n42%\n\n### t-2\ndone"  # type: ignore[arg-type]
