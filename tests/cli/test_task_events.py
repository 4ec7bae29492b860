"""How the command line reads a task's events: batched from a scheduler that has
WatchTaskEvents, one by one from one that has only WatchTask, on a real gRPC server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from agentmesh.cli.client import task_events
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

EVENTS = [task_pb2.TaskEvent(task_id="t-1", seq=n) for n in range(1, 6)]


class OlderScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """A scheduler from before WatchTaskEvents: the base class answers it UNIMPLEMENTED."""

    async def WatchTask(self, request, context):  # type: ignore[no-untyped-def]
        if request.task_id != "t-1":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        for event in EVENTS:
            yield event


class Scheduler(OlderScheduler):
    async def WatchTaskEvents(self, request, context):  # type: ignore[no-untyped-def]
        if request.task_id != "t-1":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        yield scheduler_pb2.TaskEventBatch(events=EVENTS[:2])
        yield scheduler_pb2.TaskEventBatch(events=EVENTS[2:])


@contextlib.asynccontextmanager
async def serving(servicer: OlderScheduler) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield scheduler_pb2_grpc.SchedulerStub(channel)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("servicer", [Scheduler, OlderScheduler], ids=["batched", "older"])
async def test_every_event_comes_once_in_order(servicer: type[OlderScheduler]) -> None:
    async with serving(servicer()) as stub:
        assert [event async for event in task_events(stub, "t-1")] == EVENTS


@pytest.mark.parametrize("servicer", [Scheduler, OlderScheduler], ids=["batched", "older"])
async def test_an_unknown_task_is_the_scheduler_s_error(servicer: type[OlderScheduler]) -> None:
    async with serving(servicer()) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [event async for event in task_events(stub, "t-2")]
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no task t-2"
