"""`agentmesh.v1.AgentNode` over gRPC: the only node module that knows the generated code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agentmesh.errors import AgentmeshError, AlreadyExists, InvalidArgument, Reason
from agentmesh.node.card import AgentCard
from agentmesh.node.permissions.approvals import Approval
from agentmesh.node.runner import ExecuteRequest, TaskRunner
from agentmesh.rpc import convert
from agentmesh.rpc.errors import abort, status_code_for, streaming, unary
from agentmesh.rpc.request_shape import (
    CheckedWork,
    RefusedRequest,
    SpecShape,
    WorkShape,
    add_checked,
)
from agentmesh.rpc.work_stream import ACCEPTED
from agentmesh.tasks.model import SCHEDULER_ONLY_FIELDS, validate_task_id
from agentmesh.v1 import agent_pb2, node_pb2, node_pb2_grpc, task_pb2

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["AgentNode"].full_name
# A gemini task's context (its GEMINI.md); the scheduler's is a few thousand tokens.
MAX_CONTEXT_CHARS = 1 << 20
# Work: how many items (events, errors) one update carries at most, and how many may wait
# to be sent before the attempts producing them wait in turn (the stream's flow control).
MAX_UPDATE_ITEMS = 256
OUTBOX_ITEMS = 4096
# Work: the most attempts one request may start (a round's worth for one node).
MAX_STARTS = 1024


class AgentNodeServicer(node_pb2_grpc.AgentNodeServicer):
    def __init__(self, runner: TaskRunner, card: Callable[[], AgentCard]) -> None:
        self._runner = runner
        self._card = card

    @unary
    async def GetCapabilities(
        self, request: node_pb2.GetCapabilitiesRequest, context: Context
    ) -> agent_pb2.AgentCard:
        return convert.card_to_proto(self._card())

    @streaming
    async def ExecuteTask(
        self, request: node_pb2.ExecuteTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        async for event in self._execute(request):
            yield event

    # Its requests arrive checked (see register): as CheckedWork, not WorkRequest.
    async def Work(  # type: ignore[override]
        self, requests: AsyncIterator[CheckedWork | RefusedRequest], context: Context
    ) -> AsyncIterator[node_pb2.WorkUpdate]:
        """Run the attempts the requests start, until the requests end and they have."""
        # Headers first, with the mark: the client writes once it has it (see
        # agentmesh.rpc.work_stream), so none of its writes races a refusal.
        await context.send_initial_metadata((ACCEPTED,))
        work = _WorkStream(self._execute, self._runner.stopping)
        try:
            async for update in work.serve(requests):
                yield update
        except AgentmeshError as error:
            await abort(context, error)

    async def _execute(
        self, request: node_pb2.ExecuteTaskRequest
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        """One attempt's events; AgentmeshError if the node does not start it."""
        if request.attempt < 0:
            raise InvalidArgument("attempt", "must not be negative")
        if request.token_budget < 0:
            raise InvalidArgument("token_budget", "must not be negative (0 = no limit)")
        if len(request.context) > MAX_CONTEXT_CHARS:
            raise InvalidArgument(
                "context", f"must be at most {MAX_CONTEXT_CHARS} characters", reason=Reason.BAD_SPEC
            )
        execute = ExecuteRequest(
            task_id=request.task_id,
            attempt=request.attempt or 1,
            spec=convert.spec_from_proto(request.spec),
            api_key=request.api_key,
            key_fingerprint=request.key_fingerprint,
            token_budget=request.token_budget,
            mesh_credential=request.mesh_credential,
            context=request.context,
            approvals=tuple(Approval(a.command, a.prefix) for a in request.approvals),
        )
        async for event in self._runner.execute(execute):
            yield convert.event_to_proto(event)

    @unary
    async def CancelTask(
        self, request: node_pb2.CancelTaskRequest, context: Context
    ) -> node_pb2.CancelTaskResponse:
        validate_task_id(request.task_id)
        canceled = self._runner.cancel(request.task_id)
        return node_pb2.CancelTaskResponse(task_id=request.task_id, canceled=canceled)


