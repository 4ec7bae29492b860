"""A scheduler's way to one node: many attempts over one `AgentNode.Work` stream.

A call per task costs both sides more than the task itself when the task is short (an
`echo`): the link keeps one stream open per node and endpoint secret, sends the attempts
a round starts there in one message, and hands each attempt its own events as if it had a
call of its own. The stream breaking breaks every attempt on it, with the call's status;
the next attempt opens a new stream. A node that shuts down says so on the stream: the
attempts not yet sent there are refused as a draining node refuses them, and the link
half-closes once the ones it sent have ended (the node ends the stream after that, so no
write races its end). A node that does not know `Work` (an older version) gets one
ExecuteTask call per attempt instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from agentmesh.config import TlsSettings
from agentmesh.errors import Reason
from agentmesh.rpc.channel import open_channel
from agentmesh.rpc.errors import reason_of
from agentmesh.rpc.work_stream import accepted
from agentmesh.v1 import node_pb2, node_pb2_grpc, task_pb2

log = logging.getLogger(__name__)

# Events an attempt may have waiting before the link stops reading the stream (and the
# node, by flow control, stops sending): a slow consumer holds the others back, but memory
# stays bounded.
MAX_WAITING_EVENTS = 1024
# How long the link waits for a new stream's headers, and then for a stream without the
# mark of a taken one (agentmesh.rpc.work_stream) to end, before it writes anyway: nodes of
# earlier versions send no mark, and the oldest no headers until their first update.
HEADERS_SECONDS = 1.0

_CODES = {code.value[0]: code for code in grpc.StatusCode}


# Not frozen: Python sets an exception's __traceback__ as it passes through a context
# manager, which a frozen dataclass refuses (FrozenInstanceError in place of this error).
@dataclass(eq=False)
class CallError(Exception):
    """How an attempt's call (its own, or the stream it shared) ended, if not with a result."""

    code: grpc.StatusCode
    details: str
    reason: Reason | None = None

    @classmethod
    def of_rpc(cls, error: grpc.aio.AioRpcError) -> CallError:
        return cls(error.code(), error.details() or error.code().name, reason_of(error))

    @classmethod
    def of_attempt(cls, error: node_pb2.AttemptError) -> CallError:
        try:
            reason = Reason(error.reason) if error.reason else None
        except ValueError:
            reason = None  # a reason from a newer version: treat as none
        return cls(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.message, reason)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class _Attempt:
    """One attempt's share of a stream: its events as they come, then how it ended."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.events: collections.deque[task_pb2.TaskEvent] = collections.deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.broken: CallError | None = None
        self.ended = False  # its result came
        self.call: object = None  # the stream it was sent on

    def put(self, event: task_pb2.TaskEvent) -> None:
        self.events.append(event)
        if event.HasField("result"):
            self.ended = True
        if len(self.events) >= MAX_WAITING_EVENTS:
            self.room.clear()
        self.ready.set()

    def break_with(self, error: CallError) -> None:
        if self.broken is None and not self.ended:
            self.broken = error
        self.ready.set()
        self.room.set()

    async def get(self) -> task_pb2.TaskEvent | None:
        """The next event; None after the result; CallError if the call broke first."""
        while not self.events:
            if self.ended:
                return None
            if self.broken is not None:
                raise self.broken
            self.ready.clear()
            await self.ready.wait()
        event = self.events.popleft()
        if len(self.events) < MAX_WAITING_EVENTS // 2:
            self.room.set()
        return event


class NodeLink:
    """The Work stream to one node (endpoint and secret), opened when first needed."""

    def __init__(self, stub: node_pb2_grpc.AgentNodeAsyncStub, name: str) -> None:
        self._stub = stub
        self._name = name
        self._call: grpc.aio.StreamStreamCall[node_pb2.WorkRequest, node_pb2.WorkUpdate] | None = (
            None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._starts: list[node_pb2.ExecuteTaskRequest] = []
        self._stops: list[node_pb2.AttemptRef] = []
        self._outgoing = asyncio.Event()
        # The node answered Work with UNIMPLEMENTED: one ExecuteTask call per attempt.
        self._legacy = False
        # The stream on which the node said it is shutting down (WorkUpdate.draining).
        self._draining: object = None

    async def run(self, request: node_pb2.ExecuteTaskRequest) -> AsyncIterator[task_pb2.TaskEvent]:
        """The attempt's events until its result; CallError if its call breaks first. An
        attempt left before its result is stopped on the node."""
        if self._legacy:
            async for event in self._execute_task(request):
                yield event
            return
        if self._call is not None and self._call is self._draining:
            raise self._shutting_down()
        key = (request.task_id, request.attempt)
        attempt = _Attempt(key)
        self._attempts[key] = attempt
        attempt.call = self._ensure_call()
        self._starts.append(request)
        self._outgoing.set()
        received = 0
        try:
            while (next_event := await attempt.get()) is not None:
                received += 1
                yield next_event
        except CallError as error:
            if error.code is not grpc.StatusCode.UNIMPLEMENTED or received:
                raise
            # An older node: this attempt, and the link's next ones, go call by call.
            self._legacy = True
            async for event in self._execute_task(request):
                yield event
        finally:
            if self._attempts.get(key) is attempt:
                del self._attempts[key]
            attempt.room.set()  # the stream's reader may be waiting for this attempt
            if not attempt.ended and attempt.broken is None and attempt.call is self._call:
                self._stops.append(node_pb2.AttemptRef(task_id=key[0], attempt=key[1]))
                self._outgoing.set()
            elif attempt.call is self._draining:
                self._outgoing.set()  # the last one to end lets the writer half-close

    async def _execute_task(
        self, request: node_pb2.ExecuteTaskRequest
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        call = self._stub.ExecuteTask(request)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as error:
            raise CallError.of_rpc(error) from None
        finally:
            call.cancel()  # an attempt left early is stopped on the node

    def _ensure_call(self) -> object:
        if self._call is None:
            call = self._stub.Work()
            self._call = call
            self._tasks = [
                asyncio.create_task(self._write(call), name=f"work to {self._name}"),
                asyncio.create_task(self._read(call), name=f"work from {self._name}"),
            ]
        return self._call

    async def _write(
        self, call: grpc.aio.StreamStreamCall[node_pb2.WorkRequest, node_pb2.WorkUpdate]
    ) -> None:
        """Send what the attempts asked for, all of it in one message each time; once the
        node drains, half-close when the attempts sent to it have ended."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            headers = None
            with contextlib.suppress(TimeoutError):
                headers = await asyncio.wait_for(call.initial_metadata(), HEADERS_SECONDS)
            if not accepted(headers):
                # A refusal (its status comes with its headers), or a node of an earlier
                # release (no mark): whichever it is shows within the bound.
                await _ended_within(call, HEADERS_SECONDS)
            if call.done():
                return  # refused: the reader reports the node's status
            while True:
                await self._outgoing.wait()
                self._outgoing.clear()
                starts, self._starts = self._starts, []
                stops, self._stops = self._stops, []
                if starts or stops:
                    await call.write(node_pb2.WorkRequest(start=starts, stop=stops))
                if call is self._draining and not any(
                    attempt.call is call for attempt in self._attempts.values()
                ):
                    await call.done_writing()
                    return

    async def _read(
        self, call: grpc.aio.StreamStreamCall[node_pb2.WorkRequest, node_pb2.WorkUpdate]
    ) -> None:
        """Hand each update's events and errors to their attempts; when the stream ends,
        break every attempt still on it."""
        # A node ends its stream itself only after the link has half-closed, which it does
        # once every attempt sent there has ended: an attempt still here was never started.
        error = self._shutting_down()
        try:
            async for update in call:
                if update.draining:
                    self._drain(call)
                for event in update.events:
                    attempt = self._attempts.get((event.task_id, event.attempt))
                    if attempt is None:
                        continue  # an attempt already left (stopped): its last events
                    attempt.put(event)
                    if not attempt.room.is_set():
                        await attempt.room.wait()
                for failure in update.errors:
                    attempt = self._attempts.get((failure.task_id, failure.attempt))
                    if attempt is not None:
                        attempt.break_with(CallError.of_attempt(failure))
        except grpc.aio.AioRpcError as rpc_error:
            error = CallError.of_rpc(rpc_error)
        except asyncio.CancelledError:
            error = CallError(grpc.StatusCode.CANCELLED, "the scheduler closed the link")
            raise
        finally:
            if self._call is call:
                self._call = None
                for task in self._tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                self._starts.clear()
                self._stops.clear()
            if self._draining is call:
                self._draining = None
            for attempt in list(self._attempts.values()):
                if attempt.call is call:
                    attempt.break_with(error)
            if error.code is not grpc.StatusCode.CANCELLED:
                log.info("work stream to %s ended: %s", self._name, error)

    def _drain(self, call: object) -> None:
        """The node shuts down: refuse the starts not yet sent, and let the writer finish."""
        self._draining = call
        refused = self._shutting_down()
        for start in self._starts:
            if (attempt := self._attempts.get((start.task_id, start.attempt))) is not None:
                attempt.break_with(refused)
        self._starts.clear()
        self._outgoing.set()

    def _shutting_down(self) -> CallError:
        return CallError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._name} is shutting down and takes no new tasks",
            Reason.NODE_DRAINING,
        )

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


