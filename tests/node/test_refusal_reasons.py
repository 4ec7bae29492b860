"""Every refusal of ExecuteTask names its reason in google.rpc.ErrorInfo, for the scheduler."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.errors import Reason
from agentmesh.rpc.errors import reason_of
from agentmesh.v1 import node_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import collect, execute


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)  # type: ignore[arg-type]
    return caught.value


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    for detail in status_pb2.Status.FromString(details).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {error}")


async def test_each_refusal_carries_its_reason(start_node: StartNode) -> None:
    agent, stub = await start_node(
        max_concurrency=1, env={"GEMINI_CLI_COMMAND": "/nonexistent/gemini"}
    )
    long_call = stub.ExecuteTask(
        execute("held-1", kind="shell", command="sleep 300", permission_mode="superuser")
    )
    await long_call.read()

    duplicate = await refusal(stub.ExecuteTask(execute("held-1", kind="echo", prompt="x")))
    full = await refusal(stub.ExecuteTask(execute("other-1", kind="echo", prompt="x")))
    bad = await refusal(stub.ExecuteTask(execute("other-2", kind="echo")))
    no_executor = await refusal(stub.ExecuteTask(execute("other-3", kind="gemini", prompt="x")))
    agent.runner.drain()
    draining = await refusal(stub.ExecuteTask(execute("other-4", kind="echo", prompt="x")))

    assert {
        Reason.DUPLICATE_ATTEMPT: duplicate,
        Reason.NODE_FULL: full,
        Reason.BAD_SPEC: bad,
        Reason.NO_EXECUTOR: no_executor,
        Reason.NODE_DRAINING: draining,
    } == {reason_of(error): error for error in (duplicate, full, bad, no_executor, draining)}
    assert draining.code() is grpc.StatusCode.UNAVAILABLE
    assert duplicate.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_info(full).domain == "agentmesh"
    assert error_info(full).reason == "NODE_FULL"
    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="held-1"))
    await collect(long_call)
