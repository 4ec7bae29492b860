"""Approvals in the task store (TaskSpec.on_refusal = ask): a refused attempt leaves its task
waiting for its user, who approves (it runs again, the command permitted) or denies (it ends
rejected); what was approved is what the task's next attempt may run."""

from __future__ import annotations

import asyncpg
import pytest

from agentmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from agentmesh.node.permissions.approvals import Approval
from agentmesh.scheduler.approvals import ApprovalBook
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Refusal, Result, Status
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.test_transitions import AGENT, OTHER, OWNER, snapshot, start, trace

SHELL = TaskSpec(kind="shell", command="mkdir -p out/x", user="ada", priority=4)
REFUSAL = Refusal("mkdir -p out/x", "writes-outside", "weak", "out/x is outside", True)


async def waiting(store: TaskStore, spec: TaskSpec = SHELL) -> str:
    """A task whose attempt was refused and now waits for its user."""
    task_id = await store.submit(spec)
    attempt = await start(store, task_id)
    assert await store.await_approval(task_id, attempt.attempt, OWNER, REFUSAL)
    return task_id


async def test_a_refused_attempt_leaves_its_task_waiting_with_the_question(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await waiting(store)

    record = await store.get(task_id)
    assert record.state is TaskState.INPUT_REQUIRED
    assert record.waiting_reason == "waiting for its user to approve `mkdir -p out/x`"
    assert record.assigned_agent == ""
    assert (await trace(store, task_id))[-1].payload == Status(
        TaskState.INPUT_REQUIRED,
        "waiting for its user to approve `mkdir -p out/x`, refused by rule writes-outside in"
        f" weak mode: agentmesh approve {task_id} [--always], or agentmesh deny {task_id}",
    )
    assert await store.ready(10) == []
    # The question, as `agentmesh approvals` lists it for its user.
    [question] = await ApprovalBook(pool).pending("ada")
    assert (question.task_id, question.user, question.command) == (
        task_id,
        "ada",
        "mkdir -p out/x",
    )
    assert (question.rule, question.mode, question.detail) == (
        "writes-outside",
        "weak",
        "out/x is outside",
    )
    assert await ApprovalBook(pool).pending("bob") == []


async def test_a_superseded_attempt_asks_nothing(store: TaskStore) -> None:
    task_id = await store.submit(SHELL)
    attempt = await start(store, task_id)
    before = await snapshot(store, task_id)

    assert not await store.await_approval(task_id, attempt.attempt + 1, OWNER, REFUSAL)
    assert not await store.await_approval(task_id, attempt.attempt, OTHER, REFUSAL)

    assert await snapshot(store, task_id) == before
    with pytest.raises(FailedPrecondition, match="is not waiting for an approval"):
        await store.deny(task_id, "")


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("not in that folder", "its user denied `mkdir -p out/x`: not in that folder"),
        ("", "its user denied `mkdir -p out/x`"),
    ],
    ids=["with-reason", "without-reason"],
)
async def test_a_denied_task_ends_rejected_with_the_users_words(
    store: TaskStore, reason: str, error: str
) -> None:
    task_id = await waiting(store)

    await store.deny(task_id, reason)

    record = await store.get(task_id)
    assert (record.state, record.error) == (TaskState.REJECTED, error)
    assert (await trace(store, task_id))[-1].payload == Result(TaskState.REJECTED, error=error)
    assert await store.approvals_for(task_id, "ada", None) == []
    with pytest.raises(FailedPrecondition, match=r"is not waiting for an approval \(rejected\)"):
        await store.deny(task_id, "again")


