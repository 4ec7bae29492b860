"""Delegation in the task store, against real PostgreSQL: a running attempt's subtasks are
stored under its tree, counted, and end with the attempt that started them; their own end
neither waits for nor fails the parent."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from agentmesh.errors import FailedPrecondition, Reason
from agentmesh.scheduler.store import DelegatingParent, TaskStore
from agentmesh.tasks.events import Refusal, Result, Usage
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import AGENT, OWNER, lose, start

AGENT_TASK = TaskSpec(kind="gemini", prompt="plan", user="ada")
CHILD = TaskSpec(kind="shell", command="uname", user="ada", description="kernel")


def as_given(spec: TaskSpec = CHILD) -> object:
    return lambda parent: spec


async def running_parent(store: TaskStore, spec: TaskSpec = AGENT_TASK) -> tuple[str, int]:
    task_id = await store.submit(spec)
    attempt = await start(store, task_id)
    return task_id, attempt.attempt


async def test_a_delegated_subtask_is_a_queued_child_in_the_seeds_subtasks_table(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    parent_id, attempt = await running_parent(store)
    seen: list[DelegatingParent] = []

    def shape(parent: DelegatingParent) -> TaskSpec:
        seen.append(parent)
        return CHILD

    child_id = await store.delegate(parent_id, attempt, shape)

    [parent] = seen
    assert (parent.id, parent.user, parent.depth, parent.delegations) == (parent_id, "ada", 0, 0)
    child = await store.get(child_id)
    assert (child.state, child.parent_id, child.spec.command) == (
        TaskState.SUBMITTED,
        parent_id,
        "uname",
    )
    assert (await store.get(parent_id)).child_ids == (child_id,)
    assert [r.task_id for r in await store.ready(10)] == [child_id]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM subtasks WHERE child_task_id = $1", child_id)
        counted = await conn.fetchval("SELECT delegations FROM tasks WHERE id = $1", parent_id)
    assert (row["parent_task_id"], row["description"], row["status"]) == (
        parent_id,
        "kernel",
        "pending",
    )
    assert counted == 1
    # Its child, delegating in turn, is one level deeper and sees its own count.
    grandparent_view = await _view(store, child_id)
    assert (grandparent_view.depth, grandparent_view.delegations) == (1, 0)


async def test_a_subtasks_row_is_described_by_its_description_command_or_prompt(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """The seed's subtasks table names each child by its description, else its command,
    else the first 200 characters of its prompt, with the agent mode it names (NULL if
    none): alike for a submitted tree and for delegated subtasks."""
    prompt = "".join(f"{n:>9}\n" for n in range(30))  # 300 characters
    children = [
        TaskSpec(kind="shell", command="uname", description="kernel"),
        TaskSpec(kind="shell", command="uname -a"),
        TaskSpec(kind="gemini", prompt=prompt, agent_mode="plain"),
    ]
    expected = [("kernel", None), ("uname -a", None), (prompt[:200], "plain")]
    root = await store.submit(TaskSpec(user="ada", subtasks=tuple(children)))
    parent_id, attempt = await running_parent(store)
    for child in children:
        await store.delegate(parent_id, attempt, as_given(dataclasses.replace(child, user="ada")))  # type: ignore[arg-type]

    for parent in (root, parent_id):
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT description, agent_mode FROM subtasks WHERE parent_task_id = $1"
                " ORDER BY id",
                parent,
            )
        assert [tuple(row) for row in rows] == expected, parent


async def _view(store: TaskStore, task_id: str) -> DelegatingParent:
    attempt = await start(store, task_id)
    seen: list[DelegatingParent] = []
    await store.delegate(task_id, attempt.attempt, lambda p: seen.append(p) or CHILD)  # type: ignore[func-returns-value]
    return seen[0]


async def test_the_parent_sees_the_tokens_granted_to_its_gemini_subtasks(
    store: TaskStore,
) -> None:
    parent_id, attempt = await running_parent(store)
    for tokens in (100, 250):
        agent = TaskSpec(kind="gemini", prompt="look", user="ada", max_tokens=tokens)
        await store.delegate(parent_id, attempt, lambda p, agent=agent: agent)  # type: ignore[misc]
    await store.delegate(parent_id, attempt, lambda p: dataclasses.replace(CHILD, max_tokens=999))
    seen: list[DelegatingParent] = []
    await store.delegate(parent_id, attempt, lambda p: seen.append(p) or CHILD)  # type: ignore[func-returns-value]
    assert seen[0].tokens_granted == 350  # shell subtasks spend none
    assert seen[0].delegations == 3


async def test_a_refused_delegation_stores_nothing(store: TaskStore, pool: asyncpg.Pool) -> None:
    parent_id, attempt = await running_parent(store)

    def refuse(parent: DelegatingParent) -> TaskSpec:
        raise FailedPrecondition("no", reason=Reason.DELEGATION_LIMIT)

    with pytest.raises(FailedPrecondition):
        await store.delegate(parent_id, attempt, refuse)
    assert (await store.get(parent_id)).child_ids == ()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT delegations FROM tasks WHERE id = $1", parent_id) == 0


async def test_only_the_running_attempt_delegates(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    with pytest.raises(FailedPrecondition) as stale:
        await store.delegate(parent_id, attempt + 1, as_given())  # type: ignore[arg-type]
    assert stale.value.reason is Reason.TASK_NOT_RUNNING
    await store.finish_attempt(
        parent_id, attempt, OWNER, AGENT, Result(TaskState.COMPLETED), in_tree=False
    )
    with pytest.raises(FailedPrecondition) as ended:
        await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    assert ended.value.reason is Reason.TASK_NOT_RUNNING


async def test_an_earlier_attempt_delegates_nothing_once_the_task_runs_again(
    store: TaskStore,
) -> None:
    parent_id, first = await running_parent(store)
    await lose(store, await _attempt(store, parent_id))
    second = await start(store, parent_id)
    assert second.attempt > first

    with pytest.raises(FailedPrecondition) as stale:
        await store.delegate(parent_id, first, as_given())  # type: ignore[arg-type]

    assert stale.value.reason is Reason.TASK_NOT_RUNNING
    assert (await store.get(parent_id)).child_ids == ()
    with pytest.raises(FailedPrecondition) as reach:
        await store.check_mesh_reach(parent_id, first, None)
    assert reach.value.reason is Reason.TASK_NOT_RUNNING
    assert await store.delegate(parent_id, second.attempt, as_given())  # type: ignore[arg-type]


async def test_a_task_on_its_300th_attempt_still_delegates(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """Attempt numbers are compared as numbers, however high (past the small ints Python
    shares one object for)."""
    parent_id = await store.submit(dataclasses.replace(AGENT_TASK, max_attempts=1000))
    async with pool.acquire() as conn:  # as after 299 lost attempts
        await conn.execute("UPDATE tasks SET attempt = 299 WHERE id = $1", parent_id)
    attempt = await start(store, parent_id)
    assert attempt.attempt == 300

    # The attempt as its mesh credential names it: a number read from the credential's text.
    credential_attempt = int(str(attempt.attempt))

    child = await store.delegate(parent_id, credential_attempt, as_given())  # type: ignore[arg-type]

    assert (await store.get(parent_id)).child_ids == (child,)
    await store.check_mesh_reach(parent_id, credential_attempt, child)


async def test_concurrent_delegations_are_counted_one_by_one(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    limit = 3

    def within(parent: DelegatingParent) -> TaskSpec:
        if parent.delegations >= limit:
            raise FailedPrecondition("limit", reason=Reason.DELEGATION_LIMIT)
        return CHILD

    outcomes = await asyncio.gather(
        *(store.delegate(parent_id, attempt, within) for _ in range(8)), return_exceptions=True
    )
    assert sum(isinstance(o, str) for o in outcomes) == limit
    assert len((await store.get(parent_id)).child_ids) == limit


@pytest.mark.parametrize("in_tree", [True, False], ids=["in-tree", "root-fast-path"])
async def test_a_parent_that_ends_cancels_what_it_delegated(
    store: TaskStore, in_tree: bool
) -> None:
    parent_id, attempt = await running_parent(store)
    queued = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    running = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    done = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    for child in (running, done):
        await start(store, child)
    child_attempt = (await store.get(done)).attempt
    await store.finish_attempt(done, child_attempt, OWNER, AGENT, Result(TaskState.COMPLETED))

    finished = await store.finish_attempt(
        parent_id, attempt, OWNER, AGENT, Result(TaskState.COMPLETED, output="planned"),
        in_tree=in_tree,
    )  # fmt: skip

    assert finished
    assert (await store.get(parent_id)).state is TaskState.COMPLETED
    states = {child: (await store.get(child)).state for child in (queued, running, done)}
    assert states == {
        queued: TaskState.CANCELED,
        running: TaskState.CANCELED,
        done: TaskState.COMPLETED,
    }
    assert f"its parent {parent_id} ended" in (await store.get(running)).error
    assert await store.ready(10) == []


async def test_a_lost_attempt_takes_what_it_delegated_with_it(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    first = (await store.get(parent_id)).attempt

    assert await lose(store, await _attempt(store, parent_id)) is TaskState.SUBMITTED

    assert (await store.get(child)).state is TaskState.CANCELED
    assert f"attempt {first} of its parent was lost" in (await store.get(child)).error
    assert [r.task_id for r in await store.ready(10)] == [parent_id]


async def _attempt(store: TaskStore, task_id: str) -> object:
    from agentmesh.scheduler.store import StartedAttempt

    record = await store.get(task_id)
    return StartedAttempt(task_id, record.attempt, AGENT, record.spec, record.spec.user)


@pytest.mark.parametrize("ending", [TaskState.FAILED, TaskState.COMPLETED])
async def test_a_delegated_subtasks_end_leaves_its_parent_running(
    store: TaskStore, ending: TaskState
) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]
    child_attempt = await start(store, child)

    await store.finish_attempt(
        child, child_attempt.attempt, OWNER, AGENT, Result(ending, error="it broke")
    )

    parent = await store.get(parent_id)
    assert (parent.state, parent.attempt) == (TaskState.WORKING, attempt)
    assert await store.ready(10) == []


async def test_cancelling_the_parent_cancels_its_delegated_subtree(store: TaskStore) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given(AGENT_TASK))  # type: ignore[arg-type]
    child_attempt = await start(store, child)
    grandchild = await store.delegate(child, child_attempt.attempt, as_given())  # type: ignore[arg-type]

    running = await store.cancel(parent_id, "enough")

    assert set(running) >= {parent_id, child}
    for task_id in (parent_id, child, grandchild):
        assert (await store.get(task_id)).state is TaskState.CANCELED


async def test_an_ended_gemini_subtask_holds_what_it_spent_not_its_grant(
    store: TaskStore,
) -> None:
    parent_id, attempt = await running_parent(store)
    spent_child = await store.delegate(
        parent_id,
        attempt,
        lambda p: TaskSpec(kind="gemini", prompt="a", user="ada", max_tokens=100),
    )
    await store.delegate(
        parent_id,
        attempt,
        lambda p: TaskSpec(kind="gemini", prompt="b", user="ada", max_tokens=250),
    )
    child_attempt = await start(store, spent_child)
    await store.finish_attempt(
        spent_child,
        child_attempt.attempt,
        OWNER,
        AGENT,
        Result(TaskState.COMPLETED, usage=Usage(total_tokens=40)),
    )
    seen: list[DelegatingParent] = []
    await store.delegate(parent_id, attempt, lambda p: seen.append(p) or CHILD)  # type: ignore[func-returns-value]
    assert seen[0].tokens_granted == 40 + 250


async def test_a_parent_waiting_for_approval_leaves_no_delegated_subtask_running(
    store: TaskStore,
) -> None:
    parent_id, attempt = await running_parent(store)
    child = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]

    refusal = Refusal("mkdir x", "gemini-policy", "weak", "refused", approvable=True)
    assert await store.await_approval(parent_id, attempt, OWNER, refusal)

    assert (await store.get(parent_id)).state is TaskState.INPUT_REQUIRED
    assert (await store.get(child)).state is TaskState.CANCELED
