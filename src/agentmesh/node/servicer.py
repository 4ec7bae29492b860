"""`agentmesh.v1.AgentNode` over gRPC: the only node module that knows the generated code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agentmesh.errors import InvalidArgument, Reason
from agentmesh.node.card import AgentCard
from agentmesh.node.permissions.approvals import Approval
from agentmesh.node.runner import ExecuteRequest, TaskRunner
from agentmesh.rpc import convert
from agentmesh.rpc.errors import streaming, unary
from agentmesh.rpc.request_shape import SpecShape, add_checked
from agentmesh.tasks.model import SCHEDULER_ONLY_FIELDS, validate_task_id
from agentmesh.v1 import agent_pb2, node_pb2, node_pb2_grpc, task_pb2

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["AgentNode"].full_name
# A gemini task's context (its GEMINI.md); the scheduler's is a few thousand tokens.
MAX_CONTEXT_CHARS = 1 << 20


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


# One task, and only the fields a node acts on: the rest is refused, not ignored.
EXECUTE_SHAPE = SpecShape(
    max_tasks=1, max_depth=0, refused_fields=SCHEDULER_ONLY_FIELDS, reason=Reason.BAD_SPEC
)


def register(servicer: AgentNodeServicer) -> Callable[[grpc.aio.Server], None]:
    """Add the service; ExecuteTask's spec is checked on the wire before it is parsed."""
    spec = node_pb2.ExecuteTaskRequest.DESCRIPTOR.fields_by_name["spec"].number
    return lambda server: add_checked(
        node_pb2_grpc.add_AgentNodeServicer_to_server,
        servicer,
        server,
        SERVICE_NAME,
        {"ExecuteTask": (spec, EXECUTE_SHAPE)},
    )
