"""NodeLink against stand-in nodes on real ports: what each attempt sees when the shared
stream breaks, when it leaves early, and when the node is an older one without Work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentmesh.errors import Reason
from agentmesh.rpc.work_stream import ACCEPTED
from agentmesh.scheduler import node_link
from agentmesh.scheduler.node_link import MAX_WAITING_EVENTS, CallError, NodeLink
from agentmesh.v1 import node_pb2, node_pb2_grpc, task_pb2

SERVICE = "agentmesh.v1.AgentNode"


def event(task_id: str, attempt: int, seq: int, *, result: bool = False) -> task_pb2.TaskEvent:
    message = task_pb2.TaskEvent(task_id=task_id, attempt=attempt, seq=seq)
    if result:
        message.result.state = task_pb2.TASK_STATE_COMPLETED
        message.result.output = f"{task_id} done"
    else:
        message.text.text = f"{task_id} #{seq}"
    return message


class StandIn:
    """A node that answers Work as told: `hold` keeps attempts running until `release`;
    without `headers`, as an earlier version, it sends no headers before its first update."""

    def __init__(self, *, with_work: bool = True, headers: bool = True) -> None:
        self.with_work = with_work
        self.headers = headers
        self.requests: list[node_pb2.WorkRequest] = []
        self.streams = 0
        self.release = asyncio.Event()
        self.break_stream = asyncio.Event()
        self.hold = False

    async def work(
        self, requests: AsyncIterator[node_pb2.WorkRequest], context: Any
    ) -> AsyncIterator[node_pb2.WorkUpdate]:
        self.streams += 1
        updates: asyncio.Queue[node_pb2.WorkUpdate] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                self.requests.append(request)
                for start in request.start:
                    updates.put_nowait(
                        node_pb2.WorkUpdate(events=[event(start.task_id, start.attempt, 1)])
                    )
                    if not self.hold:
                        updates.put_nowait(
                            node_pb2.WorkUpdate(
                                events=[event(start.task_id, start.attempt, 2, result=True)]
                            )
                        )

        reader = asyncio.create_task(read())
        breaking = asyncio.ensure_future(self.break_stream.wait())
        try:
            while True:
                got = asyncio.ensure_future(updates.get())
                await asyncio.wait((got, breaking), return_when=asyncio.FIRST_COMPLETED)
                if breaking.done():
                    got.cancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")
                yield got.result()
        finally:
            reader.cancel()
            breaking.cancel()

    async def execute(
        self, request: node_pb2.ExecuteTaskRequest, context: Any
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        yield event(request.task_id, request.attempt, 1)
        yield event(request.task_id, request.attempt, 2, result=True)

    async def serve(self) -> tuple[grpc.aio.Server, str]:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "ExecuteTask": grpc.unary_stream_rpc_method_handler(
                self.execute,
                request_deserializer=node_pb2.ExecuteTaskRequest.FromString,
                response_serializer=task_pb2.TaskEvent.SerializeToString,
            )
        }
        if self.with_work:

            async def work(
                requests: AsyncIterator[node_pb2.WorkRequest], context: Any
            ) -> AsyncIterator[node_pb2.WorkUpdate]:
                if self.headers:
                    await context.send_initial_metadata((ACCEPTED,))  # first, as a node does
                async for update in self.work(requests, context):
                    yield update

            handlers["Work"] = grpc.stream_stream_rpc_method_handler(
                work,
                request_deserializer=node_pb2.WorkRequest.FromString,
                response_serializer=node_pb2.WorkUpdate.SerializeToString,
            )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"


@pytest.fixture
async def link_to() -> AsyncIterator[Any]:
    opened: list[tuple[grpc.aio.Server, grpc.aio.Channel, NodeLink]] = []

    async def open_link(node: StandIn) -> NodeLink:
        server, address = await node.serve()
        channel = grpc.aio.insecure_channel(address)
        link = NodeLink(node_pb2_grpc.AgentNodeStub(channel), address)
        opened.append((server, channel, link))
        return link

    yield open_link
    for server, channel, link in opened:
        await link.close()
        await channel.close()
        await server.stop(None)


def start(task_id: str, attempt: int = 1) -> node_pb2.ExecuteTaskRequest:
    return node_pb2.ExecuteTaskRequest(
        task_id=task_id, attempt=attempt, spec=task_pb2.TaskSpec(kind="echo", prompt="x")
    )


async def run(link: NodeLink, task_id: str, attempt: int = 1) -> list[task_pb2.TaskEvent]:
    return [e async for e in link.run(start(task_id, attempt))]


async def test_attempts_started_together_share_one_stream_and_one_message(link_to: Any) -> None:
    node = StandIn()
    link = await link_to(node)

    results = await asyncio.gather(*(run(link, f"t-{n}") for n in range(10)))

    for n, events in enumerate(results):
        assert [(e.task_id, e.seq) for e in events] == [(f"t-{n}", 1), (f"t-{n}", 2)]
        assert events[-1].result.output == f"t-{n} done"
    assert node.streams == 1
    assert len(node.requests) == 1
    assert [s.task_id for s in node.requests[0].start] == [f"t-{n}" for n in range(10)]
    # Attempts that reached their result are not stopped.
    assert not any(r.stop for r in node.requests)


async def test_a_broken_stream_breaks_each_attempt_on_it_and_the_next_opens_anew(
    link_to: Any,
) -> None:
    node = StandIn()
    node.hold = True
    link = await link_to(node)
    received: dict[str, list[task_pb2.TaskEvent]] = {"a": [], "b": []}

    async def consume(task_id: str) -> CallError:
        try:
            async for message in link.run(start(task_id)):
                received[task_id].append(message)
        except CallError as error:
            return error
        raise AssertionError(f"{task_id} ended without an error")

    attempts = [asyncio.create_task(consume(t)) for t in received]
    while sum(len(r) for r in received.values()) < 2:
        await asyncio.sleep(0.01)
    node.break_stream.set()

    errors = await asyncio.gather(*attempts)

    assert [e.code for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 2
    assert all("node going away" in e.details for e in errors)
    assert [len(r) for r in received.values()] == [1, 1]
    node.break_stream.clear()
    node.hold = False
    assert (await run(link, "c"))[-1].result.output == "c done"
    assert node.streams == 2


async def test_an_attempt_left_before_its_result_is_stopped_on_the_node(link_to: Any) -> None:
    node = StandIn()
    node.hold = True
    link = await link_to(node)

    stream = link.run(start("early", 4))
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(200):
        if any(r.stop for r in node.requests):
            break
        await asyncio.sleep(0.01)

    assert first.task_id == "early"
    stops = [(s.task_id, s.attempt) for r in node.requests for s in r.stop]
    assert stops == [("early", 4)]


async def test_a_node_without_work_gets_a_call_per_attempt(link_to: Any) -> None:
    node = StandIn(with_work=False)
    link = await link_to(node)

    first = await run(link, "old-1")
    second = await run(link, "old-2")

    assert [e.seq for e in first] == [1, 2]
    assert second[-1].result.output == "old-2 done"
    assert node.streams == 0


async def test_a_node_that_refuses_an_attempt_breaks_only_that_attempt(link_to: Any) -> None:
    class Refusing(StandIn):
        async def work(
            self, requests: AsyncIterator[node_pb2.WorkRequest], context: Any
        ) -> AsyncIterator[node_pb2.WorkUpdate]:
            async for request in requests:
                for s in request.start:
                    if s.task_id == "full":
                        yield node_pb2.WorkUpdate(
                            errors=[
                                node_pb2.AttemptError(
                                    task_id=s.task_id,
                                    attempt=s.attempt,
                                    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                    message="node full",
                                    reason="NODE_FULL",
                                )
                            ]
                        )
                    else:
                        yield node_pb2.WorkUpdate(
                            events=[event(s.task_id, s.attempt, 1, result=True)]
                        )

    link = await link_to(Refusing())
    with pytest.raises(CallError) as caught:
        await run(link, "full")
    ok = await run(link, "fine")

    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason is Reason.NODE_FULL
    assert ok[-1].task_id == "fine"


async def test_an_attempt_left_with_events_waiting_does_not_hold_up_the_others(
    link_to: Any,
) -> None:
    """The link stops reading while one attempt has too many events waiting; that attempt
    leaving (cancelled, say) must let it read on for the rest."""

    class Chatty(StandIn):
        async def work(
            self, requests: AsyncIterator[node_pb2.WorkRequest], context: Any
        ) -> AsyncIterator[node_pb2.WorkUpdate]:
            async for request in requests:
                for s in request.start:
                    if s.task_id == "loud":
                        for first in range(1, MAX_WAITING_EVENTS * 3, 100):
                            yield node_pb2.WorkUpdate(
                                events=[event("loud", 1, n) for n in range(first, first + 100)]
                            )
                    else:
                        yield node_pb2.WorkUpdate(events=[event(s.task_id, 1, 1, result=True)])

    link = await link_to(Chatty())
    loud = link.run(start("loud"))
    assert (await anext(loud)).seq == 1
    for _ in range(200):  # until the link has stopped reading, waiting for room
        await asyncio.sleep(0.01)
    await loud.aclose()  # type: ignore[attr-defined]

    quiet = await asyncio.wait_for(run(link, "quiet"), 10)

    assert quiet[-1].result.output == "quiet done"


class Draining(StandIn):
    """A node that shuts down on its first stream: it says so with the first attempt's
    first event, finishes that attempt on `release`, and ends the stream once the link has
    half-closed; later streams are served as usual (a node restarted at the address)."""

    def __init__(self) -> None:
        super().__init__()
        self.half_closed = asyncio.Event()

    async def work(
        self, requests: AsyncIterator[node_pb2.WorkRequest], context: Any
    ) -> AsyncIterator[node_pb2.WorkUpdate]:
        if self.streams:
            async for update in super().work(requests, context):
                yield update
            return
        self.streams += 1
        incoming = aiter(requests)
        first = await anext(incoming)
        self.requests.append(first)
        running = first.start[0]
        yield node_pb2.WorkUpdate(
            events=[event(running.task_id, running.attempt, 1)], draining=True
        )
        await self.release.wait()
        yield node_pb2.WorkUpdate(events=[event(running.task_id, running.attempt, 2, result=True)])
        async for request in incoming:
            self.requests.append(request)
        self.half_closed.set()


async def test_a_draining_node_gets_no_new_attempts_and_the_link_half_closes_after_its_own(
    link_to: Any,
) -> None:
    node = Draining()
    link = await link_to(node)
    running = link.run(start("running"))
    assert (await anext(running)).seq == 1  # came with the node's word that it drains

    with pytest.raises(CallError) as refused:
        await asyncio.wait_for(run(link, "late"), 10)  # sent, it would wait on the node
    await asyncio.sleep(0.05)
    assert not node.half_closed.is_set()  # an attempt it started still runs there
    node.release.set()
    rest = [e async for e in running]
    await asyncio.wait_for(node.half_closed.wait(), 10)

    assert refused.value.reason is Reason.NODE_DRAINING
    assert "shutting down" in refused.value.details
    assert rest[-1].result.output == "running done"
    # Nothing was sent after the node said it drains: "late" never reached it.
    assert [s.task_id for r in node.requests for s in r.start] == ["running"]
    # Once the node has ended the stream (refused as draining until then), the next
    # attempt opens a new one.
    refusals: list[Reason | None] = []
    for _ in range(500):
        try:
            after = await run(link, "after")
            break
        except CallError as error:
            refusals.append(error.reason)
            await asyncio.sleep(0.01)
    assert set(refusals) <= {Reason.NODE_DRAINING}
    assert after[-1].result.output == "after done"
    assert node.streams == 2


async def test_a_node_that_sends_no_headers_first_still_gets_its_attempts(
    link_to: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node of an earlier version answers Work only with its first update: the link
    writes once it has waited HEADERS_SECONDS for headers that do not come."""
    monkeypatch.setattr(node_link, "HEADERS_SECONDS", 0.2)
    node = StandIn(headers=False)
    link = await link_to(node)

    events = await asyncio.wait_for(run(link, "older"), 10)

    assert events[-1].result.output == "older done"
    assert node.streams == 1