class _WorkStream:
    """One Work call: its attempts, each in a task of its own, and the updates they send."""

    def __init__(
        self,
        execute: Callable[[node_pb2.ExecuteTaskRequest], AsyncIterator[task_pb2.TaskEvent]],
        stopping: asyncio.Event,
    ) -> None:
        self._execute = execute
        # The node is shutting down: the client is told (WorkUpdate.draining), and the stream
        # ends once it has half-closed, as always; the server's stop ends one that does not.
        self._stopping = stopping
        self._told_draining = False
        self._runs: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._outbox: asyncio.Queue[task_pb2.TaskEvent | node_pb2.AttemptError] = asyncio.Queue(
            OUTBOX_ITEMS
        )
        self._requests_ended = False
        # Something to do: an item in the outbox, the requests ended, an attempt ended, or
        # the node began to shut down. (One event for all: waiting on each in a future of its
        # own cost the stream three tasks per update.)
        self._wake = asyncio.Event()

    async def serve(
        self, requests: AsyncIterator[CheckedWork | RefusedRequest]
    ) -> AsyncIterator[node_pb2.WorkUpdate]:
        reader = asyncio.create_task(self._read(requests), name="work requests")
        stopping = asyncio.create_task(self._relay_stopping(), name="work stopping")
        try:
            while not (self._ended() and self._outbox.empty()):
                draining = self._stopping.is_set() and not self._told_draining
                if self._outbox.empty() and not draining:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                items: list[task_pb2.TaskEvent | node_pb2.AttemptError] = []
                while len(items) < MAX_UPDATE_ITEMS and not self._outbox.empty():
                    items.append(self._outbox.get_nowait())
                self._told_draining |= draining
                yield node_pb2.WorkUpdate(
                    events=[i for i in items if isinstance(i, task_pb2.TaskEvent)],
                    errors=[i for i in items if isinstance(i, node_pb2.AttemptError)],
                    draining=draining,
                )
            if reader.done() and not reader.cancelled() and (error := reader.exception()):
                raise error
        finally:
            reader.cancel()
            stopping.cancel()
            runs = list(self._runs.values())
            for run in runs:
                run.cancel()  # the stream is gone: so are the attempts it started
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, stopping, *runs, return_exceptions=True)

    async def _relay_stopping(self) -> None:
        await self._stopping.wait()
        self._wake.set()

    async def _post(self, item: task_pb2.TaskEvent | node_pb2.AttemptError) -> None:
        """Queue an item for the next update (waits while the outbox is full)."""
        await self._outbox.put(item)
        self._wake.set()

    def _ended(self) -> bool:
        """Nothing runs, and nothing more will start: the client has half-closed."""
        return not self._runs and self._requests_ended

    async def _read(self, requests: AsyncIterator[CheckedWork | RefusedRequest]) -> None:
        try:
            async for checked in requests:
                if isinstance(checked, RefusedRequest):
                    raise checked.error  # not even its top level is a WorkRequest
                for task_id, attempt, refusal in checked.refused:
                    await self._post(_attempt_error(task_id, attempt, refusal))
                request: node_pb2.WorkRequest = checked.request
                for stop in request.stop:
                    if (run := self._runs.get((stop.task_id, stop.attempt))) is not None:
                        run.cancel()
                for start in request.start:
                    key = (start.task_id, start.attempt or 1)
                    if key in self._runs:
                        error = AlreadyExists(
                            f"attempt {key[1]} of task {key[0]} is already running here",
                            reason=Reason.DUPLICATE_ATTEMPT,
                        )
                        await self._post(_attempt_error(*key, error))
                        continue
                    self._runs[key] = asyncio.create_task(
                        self._run(key, start), name=f"attempt {key[0]}"
                    )
        finally:
            self._requests_ended = True
            self._wake.set()

    async def _run(self, key: tuple[str, int], request: node_pb2.ExecuteTaskRequest) -> None:
        try:
            async for event in self._execute(request):
                await self._post(event)
        except AgentmeshError as error:
            await self._post(_attempt_error(*key, error))
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("attempt failed", extra={"task_id": key[0], "attempt": key[1]})
            await self._post(
                node_pb2.AttemptError(
                    task_id=key[0],
                    attempt=key[1],
                    code=grpc.StatusCode.INTERNAL.value[0],
                    message="internal error in the node; see its log",
                )
            )
        finally:
            del self._runs[key]
            self._wake.set()


def _attempt_error(task_id: str, attempt: int, error: AgentmeshError) -> node_pb2.AttemptError:
    """What ExecuteTask's status would have said, for one attempt of a Work stream."""
    return node_pb2.AttemptError(
        task_id=task_id,
        attempt=attempt,
        code=status_code_for(error).value[0],
        message=str(error),
        reason=error.reason.value if error.reason is not None else "",
    )


# One task, and only the fields a node acts on: the rest is refused, not ignored.
EXECUTE_SHAPE = SpecShape(
    max_tasks=1, max_depth=0, refused_fields=SCHEDULER_ONLY_FIELDS, reason=Reason.BAD_SPEC
)
_EXECUTE_FIELDS = node_pb2.ExecuteTaskRequest.DESCRIPTOR.fields_by_name
WORK_SHAPE = WorkShape(
    start_field=node_pb2.WorkRequest.DESCRIPTOR.fields_by_name["start"].number,
    id_field=_EXECUTE_FIELDS["task_id"].number,
    attempt_field=_EXECUTE_FIELDS["attempt"].number,
    spec_field=_EXECUTE_FIELDS["spec"].number,
    shape=EXECUTE_SHAPE,
    max_starts=MAX_STARTS,
)


def register(servicer: AgentNodeServicer) -> Callable[[grpc.aio.Server], None]:
    """Add the service; ExecuteTask's spec is checked on the wire before it is parsed."""
    spec = node_pb2.ExecuteTaskRequest.DESCRIPTOR.fields_by_name["spec"].number
    return lambda server: add_checked(
        node_pb2_grpc.add_AgentNodeServicer_to_server,
        servicer,
        server,
        SERVICE_NAME,
        {"ExecuteTask": (spec, EXECUTE_SHAPE), "Work": WORK_SHAPE},
    )
