"""The task store: tasks, their queue, their subtask tree and their trace, in PostgreSQL.

PostgreSQL is the only source of truth. Every state change is one transaction, and every
write on behalf of a running attempt is guarded by (task id, attempt, lease owner, state):
an attempt that lost its lease, or a task that was cancelled meanwhile, cannot write a
result, so each task ends exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from agentmesh.db import notify
from agentmesh.db.connect import Connection
from agentmesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from agentmesh.keys import quota
from agentmesh.node.permissions.approvals import Approval, permits
from agentmesh.rpc.convert import payload_from_dict, payload_to_dict
from agentmesh.scheduler import queries as q
from agentmesh.scheduler.group_commit import GroupCommit
from agentmesh.tasks.events import (
    Payload,
    Refusal,
    Result,
    Status,
    TaskEvent,
    Usage,
    usage_values,
)
from agentmesh.tasks.model import TaskSpec, TaskState, spec_values

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 64 << 10
# The unique index that keeps idempotency keys apart (schema/0001_tasks.sql).
IDEMPOTENCY_KEY_INDEX = "tasks_idempotency_key_idx"


@dataclass(frozen=True)
class TaskRecord:
    id: str
    spec: TaskSpec
    state: TaskState
    parent_id: str
    assigned_agent: str
    attempt: int
    max_attempts: int
    waiting_reason: str
    output: str
    error: str
    exit_code: int
    usage: Usage
    last_seq: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # The task this one runs again (`agentmesh replay`), or "".
    replay_of: str = ""
    child_ids: tuple[str, ...] = ()


# (priority, queue row id): the queue is read by priority, highest first, then by arrival.
QueuePosition = tuple[int, int]


@dataclass(frozen=True)
class ReadyTask:
    task_id: str
    spec: TaskSpec
    parent_id: str
    waiting_reason: str
    # Where its row is in the queue's order (priority first, then arrival).
    position: QueuePosition = (0, 0)


# What is told of the tasks a store queued, once their submit committed (TaskStore.on_queued).
Queued = Callable[[list[ReadyTask]], None]


class Placement(Protocol):
    """Agents chosen for new tasks before their submit stores them (see TaskStore.placer)."""

    @property
    def agents(self) -> Sequence[str | None]:
        """Each task's agent, in the submissions' order; None: the task is queued."""
        ...

    @property
    def lease(self) -> tuple[str, float]:
        """Who streams the started attempts, and for how long their lease holds unrenewed."""
        ...

    def started(self, attempts: list[StartedAttempt]) -> None:
        """The submit committed: the placed tasks' first attempts, started."""
        ...

    def not_started(self, task_ids: Sequence[str]) -> None:
        """The submit of these tasks (all of them, in order) failed, or was cancelled: no
        attempt was streamed. Whether it committed is unknown: if it did, the placed tasks
        stand started and leased, and are to be handed back."""
        ...


# Agents for new tasks about to be stored, or None to queue them all (see TaskStore.placer).
Placer = Callable[[Sequence[TaskSpec]], Placement | None]

# See TaskStore.start_attempts: (connection, claimed placements) -> (placements to start,
# API key ids).
Prepare = Callable[[Connection, dict[str, str]], Awaitable[tuple[dict[str, str], dict[str, int]]]]


@dataclass(frozen=True)
class StartedAttempt:
    task_id: str
    attempt: int
    agent_id: str
    spec: TaskSpec
    user: str
    parent_id: str = ""
    # The task's last event (where the attempt was placed): its trace continues after it.
    last_seq: int = 0


@dataclass(frozen=True)
class DelegatingParent:
    """A running task as a delegation sees it (see TaskStore.delegate)."""

    id: str
    spec: TaskSpec
    user: str
    # Its depth in its tree: a root is 0, its subtasks 1, ...
    depth: int
    # How many subtasks it delegated so far (all attempts).
    delegations: int
    # The max_tokens its delegated gemini subtasks were granted together.
    tokens_granted: int


# See TaskStore.delegate: the parent -> the subtask to store (or a domain error: refused).
ShapeDelegation = Callable[[DelegatingParent], TaskSpec]


def new_task_id() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


def spec_to_json(spec: TaskSpec) -> dict[str, Any]:
    return spec_values(spec)


def spec_from_json(values: dict[str, Any]) -> TaskSpec:
    values = dict(values)
    values["required_capabilities"] = tuple(values.get("required_capabilities", ()))
    values.pop("subtasks", None)
    return TaskSpec(**values)


def _key_taken(error: asyncpg.UniqueViolationError) -> Exception:
    """A submission that cannot be stored because a subtask's idempotency key is another
    task's (a root's key returns that task instead); any other violation as it is."""
    if error.constraint_name != IDEMPOTENCY_KEY_INDEX:
        return error
    return AlreadyExists(f"an idempotency key of a subtask is another task's: {error.detail}")


