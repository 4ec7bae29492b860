"""Submitting tasks and reading them back: idempotency, replays, trees, listing, the trace.

What `SubmitTask`, `GetTask`, `ListTasks` and `WatchTask` answer comes from these reads; each
test checks what a user would see there.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest

from agentmesh.errors import InvalidArgument, NotFound
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result, Status, Stdout, Usage
from agentmesh.tasks.model import TaskSpec, TaskState
from tests.store.conftest import DEFAULT_MAX_ATTEMPTS
from tests.store.test_delegation import as_given, running_parent
from tests.store.test_transitions import AGENT, OWNER, start, trace

ECHO = TaskSpec(kind="echo", prompt="hi")


# ----------------------------------------------------------------------------- submit


async def test_a_submitted_task_reads_back_as_submitted_with_its_spec(store: TaskStore) -> None:
    spec = TaskSpec(
        kind="shell",
        command="uname -a",
        user="ana",
        priority=3,
        required_capabilities=("linux", "gpu"),
        max_attempts=5,
    )

    task_id = await store.submit(spec)

    record = await store.get(task_id)
    assert record.spec == spec
    assert (record.state, record.attempt, record.max_attempts) == (TaskState.SUBMITTED, 0, 5)
    assert (record.parent_id, record.assigned_agent, record.replay_of) == ("", "", "")
    assert (record.output, record.error, record.exit_code) == ("", "", 0)
    assert record.usage == Usage()
    assert record.child_ids == ()
    assert (record.started_at, record.finished_at) == (None, None)
    assert await store.state(task_id) is TaskState.SUBMITTED
    assert [e.payload for e in await trace(store, task_id)] == [
        Status(TaskState.SUBMITTED, "submitted")
    ]


async def test_the_same_idempotency_key_gives_the_same_task(store: TaskStore) -> None:
    first = await store.submit(TaskSpec(kind="echo", prompt="a", idempotency_key="job-1"))
    again = await store.submit(TaskSpec(kind="echo", prompt="b", idempotency_key="job-1"))
    other = await store.submit(TaskSpec(kind="echo", prompt="c", idempotency_key="job-2"))
    tree = TaskSpec(idempotency_key="tree-1", subtasks=(ECHO,))
    tree_id = await store.submit(tree)

    assert again == first
    assert other != first
    assert await store.submit(tree) == tree_id
    assert (await store.get(first)).spec.prompt == "a"
    assert len(await store.ready(100)) == 3  # a, c and the tree's one leaf


async def test_concurrent_submits_with_one_key_make_one_task(store: TaskStore) -> None:
    spec = TaskSpec(kind="echo", prompt="hi", idempotency_key="race")

    ids = await asyncio.gather(*(store.submit(spec) for _ in range(4)))

    assert len(set(ids)) == 1
    assert len(await store.ready(100)) == 1


async def test_tasks_without_a_key_are_never_merged(store: TaskStore) -> None:
    assert await store.submit(ECHO) != await store.submit(ECHO)


async def test_a_replay_names_the_task_it_runs_again(store: TaskStore) -> None:
    original = await store.submit(ECHO)

    replay = await store.submit(ECHO, replay_of=original)
    tree_replay = await store.submit(TaskSpec(subtasks=(ECHO,)), replay_of=original)

    assert (await store.get(replay)).replay_of == original
    assert (await store.get(tree_replay)).replay_of == original
    assert (await store.get(original)).replay_of == ""
    assert {t.task_id for t in await store.ready(100)} >= {original, replay}


async def test_a_keyed_replay_sent_again_answers_its_task_after_the_original_is_gone(
    store: TaskStore, pool: asyncpg.Pool
) -> None:
    """The key answers first: a client sending its replay again gets the task it made, even
    once retention has removed the task that replay ran again."""
    original = await store.submit(ECHO)
    spec = TaskSpec(kind="echo", prompt="again", idempotency_key="rerun-1")
    replay = await store.submit(spec, replay_of=original)
    async with pool.acquire() as conn:  # as retention removes an old ended task
        await conn.execute("DELETE FROM tasks WHERE id = $1", original)

    assert await store.submit(spec, replay_of=original) == replay
    assert (await store.submit_and_get(spec, replay_of=original)).id == replay
    with pytest.raises(NotFound, match=f"no task {original}"):
        await store.submit(ECHO, replay_of=original)


async def test_what_submit_answers_is_what_a_read_gives(store: TaskStore) -> None:
    """SubmitTask's reply: a leaf comes back from the statement that stored it, the rest
    read back; either way it is the task as GetTask would show it."""
    original = await store.submit(ECHO)
    keyed = TaskSpec(kind="echo", prompt="k", idempotency_key="key-1", user="ana", priority=2)
    submissions = [
        (ECHO, ""),
        (keyed, ""),
        (keyed, ""),  # the same key: the task stored the first time
        (TaskSpec(subtasks=(ECHO, ECHO)), ""),
        (ECHO, original),
    ]
    for spec, replay_of in submissions:
        answered = await store.submit_and_get(spec, replay_of=replay_of)

        assert answered == await store.get(answered.id)
    assert (await store.submit_and_get(keyed)).id == (await store.submit_and_get(keyed)).id


async def test_a_replay_of_an_unknown_task_is_refused_and_stores_nothing(
    store: TaskStore,
) -> None:
    with pytest.raises(NotFound, match="no task t-nope"):
        await store.submit(ECHO, replay_of="t-nope")

    records, _ = await store.list_tasks(
        state=None, user="", parent_id="", page_size=10, page_token=""
    )
    assert records == []


async def test_a_tree_is_stored_with_its_children_and_only_its_leaves_queued(
    store: TaskStore,
) -> None:
    spec = TaskSpec(
        user="ana",
        priority=2,
        subtasks=(
            TaskSpec(kind="echo", prompt="one", description="first"),
            TaskSpec(kind="shell", command="uname", priority=7),
        ),
    )

    root_id = await store.submit(spec)

    root = await store.get(root_id)
    assert root.state is TaskState.WORKING
    assert root.waiting_reason == "waiting for 2 subtasks"
    assert root.max_attempts == DEFAULT_MAX_ATTEMPTS
    first, second = [await store.get(child) for child in root.child_ids]
    assert (first.spec.description, second.spec.command) == ("first", "uname")
    assert first.parent_id == second.parent_id == root_id
    assert (first.state, second.state) == (TaskState.SUBMITTED, TaskState.SUBMITTED)
    assert [e.payload for e in await trace(store, root_id)] == [
        Status(TaskState.SUBMITTED, "submitted"),
        Status(TaskState.WORKING, "waiting for 2 subtasks"),
    ]
    assert [e.payload for e in await trace(store, first.id)] == [
        Status(TaskState.SUBMITTED, f"submitted as a subtask of {root_id}")
    ]
    ready = await store.ready(100)
    assert [t.task_id for t in ready] == [second.id, first.id]  # priority 7 first
    assert [(t.parent_id, t.position[0]) for t in ready] == [(root_id, 7), (root_id, 0)]
    children = await store.child_results(root_id)
    assert [(c["id"], c["description"]) for c in children] == [
        (first.id, "first"),
        (second.id, "uname"),  # no description: the command names it
    ]


async def test_every_new_task_id_is_t_and_20_lowercase_hex_digits(store: TaskStore) -> None:
    """The shape bench/ and mesh credentials rely on (`t-` and 20 hex digits), whichever
    way the task came in: alone, keyed, in a tree, delegated."""
    leaf = await store.submit(ECHO)
    keyed = await store.submit(TaskSpec(kind="echo", prompt="k", idempotency_key="id-shape"))
    root = await store.submit(TaskSpec(subtasks=(ECHO, ECHO)))
    parent_id, attempt = await running_parent(store)
    delegated = await store.delegate(parent_id, attempt, as_given())  # type: ignore[arg-type]

    ids = [leaf, keyed, root, *(await store.get(root)).child_ids, parent_id, delegated]
    assert len(set(ids)) == len(ids) == 7
    for task_id in ids:
        assert re.fullmatch(r"t-[0-9a-f]{20}", task_id), task_id


async def test_unknown_tasks_are_not_found(store: TaskStore) -> None:
    with pytest.raises(NotFound, match="no task t-nope"):
        await store.get("t-nope")
    with pytest.raises(NotFound, match="no task t-nope"):
        await store.state("t-nope")


# ----------------------------------------------------------------------------- list


async def test_tasks_are_listed_newest_first_in_pages(store: TaskStore) -> None:
    ids = [await store.submit(ECHO) for _ in range(5)]

    for page_size, sizes in [(1, [1] * 5), (2, [2, 2, 1]), (3, [3, 2]), (4, [4, 1]), (6, [5])]:
        seen: list[str] = []
        pages: list[int] = []
        token = ""
        while True:
            records, token = await store.list_tasks(
                state=None, user="", parent_id="", page_size=page_size, page_token=token
            )
            seen += [r.id for r in records]
            pages.append(len(records))
            if not token:
                break

        assert seen == ids[::-1]
        assert pages == sizes, page_size
    exact, token = await store.list_tasks(
        state=None, user="", parent_id="", page_size=5, page_token=""
    )
    assert (len(exact), token) == (5, "")


async def test_listing_filters_by_state_user_parent_and_age(store: TaskStore) -> None:
    ana = await store.submit(TaskSpec(kind="echo", prompt="a", user="ana"))
    bob = await store.submit(TaskSpec(kind="echo", prompt="b", user="bob"))
    root = await store.submit(TaskSpec(user="ana", subtasks=(ECHO, ECHO)))
    children = (await store.get(root)).child_ids
    attempt = await start(store, bob)
    await store.finish_attempt(bob, attempt.attempt, OWNER, AGENT, Result(TaskState.COMPLETED))

    async def listed(**filters: object) -> set[str]:
        options: dict[str, object] = {"state": None, "user": "", "parent_id": ""}
        records, _ = await store.list_tasks(
            **{**options, **filters},
            page_size=100,
            page_token="",  # type: ignore[arg-type]
        )
        return {r.id for r in records}

    assert await listed() == {ana, bob, root, *children}
    assert await listed(user="ana") == {ana, root}
    assert await listed(state=TaskState.COMPLETED) == {bob}
    assert await listed(parent_id=root) == set(children)
    newest = (await store.get(root)).created_at
    assert await listed(created_after=newest + timedelta(seconds=1)) == set()
    assert ana in await listed(created_after=(await store.get(ana)).created_at)


async def test_a_page_token_that_is_not_ours_is_refused(store: TaskStore) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        await store.list_tasks(
            state=None, user="", parent_id="", page_size=10, page_token="not-a-token"
        )


# ----------------------------------------------------------------------------- trace


async def test_the_trace_is_read_after_a_sequence_number_up_to_a_limit(
    store: TaskStore,
) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    lines = [Stdout(f"line {n}") for n in range(5)]
    await store.append_many(task_id, attempt.attempt, OWNER, AGENT, lines, after_seq=2)

    page = await store.events_after(task_id, 3, limit=2)

    assert [(e.seq, e.payload) for e in page] == [(4, lines[1]), (5, lines[2])]
    assert {(e.task_id, e.attempt, e.agent_id) for e in page} == {(task_id, 1, AGENT)}
    assert (await trace(store, task_id))[0].agent_id == ""  # the scheduler's own events


async def test_a_result_keeps_its_output_usage_and_exit_code(store: TaskStore) -> None:
    task_id = await store.submit(ECHO)
    attempt = await start(store, task_id)
    usage = Usage(input_tokens=3, output_tokens=4, total_tokens=7, model="m")
    result = Result(TaskState.FAILED, exit_code=2, usage=usage, output="out", error="err")

    await store.finish_attempt(task_id, attempt.attempt, OWNER, AGENT, result, in_tree=False)

    record = await store.get(task_id)
    assert (record.output, record.error, record.exit_code) == ("out", "err", 2)
    assert record.usage == usage
    assert record.assigned_agent == AGENT
    assert record.started_at is not None
