"""`agentmesh.v1.Scheduler` over gRPC: the only scheduler module that knows the generated code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.access.credentials import NodeIdentity
from agentmesh.access.task_credentials import TaskIdentity
from agentmesh.config import PermissionMode
from agentmesh.errors import InvalidArgument, PermissionDenied
from agentmesh.keys.held import validate_held_keys
from agentmesh.memory.profiles import Profiles
from agentmesh.node.permissions.approvals import words
from agentmesh.rpc import auth, convert
from agentmesh.rpc.errors import streaming, unary
from agentmesh.rpc.request_shape import SpecShape, add_checked
from agentmesh.scheduler.agents import AgentRegistry, AgentView, HostEntry
from agentmesh.scheduler.approvals import ApprovalBook, ApprovalView
from agentmesh.scheduler.delegation import DelegationLimits, shape_delegation, validate_delegation
from agentmesh.scheduler.notifications import TaskSignals
from agentmesh.scheduler.store import TaskRecord, TaskStore
from agentmesh.scheduler.validation import (
    MAX_TASKS_PER_SUBMISSION,
    users_of,
    validate_submission,
    validate_submissions,
    with_defaults,
    with_user_modes,
)
from agentmesh.scheduler.watch import wait_for_end, watch_pages
from agentmesh.tasks.events import usage_values
from agentmesh.tasks.model import AgentMode, TaskSpec, validate_task_id
from agentmesh.v1 import node_pb2, scheduler_pb2, scheduler_pb2_grpc, task_pb2

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
MAX_PAGE_SIZE = 1000
# The longest a GetTask or DelegateTask waits for a task to end, in one call.
MAX_WAIT_SECONDS = 3600.0
# WatchTaskEvents starts a new message once one holds this much (clients take 4 MiB).
BATCH_BYTES = 1 << 20


def _timestamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    convert.set_datetime(stamp, value)
    return stamp


def task_to_proto(task: TaskRecord) -> task_pb2.Task:
    message = task_pb2.Task(
        id=task.id,
        state=convert.state_to_proto(task.state),
        parent_id=task.parent_id,
        assigned_agent=task.assigned_agent,
        attempt=task.attempt,
        spec=convert.spec_to_proto(task.spec),
        child_ids=task.child_ids,
        usage=task_pb2.Usage(**usage_values(task.usage)),
        waiting_reason=task.waiting_reason,
        output=task.output,
        error=task.error,
        exit_code=task.exit_code,
        max_attempts=task.max_attempts,
        last_seq=task.last_seq,
        replay_of=task.replay_of,
    )
    for name in ("created_at", "started_at", "finished_at"):
        if (value := getattr(task, name)) is not None:
            convert.set_datetime(getattr(message, name), value)
    return message


def agent_to_proto(view: AgentView, running: tuple[str, ...] = ()) -> scheduler_pb2.AgentStatus:
    return scheduler_pb2.AgentStatus(
        card=convert.card_to_proto(view.card),
        status=view.status,
        last_heartbeat=_timestamp(view.last_heartbeat),
        running_task_ids=running,
    )


def host_to_proto(host: HostEntry) -> scheduler_pb2.Host:
    return scheduler_pb2.Host(
        host_name=host.host_name,
        ip_address=host.ip_address,
        service=host.service,
        tags=host.tags,
        notes=host.notes,
        last_seen=_timestamp(host.last_seen),
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self,
        store: TaskStore,
        registry: AgentRegistry,
        signals: TaskSignals,
        *,
        max_depth: int,
        heartbeat_interval: float,
        on_cancel: Callable[[list[str]], None],
        default_agent_mode: AgentMode,
        delegation: DelegationLimits,
        profiles: Profiles | None = None,
        approvals: ApprovalBook | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._signals = signals
        self._max_depth = max_depth
        self._heartbeat_interval = heartbeat_interval
        self._on_cancel = on_cancel
        self._default_agent_mode = default_agent_mode
        self._delegation = delegation
        # Users' profiles: a task without a permission mode runs in its user's default.
        self._profiles = profiles
        self._approvals = approvals

    @property
    def max_depth(self) -> int:
        return self._max_depth

    async def _submit(self, request: scheduler_pb2.SubmitTaskRequest) -> TaskRecord:
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "is required")
        spec: TaskSpec = convert.spec_from_proto(request.spec)
        validate_submission(spec, max_depth=self._max_depth)
        if request.replay_of:
            validate_task_id(request.replay_of, "replay_of")
        (spec,) = await self._filled([spec])
        return await self._store.submit_and_get(spec, replay_of=request.replay_of)

    async def _filled(self, specs: list[TaskSpec]) -> list[TaskSpec]:
        """The specs as they are stored: with the configured agent mode, and their users'
        default permission modes where they name none (read once for all)."""
        specs = [with_defaults(spec, agent_mode=self._default_agent_mode) for spec in specs]
        users = set().union(*(users_of(spec) for spec in specs))
        if self._profiles is None or not users:
            return specs
        modes = await self._profiles.default_modes(users)
        return [with_user_modes(spec, modes) for spec in specs]

    @unary
    async def SubmitTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: Context
    ) -> task_pb2.Task:
        return task_to_proto(await self._submit(request))

    @unary
    async def SubmitTasks(
        self, request: scheduler_pb2.SubmitTasksRequest, context: Context
    ) -> scheduler_pb2.SubmitTasksResponse:
        specs = [convert.spec_from_proto(spec) for spec in request.specs]
        validate_submissions(specs, max_depth=self._max_depth)
        records = await self._store.submit_many(await self._filled(specs))
        return scheduler_pb2.SubmitTasksResponse(tasks=[task_to_proto(r) for r in records])

    @streaming
    async def RunTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        task = await self._submit(request)
        async for event in _one_by_one(watch_pages(self._store, self._signals, task.id, 0)):
            yield event

    @streaming
    async def WatchTask(
        self, request: scheduler_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        async for event in _one_by_one(self._watch(request)):
            yield event

    @streaming
    async def WatchTaskEvents(
        self, request: scheduler_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.TaskEventBatch]:
        async for page in self._watch(request):
            batch, size = scheduler_pb2.TaskEventBatch(), 0
            for row in page:
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = scheduler_pb2.TaskEventBatch(), 0
                size += convert.stored_event_to_proto(row, batch.events.add()).ByteSize()
            yield batch

    def _watch(self, request: scheduler_pb2.WatchTaskRequest) -> AsyncIterator[list[Any]]:
        validate_task_id(request.task_id)
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        return watch_pages(self._store, self._signals, request.task_id, request.after_seq)

    @unary
    async def GetTask(
        self, request: scheduler_pb2.GetTaskRequest, context: Context
    ) -> task_pb2.Task:
        validate_task_id(request.task_id)
        wait = _wait_seconds(request.wait_seconds)
        if isinstance(task := auth.caller(), TaskIdentity):
            await self._store.check_mesh_reach(task.task_id, task.attempt, request.task_id)
        if wait:
            await self._store.state(request.task_id)  # NotFound before any wait
            await wait_for_end(self._store, self._signals, request.task_id, wait)
        return task_to_proto(await self._store.get(request.task_id))

    @unary
    async def DelegateTask(
        self, request: scheduler_pb2.DelegateTaskRequest, context: Context
    ) -> task_pb2.Task:
        parent = auth.caller()
        # The access policy lets only mesh credentials in; this is its second line.
        if not isinstance(parent, TaskIdentity):
            raise PermissionDenied("DelegateTask needs the mesh credential of a running task")
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "is required")
        if request.parent_tokens_spent < 0:
            raise InvalidArgument("parent_tokens_spent", "must not be negative")
        wait = _wait_seconds(request.wait_seconds)
        spec: TaskSpec = convert.spec_from_proto(request.spec)
        validate_delegation(spec)
        child_id = await self._store.delegate(
            parent.task_id,
            parent.attempt,
            lambda row: shape_delegation(
                row, spec, self._delegation, parent_tokens_spent=request.parent_tokens_spent
            ),
        )
        if wait:
            await wait_for_end(self._store, self._signals, child_id, wait)
        return task_to_proto(await self._store.get(child_id))

    @unary
    async def ListTasks(
        self, request: scheduler_pb2.ListTasksRequest, context: Context
    ) -> scheduler_pb2.ListTasksResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        state = (
            convert.state_from_proto(request.state)
            if request.state != task_pb2.TASK_STATE_UNSPECIFIED
            else None
        )
        records, token = await self._store.list_tasks(
            state=state,
            user=request.user,
            parent_id=request.parent_id,
            page_size=request.page_size or 50,
            page_token=request.page_token,
            created_after=(
                request.created_after.ToDatetime(tzinfo=UTC)
                if request.HasField("created_after")
                else None
            ),
        )
        return scheduler_pb2.ListTasksResponse(
            tasks=[task_to_proto(r) for r in records], next_page_token=token
        )

    @unary
    async def CancelTask(
        self, request: node_pb2.CancelTaskRequest, context: Context
    ) -> task_pb2.Task:
        validate_task_id(request.task_id)
        running = await self._store.cancel(request.task_id, request.reason or "canceled by request")
        self._on_cancel(running)
        return task_to_proto(await self._store.get(request.task_id))

    @unary
    async def ListApprovals(
        self, request: scheduler_pb2.ListApprovalsRequest, context: Context
    ) -> scheduler_pb2.ListApprovalsResponse:
        book = self._approval_book()
        views = await (book.remembered if request.remembered else book.pending)(request.user)
        return scheduler_pb2.ListApprovalsResponse(approvals=[approval_to_proto(v) for v in views])

    @unary
    async def ApproveTask(
        self, request: scheduler_pb2.ApproveTaskRequest, context: Context
    ) -> task_pb2.Task:
        validate_task_id(request.task_id)
        if request.prefix and not words(request.prefix):
            raise InvalidArgument("prefix", "must be plain words (no shell syntax)")
        await self._store.approve(request.task_id, always=request.always, prefix=request.prefix)
        return task_to_proto(await self._store.get(request.task_id))

    @unary
    async def DenyTask(
        self, request: scheduler_pb2.DenyTaskRequest, context: Context
    ) -> task_pb2.Task:
        validate_task_id(request.task_id)
        await self._store.deny(request.task_id, request.reason[:500])
        return task_to_proto(await self._store.get(request.task_id))

    @unary
    async def ForgetApproval(
        self, request: scheduler_pb2.ForgetApprovalRequest, context: Context
    ) -> scheduler_pb2.Approval:
        if request.id <= 0:
            raise InvalidArgument("id", "must be a remembered approval's id")
        return approval_to_proto(await self._approval_book().forget(request.id))

    def _approval_book(self) -> ApprovalBook:
        if self._approvals is None:
            raise PermissionDenied("this scheduler keeps no approvals")
        return self._approvals

    @unary
    async def ListAgents(
        self, request: scheduler_pb2.ListAgentsRequest, context: Context
    ) -> scheduler_pb2.ListAgentsResponse:
        if isinstance(task := auth.caller(), TaskIdentity):
            await self._store.check_mesh_reach(task.task_id, task.attempt, None)
        views = await self._registry.list_agents(include_offline=request.include_offline)
        return scheduler_pb2.ListAgentsResponse(agents=[agent_to_proto(v) for v in views])

    @unary
    async def ListHosts(
        self, request: scheduler_pb2.ListHostsRequest, context: Context
    ) -> scheduler_pb2.ListHostsResponse:
        hosts = await self._registry.list_hosts()
        return scheduler_pb2.ListHostsResponse(hosts=[host_to_proto(h) for h in hosts])

    @unary
    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: Context
    ) -> scheduler_pb2.HeartbeatResponse:
        if not request.HasField("card") or not request.card.agent_id:
            raise InvalidArgument("card.agent_id", "is required")
        if not request.card.endpoint:
            raise InvalidArgument("card.endpoint", "is required: where the scheduler dials")
        if request.card.max_permission_mode not in ("", *PermissionMode):
            raise InvalidArgument(
                "card.max_permission_mode", f"must be one of {', '.join(PermissionMode)}"
            )
        card = convert.card_from_proto(request.card)
        validate_held_keys(card.held_keys)
        # Under a node credential (a secured mesh; the access policy let only those in).
        caller = auth.caller()
        identity = caller if isinstance(caller, NodeIdentity) else None
        secret = await self._registry.heartbeat(card, tuple(request.running_task_ids), identity)
        return scheduler_pb2.HeartbeatResponse(
            interval_seconds=self._heartbeat_interval, dispatch_secret=secret
        )


def approval_to_proto(view: ApprovalView) -> scheduler_pb2.Approval:
    message = scheduler_pb2.Approval(
        id=view.id,
        task_id=view.task_id,
        user=view.user,
        command=view.command,
        prefix=view.prefix,
        rule=view.rule,
        mode=view.mode,
        detail=view.detail,
    )
    for name in ("created_at", "last_used"):
        stamp = _timestamp(getattr(view, name))
        if stamp is not None:
            getattr(message, name).CopyFrom(stamp)
    return message


def _wait_seconds(value: float) -> float:
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise InvalidArgument("wait_seconds", f"must be between 0 and {MAX_WAIT_SECONDS:g}")
    return value


def register(servicer: SchedulerServicer) -> Callable[[grpc.aio.Server], None]:
    """Add the service; a submission's tree is checked on the wire (how many tasks, how deep)
    before it is parsed, so that no request size can keep the scheduler busy."""
    shape = SpecShape(max_tasks=MAX_TASKS_PER_SUBMISSION, max_depth=servicer.max_depth)
    spec = scheduler_pb2.SubmitTaskRequest.DESCRIPTOR.fields_by_name["spec"].number
    delegated = scheduler_pb2.DelegateTaskRequest.DESCRIPTOR.fields_by_name["spec"].number
    specs = scheduler_pb2.SubmitTasksRequest.DESCRIPTOR.fields_by_name["specs"].number
    checks: dict[str, tuple[int, SpecShape] | tuple[int, SpecShape, str]] = {
        "SubmitTask": (spec, shape),
        "SubmitTasks": (specs, shape, "specs"),
        "RunTask": (spec, shape),
        "DelegateTask": (delegated, SpecShape(max_tasks=1, max_depth=0)),
    }
    return lambda server: add_checked(
        scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer, server, SERVICE_NAME, checks
    )


async def _one_by_one(pages: AsyncIterator[list[Any]]) -> AsyncIterator[task_pb2.TaskEvent]:
    async for page in pages:
        for row in page:
            yield convert.stored_event_to_proto(row)
