"""The command line's connection to the scheduler, and its errors in words.

The scheduler is at `--scheduler`, else `AGENTMESH_SCHEDULER`, else the configured
`scheduler.listen` (the local one); the channel carries the mesh token and the TLS settings
of the configuration, as every agentmesh process does. A failed call becomes a `CliError`:
one line for a person, with an exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

import grpc
from google.rpc import error_details_pb2, status_pb2

from agentmesh.config import Settings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import (
    keys_pb2_grpc,
    memory_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

if TYPE_CHECKING:  # the async stubs' types exist in the generated stubs only
    from agentmesh.v1.keys_pb2_grpc import KeyPoolAsyncStub
    from agentmesh.v1.memory_pb2_grpc import MemoryAsyncStub
    from agentmesh.v1.scheduler_pb2_grpc import SchedulerAsyncStub

Stub: TypeAlias = "SchedulerAsyncStub"
KeyPoolStub: TypeAlias = "KeyPoolAsyncStub"
MemoryStub: TypeAlias = "MemoryAsyncStub"

# Exit codes of every command (README: "The command line").
EXIT_OK = 0
EXIT_ERROR = 1  # the request could not be carried out (unreachable, refused, unknown id)
EXIT_USAGE = 2  # the request itself is wrong (flags, spec file, configuration, a field)
EXIT_FAILED = 3  # the task ended as failed
EXIT_CANCELED = 4  # the task ended as canceled
EXIT_REJECTED = 5  # the task was rejected (a permission rule refused it)
EXIT_INTERRUPTED = 130  # Ctrl-C

# A unary call that gets no answer within this long is reported, not waited on forever.
CALL_TIMEOUT = 20.0

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}  # noqa: S104


class CliError(Exception):
    """What went wrong, in one line, and the exit code that says so."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def scheduler_address(settings: Settings, override: str | None = None) -> str:
    """Where the scheduler is: the flag, AGENTMESH_SCHEDULER, or the configured listen address
    (a wildcard listen address means this machine)."""
    if override:
        return override
    if settings.env.AGENTMESH_SCHEDULER:
        return settings.env.AGENTMESH_SCHEDULER
    host, _, port = settings.scheduler.listen.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


@contextlib.asynccontextmanager
async def _scheduler_channel(settings: Settings, address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(address, token=settings.token, tls=settings.tls) as channel:
        try:
            yield channel
        except grpc.aio.AioRpcError as error:
            raise describe_rpc_error(error, address, token_set=settings.token is not None) from None


@contextlib.asynccontextmanager
async def scheduler_stub(settings: Settings, address: str) -> AsyncIterator[Stub]:
    """A scheduler client for the length of a command; its RPC errors become CliErrors."""
    async with _scheduler_channel(settings, address) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


@contextlib.asynccontextmanager
async def key_pool_stub(settings: Settings, address: str) -> AsyncIterator[KeyPoolStub]:
    """The scheduler's KeyPool service, as `scheduler_stub` gives its Scheduler service."""
    async with _scheduler_channel(settings, address) as channel:
        yield keys_pb2_grpc.KeyPoolStub(channel)


@contextlib.asynccontextmanager
async def memory_stub(settings: Settings, address: str) -> AsyncIterator[MemoryStub]:
    """The scheduler's Memory service (profiles, knowledge, the home network)."""
    async with _scheduler_channel(settings, address) as channel:
        yield memory_pb2_grpc.MemoryStub(channel)


async def get_task(stub: Stub, task_id: str) -> task_pb2.Task:
    return await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT)


async def task_events(stub: Stub, task_id: str) -> AsyncGenerator[task_pb2.TaskEvent, None]:
    """A task's events, its stored trace then what comes live, until its end: several to a
    message (WatchTaskEvents), or one by one from a scheduler older than that (WatchTask).
    Close it (contextlib.aclosing) to stop early: that ends the call."""
    request = scheduler_pb2.WatchTaskRequest(task_id=task_id)
    call = stub.WatchTaskEvents(request)
    try:
        async for batch in call:
            for event in batch.events:
                yield event
        return
    except grpc.aio.AioRpcError as error:
        if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
            raise
    finally:
        call.cancel()
    older = stub.WatchTask(request)
    try:
        async for event in older:
            yield event
    finally:
        older.cancel()


async def task_tree(stub: Stub, root_id: str) -> list[task_pb2.Task]:
    """The task and all its subtasks, parents before children."""
    tree = [await get_task(stub, root_id)]
    index = 0
    while index < len(tree):
        tree += await asyncio.gather(*(get_task(stub, child) for child in tree[index].child_ids))
        index += 1
    return tree


async def agent_names(stub: Stub) -> dict[str, str]:
    """Agent id -> name, for every agent the scheduler knows."""
    reply = await stub.ListAgents(
        scheduler_pb2.ListAgentsRequest(include_offline=True), timeout=CALL_TIMEOUT
    )
    return {agent.card.agent_id: agent.card.name for agent in reply.agents}


def describe_rpc_error(error: grpc.aio.AioRpcError, address: str, *, token_set: bool) -> CliError:
    """A failed call in words: what a person needs to act on it."""
    code = error.code()
    details = (error.details() or "").strip()
    if code is grpc.StatusCode.UNAVAILABLE:
        why = _unavailable_reason(details)
        return CliError(f"cannot reach the scheduler at {address}" + (f": {why}" if why else ""))
    if code is grpc.StatusCode.UNAUTHENTICATED:
        if not token_set:
            return CliError(f"the scheduler at {address} needs a token: set AGENTMESH_TOKEN")
        return CliError("the scheduler refused the token (AGENTMESH_TOKEN)")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"the scheduler at {address} did not answer in time")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return CliError(f"invalid request: {_field_problem(error) or details}", EXIT_USAGE)
    if code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    ):
        return CliError(details or code.name.lower())
    return CliError(f"the scheduler answered {code.name}: {details}".rstrip(": "))


def _unavailable_reason(details: str) -> str:
    """What gRPC's words for an unreachable server most likely mean."""
    words = details.lower()
    if "connection refused" in words:
        return "connection refused (is it running there?)"
    if "socket closed" in words or "handshake" in words or "ssl" in words:
        # A plaintext client at a TLS server, or a missing or untrusted certificate.
        return "it closed the connection (do the tls settings match the scheduler's?)"
    return ""


def _field_problem(error: grpc.aio.AioRpcError) -> str:
    """`field: problem` from the google.rpc.BadRequest the scheduler attaches, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request) and bad_request.field_violations:
                violation = bad_request.field_violations[0]
                return f"{violation.field}: {violation.description}"
    return ""