def _record(
    row: asyncpg.Record, child_ids: Sequence[str] = (), spec: TaskSpec | None = None
) -> TaskRecord:
    """The task of this row; `spec`, when given, is its spec (the row need not hold it)."""
    return TaskRecord(
        id=row["id"],
        spec=spec if spec is not None else spec_from_json(row["spec"]),
        state=TaskState(row["state"]),
        parent_id=row["parent_id"] or "",
        assigned_agent=row["assigned_agent"] or "",
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        waiting_reason=row["waiting_reason"],
        output=row["output"],
        error=row["error"],
        exit_code=row["exit_code"],
        usage=Usage(**row["usage"]) if row["usage"] else Usage(),
        last_seq=row["last_seq"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        child_ids=tuple(child_ids),
        replay_of=row.get("replay_of") or "",
    )


def _started(row: asyncpg.Record, agent_id: str) -> StartedAttempt:
    return StartedAttempt(
        task_id=row["id"],
        attempt=row["attempt"],
        agent_id=agent_id,
        spec=spec_from_json(row["spec"]),
        user=row["user_name"],
        parent_id=row["parent_id"] or "",
        last_seq=row["last_seq"],
    )


def _event(row: asyncpg.Record) -> TaskEvent:
    return TaskEvent(
        task_id=row["task_id"],
        seq=row["seq"],
        time=row["created_at"].timestamp(),
        attempt=row["attempt"],
        agent_id=row["agent_id"] or "",
        payload=payload_from_dict(row["kind"], row["payload"]),
    )


@dataclass(frozen=True)
class AttemptEnd:
    """An attempt's result, to be recorded as its task's end (see TaskStore.finish_attempt)."""

    task_id: str
    attempt: int
    owner: str
    agent_id: str
    result: Result
    # Its events not written yet, stored before the result, after event `after_seq`.
    trail: Sequence[Payload] = ()
    after_seq: int | None = None


class TaskStore:
    """The tasks' states and traces. The two writes every task makes, its submit and its
    end, go through group commits: concurrent ones share a statement."""

    def __init__(self, pool: asyncpg.Pool, *, default_max_attempts: int, origin: str = "") -> None:
        """`origin` names the scheduler replica that submits through this store: its queue
        notifications say so (see notify.submitted_by), and `on_queued` hears of the tasks
        it queued."""
        self._pool = pool
        self._default_max_attempts = default_max_attempts
        self._queue_payload = notify.submitted_by(origin)
        # Told of each new task without subtasks once its submit committed (the replica's
        # dispatcher: see Dispatcher.submitted). Trees and delegated subtasks are not told:
        # their notifications say nothing of who queued them.
        self.on_queued: Queued | None = None
        # Chooses agents for new tasks without subtasks as their submit stores them, which
        # then stores them started, claim and start included (the replica's dispatcher, when
        # an agent is free for them now: see Dispatcher.place_new). The others are queued.
        # Submissions in one transaction with other writes (SubmitTasks) are always queued.
        self.placer: Placer | None = None
        self._submit_leaves = GroupCommit(self._insert_and_tell)
        self._finish_roots = GroupCommit(self._finish_root_attempts)

    # ----------------------------------------------------------------- submit and read

    async def submit(self, spec: TaskSpec, *, replay_of: str = "") -> str:
        """Store a task and its subtask tree; queue what can run now. Idempotent by key.

        `replay_of` names the task this one runs again; it must exist."""
        task_id, _ = await self._submit(spec, replay_of)
        return task_id

    async def submit_and_get(self, spec: TaskSpec, *, replay_of: str = "") -> TaskRecord:
        """`submit`, then the task as `get` returns it; a new task without subtasks comes
        back from the statement that stored it (one round trip, not three)."""
        task_id, record = await self._submit(spec, replay_of)
        return record if record is not None else await self.get(task_id)

    async def submit_many(self, specs: Sequence[TaskSpec]) -> list[TaskRecord]:
        """Store many submissions, all or none, in one transaction; each one's task, in
        order. A spec whose idempotency key is taken gets the task that has it (a key given
        twice: the first's task), as `submit` would. The leaves share one statement."""
        async with self._pool.acquire() as conn:
            for last_try in (False, True):
                try:
                    async with conn.transaction():
                        ids, records, queued = await self._store_many(conn, specs)
                    break
                except asyncpg.UniqueViolationError as error:
                    # A concurrent submit took one of the keys meanwhile: it is read now.
                    if last_try:
                        raise _key_taken(error) from None
            self._tell(queued)
            # Trees and tasks that had the keys: read as `get` would, two statements for all.
            if missing := [task_id for task_id in dict.fromkeys(ids) if task_id not in records]:
                rows = await conn.fetch(q.SELECT_TASKS, missing)
                children: dict[str, list[str]] = {}
                for row in await conn.fetch(q.SELECT_CHILD_IDS_OF, missing):
                    children.setdefault(row["parent_task_id"], []).append(row["child_task_id"])
                records |= {row["id"]: _record(row, children.get(row["id"], ())) for row in rows}
        return [records[task_id] for task_id in ids]

    async def _store_many(
        self, conn: Connection, specs: Sequence[TaskSpec]
    ) -> tuple[list[str], dict[str, TaskRecord], list[ReadyTask]]:
        """`submit_many` inside its transaction: the ids in order, the leaves it stored (as
        their statement returned them), and those leaves as queued."""
        keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
        taken: dict[str, str] = {}
        if keys:
            taken = {row[0]: row[1] for row in await conn.fetch(q.SELECT_BY_IDEMPOTENCY_KEYS, keys)}
        # Each spec's id, or the index of the spec whose task it gets (a key given twice).
        placed: list[str | int] = []
        first_with_key: dict[str, int] = {}
        leaves: list[int] = []
        trees = False
        for index, spec in enumerate(specs):
            key = spec.idempotency_key
            if key in taken:
                placed.append(taken[key])
            elif key in first_with_key:
                placed.append(first_with_key[key])
            else:
                if key:
                    first_with_key[key] = index
                if spec.subtasks:
                    placed.append(await self._insert_tree(conn, spec, parent_id=None))
                    trees = True
                else:
                    placed.append(index)
                    leaves.append(index)
        records: dict[str, TaskRecord] = {}
        queued: list[ReadyTask] = []
        if leaves:
            stored, queued, _ = await self._insert_leaves([specs[index] for index in leaves], conn)
            for index, record in zip(leaves, stored, strict=True):
                placed[index] = record.id
                records[record.id] = record
        if trees:
            await conn.execute(notify.WAKE_QUEUE)
        # What is still an index is a key given twice: the first's entry is an id by now.
        return (
            [entry if isinstance(entry, str) else str(placed[entry]) for entry in placed],
            records,
            queued,
        )

    async def _submit(self, spec: TaskSpec, replay_of: str) -> tuple[str, TaskRecord | None]:
        """The task's id, and the task as stored when it is new and without subtasks."""
        leaf = not spec.subtasks and not replay_of
        if leaf and not spec.idempotency_key:
            # The common case: it shares its statement with what is submitted meanwhile.
            record = await self._submit_leaves(spec)
            return record.id, record
        async with self._pool.acquire() as conn:
            if spec.idempotency_key:
                existing = await conn.fetchval(q.SELECT_BY_IDEMPOTENCY_KEY, spec.idempotency_key)
                if existing:
                    return str(existing), None
            if replay_of and await conn.fetchval(q.SELECT_STATE, replay_of) is None:
                raise NotFound(f"no task {replay_of}")
            try:
                if leaf:
                    # Alone: a concurrent submit with the same key must not fail others.
                    record = (await self._insert_and_tell([spec], conn))[0]
                    return record.id, record
                queued: list[ReadyTask] = []
                async with conn.transaction():
                    if spec.subtasks:
                        task_id = await self._insert_tree(conn, spec, parent_id=None)
                        await conn.execute(notify.WAKE_QUEUE)
                    else:
                        records, queued, _ = await self._insert_leaves([spec], conn)
                        task_id = records[0].id
                    if replay_of:
                        await conn.execute(q.SET_REPLAY_OF, task_id, replay_of)
                self._tell(queued)
            except asyncpg.UniqueViolationError as error:
                # A concurrent submit with the same idempotency key won.
                existing = await conn.fetchval(q.SELECT_BY_IDEMPOTENCY_KEY, spec.idempotency_key)
                if existing is None:
                    raise _key_taken(error) from None
                return str(existing), None
        return task_id, None

    async def _insert_and_tell(
        self, specs: Sequence[TaskSpec], conn: Connection | None = None
    ) -> list[TaskRecord]:
        """`_insert_leaves` outside a transaction (committed when it returns), the tasks the
        placer placed stored started; then tell it, and `on_queued`. The tasks as stored."""
        placement = self.placer(specs) if self.placer is not None else None
        ids = [new_task_id() for _ in specs]
        try:
            records, queued, started = await self._insert_leaves(specs, conn, placement, ids)
        except BaseException:
            if placement is not None:
                placement.not_started(ids)
            raise
        if placement is not None:
            placement.started(started)
        self._tell(queued)
        return records

    def _tell(self, queued: list[ReadyTask]) -> None:
        if queued and self.on_queued is not None:
            self.on_queued(queued)

    async def _insert_leaves(
        self,
        specs: Sequence[TaskSpec],
        conn: Connection | None = None,
        placement: Placement | None = None,
        ids: Sequence[str] = (),
    ) -> tuple[list[TaskRecord], list[ReadyTask], list[StartedAttempt]]:
        """Store tasks without subtasks, in one statement, those `placement` placed started,
        under `ids` if given; the tasks as stored, in order, then those queued and those
        started."""
        ids = list(ids) or [new_task_id() for _ in specs]
        arguments: tuple[Any, ...] = (
            q.SUBMIT_LEAVES,
            ids,
            [spec.kind for spec in specs],
            [spec_to_json(spec) for spec in specs],
            [spec.user for spec in specs],
            [spec.priority for spec in specs],
            [spec.max_attempts or self._default_max_attempts for spec in specs],
            payload_to_dict(Status(TaskState.SUBMITTED, "submitted")),
            [spec.idempotency_key or None for spec in specs],
            self._queue_payload,
        )
        if placement is not None:
            arguments = (
                q.SUBMIT_STARTED_LEAVES,
                *arguments[1:],
                placement.agents,
                *placement.lease,
            )
        if conn is None:
            async with self._pool.acquire() as own:
                rows = await own.fetch(*arguments)
        else:
            rows = await conn.fetch(*arguments)
        by_id = {row["id"]: row for row in rows}
        records = []
        queued = []
        started = []
        for task_id, spec in zip(ids, specs, strict=True):
            row = by_id[task_id]
            records.append(_record(row, spec=spec))
            if (agent_id := row["assigned_agent"]) is None:
                queued.append(ReadyTask(task_id, spec, "", "", (row["priority"], row["queue_id"])))
            else:
                started.append(
                    StartedAttempt(
                        task_id,
                        row["attempt"],
                        agent_id,
                        spec,
                        row["user_name"],
                        "",
                        row["last_seq"],
                    )
                )
        return records, queued, started

    async def _insert_tree(
        self, conn: Connection, spec: TaskSpec, parent_id: str | None, root_id: str | None = None
    ) -> str:
        task_id = new_task_id()
        root_id = root_id or task_id
        has_children = bool(spec.subtasks)
        await conn.execute(
            q.INSERT_TASK,
            task_id,
            spec.kind,
            spec_to_json(spec),
            "working" if has_children else "submitted",
            spec.user,
            parent_id,
            spec.priority,
            spec.idempotency_key or None,
            spec.max_attempts or self._default_max_attempts,
            f"waiting for {len(spec.subtasks)} subtasks" if has_children else "",
            root_id,
        )
        await self._scheduler_event(
            conn, task_id, Status(TaskState.SUBMITTED, "submitted" + _parent_note(parent_id))
        )
        if parent_id is not None:
            await conn.execute(
                q.INSERT_SUBTASK,
                parent_id,
                task_id,
                spec.description or spec.command or spec.prompt[:200],
                spec.agent_mode or None,
            )
        if has_children:
            await self._scheduler_event(
                conn,
                task_id,
                Status(TaskState.WORKING, f"waiting for {len(spec.subtasks)} subtasks"),
            )
            for child in spec.subtasks:
                await self._insert_tree(conn, child, parent_id=task_id, root_id=root_id)
        else:
            await conn.execute(q.ENQUEUE, task_id, spec.priority, 0.0)
        return task_id

    async def delegate(self, task_id: str, attempt: int, shape: ShapeDelegation) -> str:
        """Store and queue a subtask that attempt `attempt` of the running task `task_id`
        starts itself; `shape` checks the parent's limits and makes the child's spec.

        Under the tree's lock, so that concurrent delegations count against the same limits
        and none slips past the parent's end: a parent that ended, or runs another attempt,
        delegates nothing (its credential died with the attempt)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            row = await conn.fetchrow(q.SELECT_DELEGATING_PARENT, task_id)
            if row is None or row["state"] != TaskState.WORKING.value or row["attempt"] != attempt:
                raise FailedPrecondition(
                    f"task {task_id} is not running attempt {attempt} any more: its mesh"
                    " credential ended with that attempt",
                    reason=Reason.TASK_NOT_RUNNING,
                )
            parent = DelegatingParent(
                id=task_id,
                spec=spec_from_json(row["spec"]),
                user=row["user_name"],
                depth=row["depth"],
                delegations=row["delegations"],
                tokens_granted=row["tokens_granted"],
            )
            spec = shape(parent)
            child_id = new_task_id()
            await conn.execute(
                q.INSERT_DELEGATED,
                child_id,
                spec.kind,
                spec_to_json(spec),
                spec.user,
                task_id,
                spec.priority,
                spec.idempotency_key or None,
                spec.max_attempts or self._default_max_attempts,
                row["root_id"],
            )
            await self._scheduler_event(
                conn,
                child_id,
                Status(
                    TaskState.SUBMITTED, f"delegated by the agent of {task_id} (attempt {attempt})"
                ),
            )
            await conn.execute(
                q.INSERT_SUBTASK,
                task_id,
                child_id,
                spec.description or spec.command or spec.prompt[:200],
                spec.agent_mode or None,
            )
            await conn.execute(q.ENQUEUE, child_id, spec.priority, 0.0)
            await conn.execute(q.COUNT_DELEGATION, task_id)
            await conn.execute(notify.WAKE_QUEUE)
        return child_id

    async def check_mesh_reach(self, task_id: str, attempt: int, target: str | None) -> None:
        """What a mesh credential of (`task_id`, `attempt`) may read: nothing once that
        attempt ended; else `target` if it is that task or in its subtree (None: no task)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(q.MESH_REACH, task_id, target or task_id, attempt)
        assert row is not None
        if not row["running"]:
            raise FailedPrecondition(
                f"task {task_id} is not running attempt {attempt} any more: its mesh"
                " credential ended with that attempt",
                reason=Reason.TASK_NOT_RUNNING,
            )
        if not row["below"]:
            raise PermissionDenied(
                f"task {target} is not a subtask of {task_id}: a mesh credential reads only"
                " its own task's subtasks"
            )

    async def running_task_user(self, task_id: str, attempt: int) -> str:
        """The user of a task that still runs this attempt (what its mesh credential may
        act as); FailedPrecondition once the attempt ended."""
        await self.check_mesh_reach(task_id, attempt, None)
        async with self._pool.acquire() as conn:
            return str(await conn.fetchval(q.SELECT_USER, task_id) or "")

    async def get(self, task_id: str) -> TaskRecord:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(q.SELECT_TASK, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            children = [r["child_task_id"] for r in await conn.fetch(q.SELECT_CHILD_IDS, task_id)]
        return _record(row, children)

    async def state(self, task_id: str) -> TaskState:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(q.SELECT_STATE, task_id)
        if value is None:
            raise NotFound(f"no task {task_id}")
        return TaskState(value)

    async def list_tasks(
        self,
        *,
        state: TaskState | None,
        user: str,
        parent_id: str,
        page_size: int,
        page_token: str,
        created_after: datetime | None = None,
    ) -> tuple[list[TaskRecord], str]:
        before: tuple[datetime, str] | None = None  # the last task of the page before
        if page_token:
            try:
                stamp, _, last_id = page_token.partition("|")
                before = (datetime.fromisoformat(stamp), last_id)
            except ValueError:
                raise InvalidArgument("page_token", "is not a token from ListTasks") from None
        sql, arguments = q.list_tasks(
            state=state.value if state else None,
            user=user or None,
            parent=parent_id or None,
            before=before,
            since=created_after,
            limit=page_size + 1,
        )
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, *arguments)
        records = [_record(row) for row in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            last = records[-1]
            token = f"{last.created_at.isoformat()}|{last.id}"
        return records, token

    async def events_after(self, task_id: str, after_seq: int, limit: int) -> list[TaskEvent]:
        return [_event(row) for row in await self.event_rows_after(task_id, after_seq, limit)]

    async def event_rows_after(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[asyncpg.Record]:
        """The trace's rows as stored, in order (`convert.stored_event_to_proto` streams them
        without building each event's payload object)."""
        async with self._pool.acquire() as conn:
            return list(await conn.fetch(q.SELECT_EVENTS_AFTER, task_id, after_seq, limit))

    async def child_results(self, task_id: str) -> list[asyncpg.Record]:
        async with self._pool.acquire() as conn:
            return list(await conn.fetch(q.SELECT_CHILD_RESULTS, task_id))

    # ----------------------------------------------------------------- dispatch

    async def ready(self, limit: int, after: QueuePosition | None = None) -> list[ReadyTask]:
        """Ready tasks in queue order: from the head, or after a position."""
        priority, queue_id = after if after is not None else (None, None)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(q.SELECT_READY, limit, priority, queue_id)
        return [
            ReadyTask(
                task_id=row["task_id"],
                spec=spec_from_json(row["spec"]),
                parent_id=row["parent_id"] or "",
                waiting_reason=row["waiting_reason"],
                position=(row["priority"], row["queue_id"]),
            )
            for row in rows
        ]

    async def park(
        self,
        reasons: dict[str, str],
        cause: str,
        until: dict[str, datetime | None] | None = None,
    ) -> int:
        """Keep these tasks out of the dispatch window, with their waiting reasons, until
        `unpark(cause)`, or until their time in `until` (see `unpark_due`): nothing can
        place them before what they wait for changes.
        Returns how many were parked (rows someone else holds are left as they are)."""
        if not reasons:
            return 0
        times = [(until or {}).get(task_id) for task_id in reasons]
        async with self._pool.acquire() as conn:
            parked = await conn.fetchval(
                q.PARK, list(reasons), list(reasons.values()), cause, times
            )
        return int(parked)

    async def unpark(self, *causes: str) -> int:
        """Make tasks parked for any of these causes ready again (placement decides anew);
        how many."""
        async with self._pool.acquire() as conn:
            return _count(await conn.execute(q.UNPARK, list(causes)))

    async def unpark_due(self, *causes: str) -> int:
        """Make ready the tasks parked for these causes whose time to look again has come;
        how many."""
        async with self._pool.acquire() as conn:
            return _count(await conn.execute(q.UNPARK_DUE, list(causes)))

    async def end_waiting(self, results: dict[str, Result]) -> None:
        """End queued tasks that will never run (rejected, or waited too long)."""
        for task_id, result in results.items():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(q.LOCK_TREE, task_id)
                row = await conn.fetchrow(q.SELECT_TASK_FOR_UPDATE, task_id)
                if row is not None and row["state"] == TaskState.SUBMITTED.value:
                    await self._finish(conn, task_id, result)

    async def running_per_agent(self) -> dict[str, int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(q.WORKING_PER_AGENT)
        return {row["assigned_agent"]: row["running"] for row in rows}

    async def set_waiting_reasons(self, reasons: dict[str, str]) -> None:
        if not reasons:
            return
        async with self._pool.acquire() as conn:
            await conn.execute(q.SET_WAITING_REASON, list(reasons), list(reasons.values()))

    async def start_attempts(
        self,
        placements: dict[str, str],
        owner: str,
        lease_seconds: float,
        prepare: Prepare | None = None,
    ) -> list[StartedAttempt]:
        """Claim the placed tasks' queue rows and start their next attempts, in one
        transaction. `prepare` sees the claimed placements first, on the transaction's
        connection: it returns those to start (it may move or drop some) and the API keys
        reserved for them (recorded as `tasks.api_key_id`); what it did commits with the
        start, or not at all."""
        if not placements:
            return []
        if prepare is None:
            return await self._claim_and_start(placements, owner, lease_seconds)
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = [r["task_id"] for r in await conn.fetch(q.CLAIM, list(placements), owner)]
            if not claimed:
                return []
            key_ids: dict[str, int] = {}
            if prepare is not None:
                placements, key_ids = await prepare(conn, {t: placements[t] for t in claimed})
                dropped = [task_id for task_id in claimed if task_id not in placements]
                await conn.execute(q.RELEASE_CLAIMS, dropped, owner)
                claimed = [task_id for task_id in claimed if task_id in placements]
            agents = [placements[task_id] for task_id in claimed]
            keys = [key_ids.get(task_id) for task_id in claimed]
            rows = await conn.fetch(q.START_ATTEMPTS, claimed, agents, owner, lease_seconds, keys)
            started = [_started(row, placements[row["id"]]) for row in rows]
            started_ids = {s.task_id for s in started}
            stale = [task_id for task_id in claimed if task_id not in started_ids]
            if stale:  # finished or cancelled between the read and the claim
                await conn.execute(q.DROP_STALE_QUEUE_ROWS, stale)
                await conn.execute(q.RELEASE_CLAIMS, stale, owner)
                if key_ids:  # what `prepare` reserved for them goes back
                    await quota.release(conn, stale)
            children = [s for s in started if s.parent_id]
            if children:
                await conn.execute(
                    q.MARK_SUBTASK_STARTED,
                    [s.task_id for s in children],
                    [s.agent_id for s in children],
                )
        return started

    async def _claim_and_start(
        self, placements: dict[str, str], owner: str, lease_seconds: float
    ) -> list[StartedAttempt]:
        """`start_attempts` without a `prepare` step: one statement (see CLAIM_AND_START)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                q.CLAIM_AND_START, list(placements), list(placements.values()), owner, lease_seconds
            )
            started = [_started(row, placements[row["id"]]) for row in rows]
            if len(started) < len(placements):
                # Rows of tasks that ended between the read and the claim: gone for good.
                started_ids = {s.task_id for s in started}
                rest = [task_id for task_id in placements if task_id not in started_ids]
                await conn.execute(q.DROP_STALE_QUEUE_ROWS, rest)
        return started

    async def append_many(
        self,
        task_id: str,
        attempt: int,
        owner: str,
        agent_id: str,
        payloads: list[Payload],
        *,
        after_seq: int,
    ) -> int | None:
        """Store a batch of a running attempt's events after event `after_seq`, in order.

        Returns the task's new last sequence number, or None if the attempt was superseded.
        Idempotent: the same batch sent again (its reply was lost) is recognised, not
        written twice.
        """
        kinds = [p.KIND for p in payloads]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                q.APPEND_EVENTS,
                task_id,
                attempt,
                owner,
                agent_id,
                kinds,
                [payload_to_dict(p) for p in payloads],
                after_seq,
            )
            if row is not None:
                return int(row["last_seq"])
            written = await conn.fetchval(
                q.BATCH_WRITTEN, task_id, attempt, owner, agent_id, after_seq, len(kinds), kinds[-1]
            )
        return None if written is None else int(written)

    async def finish_attempt(
        self,
        task_id: str,
        attempt: int,
        owner: str,
        agent_id: str,
        result: Result,
        *,
        in_tree: bool = True,
        trail: Sequence[Payload] = (),
        after_seq: int | None = None,
    ) -> bool:
        """Record an attempt's result as the task's end; False if it was superseded.

        `trail`: the attempt's events not written yet, stored before the result (after
        event `after_seq`, the last one its trace writer wrote), in the same transaction.
        A task without a parent ends in one statement, shared with the other attempts that
        end meanwhile (see GroupCommit)."""
        if not in_tree:
            end = AttemptEnd(
                task_id,
                attempt,
                owner,
                agent_id,
                result,
                tuple(trail),
                after_seq if trail else None,
            )
            if await self._finish_roots(end):
                return True
            # Superseded, or it delegated: the tree's way tells which (and ends its children).
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            if await conn.fetchrow(q.OWNED_ATTEMPT, task_id, attempt, owner) is None:
                return False
            for payload in trail:
                await conn.fetchrow(
                    q.APPEND_EVENT,
                    task_id,
                    attempt,
                    owner,
                    agent_id,
                    payload.KIND,
                    payload_to_dict(payload),
                )
            await conn.fetchrow(
                q.APPEND_EVENT,
                task_id,
                attempt,
                owner,
                agent_id,
                result.KIND,
                payload_to_dict(result),
            )
            await self._finish(conn, task_id, result, with_event=False)
        return True

    async def _finish_root_attempts(self, ends: Sequence[AttemptEnd]) -> list[bool]:
        """End the tasks of these attempts, which have no parent, in one statement per
        owner; for each, whether it ended (not if superseded, or if it delegated)."""
        ended: set[tuple[str, int]] = set()
        async with self._pool.acquire() as conn:
            for owner in {end.owner for end in ends}:
                mine = [end for end in ends if end.owner == owner]
                rows = await conn.fetch(
                    q.FINISH_ROOT_ATTEMPTS,
                    owner,
                    [end.task_id for end in mine],
                    [end.attempt for end in mine],
                    [end.agent_id for end in mine],
                    [payload_to_dict(end.result) for end in mine],
                    [end.result.state.value for end in mine],
                    [storable(end.result.output[-OUTPUT_LIMIT:]) for end in mine],
                    [storable(end.result.error) for end in mine],
                    [end.result.exit_code for end in mine],
                    [usage_values(end.result.usage) for end in mine],
                    # Objects, not lists: a list in a list would be read as a 2-D array.
                    [
                        {
                            "events": [
                                {"kind": p.KIND, "payload": payload_to_dict(p)} for p in end.trail
                            ]
                        }
                        for end in mine
                    ],
                    [end.after_seq for end in mine],
                )
                attempts = {end.task_id: end.attempt for end in mine}
                ended.update((row["id"], attempts[row["id"]]) for row in rows)
        return [(end.task_id, end.attempt) in ended for end in ends]

    async def retry_attempt(
        self,
        task_id: str,
        attempt: int,
        owner: str,
        reason: str,
        *,
        backoff_seconds: float,
        counts: bool = True,
        only_if_expired: bool = False,
    ) -> TaskState | None:
        """The attempt was lost (node gone, lease expired): queue the next one, or fail.

        With `counts=False` the attempt never started (the node was full or not ready) and
        does not use up one of the task's attempts.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            check = q.OWNED_EXPIRED_ATTEMPT if only_if_expired else q.OWNED_ATTEMPT
            owned = await conn.fetchrow(check, task_id, attempt, owner)
            if owned is None:
                return None  # superseded, or (reaping) its lease was renewed meanwhile
            # What the lost attempt delegated goes with it; the next attempt plans anew.
            await self._end_delegated(conn, task_id, f"attempt {attempt} of its parent was lost")
            if counts and owned["attempt"] >= owned["max_attempts"]:
                message = f"attempt {attempt} lost ({reason}); no attempts left"
                await self._finish(conn, task_id, Result(TaskState.FAILED, error=message))
                return TaskState.FAILED
            if counts:
                row = await conn.fetchrow(q.RETRY_ATTEMPT, task_id, attempt, owner, reason)
                message = f"attempt {attempt} lost: {reason}; retrying in {backoff_seconds:g}s"
            else:
                row = await conn.fetchrow(q.GIVE_BACK_ATTEMPT, task_id, attempt, owner, reason)
                message = f"not started: {reason}; trying again"
            assert row is not None  # owned above, in this transaction
            await self._scheduler_event(conn, task_id, Status(TaskState.SUBMITTED, message))
            await conn.execute(q.ENQUEUE, task_id, row["priority"], backoff_seconds)
            await conn.execute(notify.WAKE_QUEUE)
        return TaskState.SUBMITTED

    async def fail_attempt(
        self, task_id: str, attempt: int, owner: str, agent_id: str, error: str
    ) -> bool:
        """End the task as failed for a reason the node gave before it could run it."""
        return await self.finish_attempt(
            task_id, attempt, owner, agent_id, Result(TaskState.FAILED, error=error)
        )

    async def release_owned(self, owner: str) -> None:
        """A stopping scheduler hands its attempts back now instead of letting leases expire."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(q.RELEASE_OWNED, owner)
        for row in rows:
            await self.retry_attempt(
                row["id"],
                row["attempt"],
                owner,
                f"scheduler {owner} stopped",
                backoff_seconds=0.0,
                counts=False,
            )

    async def renew_leases(
        self, owner: str, lease_seconds: float, live: list[tuple[str, int]]
    ) -> None:
        """Extend the leases of the attempts we are streaming; any other lease runs out."""
        if not live:
            return
        async with self._pool.acquire() as conn:
            await conn.execute(
                q.RENEW_LEASES, owner, lease_seconds, [t for t, _ in live], [a for _, a in live]
            )

    async def stale_attempts(self, owner: str, live: list[tuple[str, int]]) -> list[str]:
        """Which of these (task, attempt) pairs we stream no longer own their task."""
        if not live:
            return []
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                q.STALE_ATTEMPTS, owner, [t for t, _ in live], [a for _, a in live]
            )
        return [row["id"] for row in rows]

    async def reap_expired_leases(self, backoff_seconds: float, limit: int = 100) -> int:
        """Take over attempts whose scheduler stopped renewing their lease."""
        reaped = 0
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q.EXPIRED_LEASES, limit)
        for row in rows:
            state = await self.retry_attempt(
                row["id"],
                row["attempt"],
                row["lease_owner"],
                f"lease of scheduler {row['lease_owner']} expired",
                backoff_seconds=backoff_seconds,
                only_if_expired=True,
            )
            reaped += state is not None
        return reaped

    # ----------------------------------------------------------------- approvals

    async def await_approval(
        self, task_id: str, attempt: int, owner: str, refusal: Refusal
    ) -> bool:
        """The attempt's command was refused and the task asks its user (on_refusal = ask):
        it waits in input_required with a pending question. False if superseded."""
        waiting = f"waiting for its user to approve `{refusal.command}`"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            row = await conn.fetchrow(q.AWAIT_APPROVAL, task_id, attempt, owner, waiting)
            if row is None:
                return False
            # The attempt is over: what it delegated goes with it (its next one plans anew).
            await self._end_delegated(conn, task_id, f"attempt {attempt} of its parent ended")
            await conn.execute(
                q.INSERT_APPROVAL_REQUEST,
                task_id,
                attempt,
                row["user_name"] or "",
                refusal.command,
                refusal.rule,
                refusal.mode,
                refusal.detail,
            )
            message = (
                f"{waiting}, refused by rule {refusal.rule} in {refusal.mode} mode:"
                f" agentmesh approve {task_id} [--always], or agentmesh deny {task_id}"
            )
            await self._scheduler_event(conn, task_id, Status(TaskState.INPUT_REQUIRED, message))
        return True

    async def approve(self, task_id: str, *, always: bool, prefix: str) -> str:
        """Answer a waiting task's question yes: it runs again with the command (or every
        command beginning with `prefix`) permitted; `always` remembers that for its user.
        Returns what was permitted."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            request = await self._pending(conn, task_id)
            command = request["command"]
            if prefix and not permits(Approval(prefix, prefix=True), command):
                raise InvalidArgument(
                    "prefix", f"{prefix!r} does not begin the refused command `{command}`"
                )
            permitted = prefix or command
            await conn.execute(q.ANSWER_REQUEST, request["id"], "approved", permitted, bool(prefix))
            user = request["user_name"] or ""
            if always:
                note = f"approved for task {task_id}"
                await conn.execute(q.REMEMBER_APPROVAL, user, permitted, bool(prefix), note)
            await conn.execute(q.RESUME_APPROVED, task_id)
            what = f"every command beginning `{prefix}`" if prefix else f"`{command}`"
            kept = " (remembered for its user's later tasks)" if always else ""
            await self._scheduler_event(
                conn,
                task_id,
                Status(TaskState.SUBMITTED, f"its user approved {what}{kept}; queued again"),
            )
            await conn.execute(q.ENQUEUE, task_id, request["priority"], 0.0)
            await conn.execute(notify.WAKE_QUEUE)
        return permitted

    async def deny(self, task_id: str, reason: str) -> None:
        """Answer a waiting task's question no: it ends rejected."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            request = await self._pending(conn, task_id)
            await conn.execute(q.ANSWER_REQUEST, request["id"], "denied", None, False)
            error = f"its user denied `{request['command']}`" + (f": {reason}" if reason else "")
            await self._finish(conn, task_id, Result(TaskState.REJECTED, error=error))

    async def _pending(self, conn: Connection, task_id: str) -> asyncpg.Record:
        request = await conn.fetchrow(q.SELECT_PENDING_REQUEST, task_id)
        if request is not None:
            return request
        state = await conn.fetchval(q.SELECT_STATE, task_id)
        if state is None:
            raise NotFound(f"no task {task_id}")
        raise FailedPrecondition(f"task {task_id} is not waiting for an approval ({state})")

    async def approvals_for(self, task_id: str, user: str, command: str | None) -> list[Approval]:
        """What the task's next attempt may run by approval: what its user approved for it,
        and their remembered approvals that cover `command` (marked as used now); with no
        command (an agent's, not known yet), all of them."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(q.SELECT_APPROVALS_FOR, task_id, user)
            approvals = [Approval(row["command"], row["prefix"]) for row in rows]
            if command is None:
                return approvals
            used = [
                row["remembered_id"]
                for row, approval in zip(rows, approvals, strict=True)
                if row["remembered_id"] is not None and permits(approval, command)
            ]
            if used:
                await conn.execute(q.MARK_APPROVALS_USED, used)
        return [a for a in approvals if permits(a, command)]

    # ----------------------------------------------------------------- cancel

    async def cancel(self, task_id: str, reason: str) -> list[str]:
        """Cancel a task and its unfinished subtree; return the ids that were running."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.LOCK_TREE, task_id)
            row = await conn.fetchrow(q.SELECT_TASK_FOR_UPDATE, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            if TaskState(row["state"]).terminal:
                raise FailedPrecondition(f"task {task_id} already ended: {row['state']}")
            return await self._cancel_subtree(conn, task_id, reason or "canceled", propagate=True)

    async def _cancel_subtree(
        self, conn: Connection, task_id: str, reason: str, *, propagate: bool
    ) -> list[str]:
        """Cancel every unfinished task of a subtree, deepest first; return those that ran.

        Runs inside the caller's transaction, which holds the tree's lock. The replicas are
        told to stop every task that ends here, not only those seen running: an attempt may
        have started after this transaction's snapshot.
        """
        tree = await conn.fetch(q.SELECT_SUBTREE, task_id)
        running = [r["id"] for r in tree if r["lease_owner"] is not None]
        # Children first, so that the parent ends as canceled, not failed by a child.
        for node in reversed(tree):
            if TaskState(node["state"]).terminal:
                continue
            await self._finish(
                conn,
                node["id"],
                Result(TaskState.CANCELED, error=reason),
                propagate=propagate and node["id"] == task_id,
            )
            await conn.execute("SELECT pg_notify($1, $2)", notify.CANCEL_CHANNEL, node["id"])
        return running

    # ----------------------------------------------------------------- endings

    async def _finish(
        self,
        conn: Connection,
        task_id: str,
        result: Result,
        *,
        with_event: bool = True,
        propagate: bool = True,
    ) -> None:
        """End a task (once), then let its parent react. Runs inside the caller's transaction."""
        ended = await conn.fetchrow(
            q.FINISH_TASK,
            task_id,
            storable(result.output[-OUTPUT_LIMIT:]),
            result.state.value,
            storable(result.error),
            result.exit_code,
            usage_values(result.usage),
        )
        if ended is None:
            return  # it had ended already: a task ends once
        parent_id = ended["parent_id"]
        if with_event:
            await self._scheduler_event(conn, task_id, result)
        await conn.execute(q.DELETE_QUEUE_ROW, task_id)
        await conn.execute(q.FINISH_SUBTASK, task_id, result.state.value)
        await conn.execute(notify.WAKE_QUEUE)
        if ended["delegations"]:
            # A parent that ends leaves no running children behind.
            await self._end_delegated(conn, task_id, f"its parent {task_id} ended")
        # A delegated child's end is its agent's to read (through its tool), not an event
        # of the parent's tree: the parent neither waits for it nor fails with it.
        if parent_id is not None and propagate and not ended["delegated"]:
            await self._child_ended(conn, parent_id, task_id, result)

    async def _end_delegated(self, conn: Connection, task_id: str, reason: str) -> None:
        """Cancel the unfinished subtasks a task delegated (inside the caller's transaction,
        which holds the tree's lock)."""
        for row in await conn.fetch(q.SELECT_UNFINISHED_DELEGATED, task_id):
            await self._cancel_subtree(conn, row["id"], reason, propagate=False)

    async def _child_ended(
        self, conn: Connection, parent_id: str, child_id: str, result: Result
    ) -> None:
        # Siblings ending at once serialize on the parent's row.
        parent = await conn.fetchrow(q.SELECT_TASK_FOR_UPDATE, parent_id)
        if parent is None or TaskState(parent["state"]).terminal:
            return
        if result.state is not TaskState.COMPLETED:
            error = f"subtask {child_id} {result.state.value}: {result.error}".rstrip(": ")
            for sibling in await conn.fetch(q.SELECT_CHILD_RESULTS, parent_id):
                if not TaskState(sibling["state"]).terminal:
                    await self._cancel_subtree(
                        conn, sibling["id"], f"sibling {child_id} failed", propagate=False
                    )
            await self._finish(conn, parent_id, Result(TaskState.FAILED, error=error))
            return
        if await conn.fetchval(q.SIBLINGS_NOT_COMPLETED, parent_id):
            return
        if parent["kind"]:
            await self._scheduler_event(
                conn, parent_id, Status(TaskState.SUBMITTED, "subtasks completed; queued")
            )
            await conn.execute(
                "UPDATE tasks SET state = 'submitted', waiting_reason = '' WHERE id = $1",
                parent_id,
            )
            await conn.execute(q.ENQUEUE, parent_id, parent["priority"], 0.0)
            return
        children = await conn.fetch(q.SELECT_CHILD_RESULTS, parent_id)
        await self._finish(
            conn, parent_id, Result(TaskState.COMPLETED, output=summarize_children(children))
        )

    async def _scheduler_event(self, conn: Connection, task_id: str, payload: Payload) -> None:
        await conn.fetchval(
            q.APPEND_SCHEDULER_EVENT, task_id, payload.KIND, payload_to_dict(payload)
        )
        await conn.execute("SELECT pg_notify($1, $2)", notify.EVENTS_CHANNEL, task_id)


def summarize_children(children: Sequence[asyncpg.Record]) -> str:
    """The outputs of a task's subtasks, as context for the parent or as its own output."""
    parts = []
    for child in children:
        title = child["description"] or child["id"]
        where = f" (on {child['assigned_agent']})" if child["assigned_agent"] else ""
        parts.append(f"### {title}{where}\n{child['output'].strip()}")
    return "\n\n".join(parts)


def storable(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL characters."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _parent_note(parent_id: str | None) -> str:
    return f" as a subtask of {parent_id}" if parent_id else ""


def _count(status: str) -> int:
    """The row count of a command's status ("UPDATE 3")."""
    return int(status.rpartition(" ")[2])