async def test_an_approved_task_runs_again_with_the_command_permitted(store: TaskStore) -> None:
    task_id = await waiting(store)
    first = await store.get(task_id)

    permitted = await store.approve(task_id, always=False, prefix="")

    assert permitted == "mkdir -p out/x"
    record = await store.get(task_id)
    assert (record.state, record.waiting_reason) == (TaskState.SUBMITTED, "")
    # The refused attempt does not use up the one that runs the approved command.
    assert record.max_attempts == first.max_attempts + 1
    assert (await trace(store, task_id))[-1].payload == Status(
        TaskState.SUBMITTED, "its user approved `mkdir -p out/x`; queued again"
    )
    [ready] = await store.ready(10)
    assert (ready.task_id, ready.position[0]) == (task_id, 4)
    assert await store.approvals_for(task_id, "ada", "mkdir -p out/x") == [
        Approval("mkdir -p out/x")
    ]
    assert await store.approvals_for(task_id, "ada", "mkdir -p out/y") == []
    # Nothing is remembered for the user's other tasks.
    other = await store.submit(SHELL)
    assert await store.approvals_for(other, "ada", None) == []
    with pytest.raises(FailedPrecondition, match=r"not waiting for an approval \(submitted\)"):
        await store.approve(task_id, always=False, prefix="")


async def test_an_approved_prefix_permits_every_command_it_begins(store: TaskStore) -> None:
    task_id = await waiting(store)

    with pytest.raises(InvalidArgument, match="'rm' does not begin the refused command"):
        await store.approve(task_id, always=False, prefix="rm")
    assert (await store.get(task_id)).state is TaskState.INPUT_REQUIRED

    assert await store.approve(task_id, always=False, prefix="mkdir -p") == "mkdir -p"

    assert (await trace(store, task_id))[-1].payload == Status(
        TaskState.SUBMITTED, "its user approved every command beginning `mkdir -p`; queued again"
    )
    assert await store.approvals_for(task_id, "ada", "mkdir -p elsewhere") == [
        Approval("mkdir -p", prefix=True)
    ]
    assert await store.approvals_for(task_id, "ada", "mkdir elsewhere") == []


async def test_an_approval_given_always_is_remembered_for_the_users_later_tasks(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    task_id = await waiting(store)

    await store.approve(task_id, always=True, prefix="")

    assert (await trace(store, task_id))[-1].payload == Status(
        TaskState.SUBMITTED,
        "its user approved `mkdir -p out/x` (remembered for its user's later tasks); queued again",
    )
    later = await store.submit(SHELL)
    assert await store.approvals_for(later, "ada", None) == [Approval("mkdir -p out/x")]
    assert await store.approvals_for(later, "bob", None) == []
    async with pool.acquire() as conn:
        unused = await conn.fetchval("SELECT last_used FROM permissions_profile")
    assert unused is None

    # A command it does not cover leaves it unused; one it covers marks when it let one run.
    assert await store.approvals_for(later, "ada", "mkdir -p out/y") == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT last_used FROM permissions_profile") is None
    assert await store.approvals_for(later, "ada", "mkdir -p out/x") == [Approval("mkdir -p out/x")]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT last_used FROM permissions_profile") is not None


async def test_only_a_waiting_task_is_approved_or_denied(store: TaskStore) -> None:
    running = await store.submit(SHELL)
    await start(store, running)
    ended = await waiting(store)
    await store.cancel(ended, "enough")

    for answer in (
        lambda task_id: store.approve(task_id, always=False, prefix=""),
        lambda task_id: store.deny(task_id, "no"),
    ):
        with pytest.raises(NotFound, match="no task t-nope"):
            await answer("t-nope")
        with pytest.raises(FailedPrecondition, match=r"not waiting for an approval \(working\)"):
            await answer(running)
        with pytest.raises(FailedPrecondition, match=r"not waiting for an approval \(canceled\)"):
            await answer(ended)
    assert (await store.get(running)).state is TaskState.WORKING
    assert (await store.get(ended)).state is TaskState.CANCELED


async def test_a_finished_attempt_cannot_ask_afterwards(store: TaskStore) -> None:
    task_id = await store.submit(SHELL)
    attempt = await start(store, task_id)
    await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED))

    assert not await store.await_approval(task_id, attempt.attempt, OWNER, REFUSAL)

    assert (await store.get(task_id)).state is TaskState.COMPLETED