class Channels:
    """One gRPC channel per node endpoint and dispatch secret, reused by every attempt,
    and on it one work stream (a NodeLink) that carries the attempts.

    The secret (see `AgentRegistry`) is the bearer token the node expects from its
    scheduler; None in an open mesh."""

    def __init__(self, tls: TlsSettings) -> None:
        self._tls = tls
        self._channels: dict[tuple[str, str | None], grpc.aio.Channel] = {}
        self._links: dict[tuple[str, str | None], NodeLink] = {}

    def link(self, endpoint: str, secret: str | None) -> NodeLink:
        link = self._links.get((endpoint, secret))
        if link is None:
            link = NodeLink(self.stub(endpoint, secret), endpoint)
            self._links[endpoint, secret] = link
        return link

    def stub(self, endpoint: str, secret: str | None) -> node_pb2_grpc.AgentNodeAsyncStub:
        channel = self._channels.get((endpoint, secret))
        if channel is None:
            channel = open_channel(endpoint, token=secret, tls=self._tls)
            self._channels[endpoint, secret] = channel
        return node_pb2_grpc.AgentNodeStub(channel)

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def _ended_within(call: grpc.aio.Call, seconds: float) -> None:
    """Return once the call has ended, or after `seconds`."""
    ended = asyncio.Event()
    call.add_done_callback(lambda _: ended.set())
    if not call.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), seconds)
